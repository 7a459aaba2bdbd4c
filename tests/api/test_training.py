"""Training jobs through the API: 202 + polling, calibration figures, activation, cancellation,
the downloadable ONNX file and its parity with the API's score."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.api.deps import SessionDep, VariantName, get_variant
from app.db.models import Model, Variant
from app.db.session import Database
from app.detector.imaging import decode_image


def test_training_lifecycle(api: Any, images: Any, client: TestClient) -> None:
    api.create_variant("bolt")
    api.upload("bolt", [images.good_png(s) for s in range(3)])
    response = client.post("/v1/variants/bolt/models", json={"seed": 3})
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["version"] == 1
    assert queued["status"] in ("queued", "running", "ready")
    assert response.headers["location"].endswith("/v1/variants/bolt/models/1")

    model = api.wait_for_model("bolt", 1)
    assert model["status"] == "ready", model
    assert model["progress"] == 1.0
    assert model["is_active"] is True
    assert model["threshold"] > 0
    calibration = model["calibration"]
    assert calibration["threshold"] == model["threshold"]
    assert len(calibration["good_scores"]) == 3
    assert calibration["prior_log_spread"] > 0 and calibration["prior_weight"] > 0
    assert model["n_good_images"] == 3 and model["bank_size"] > 0
    assert model["onnx_size_bytes"] > 0
    assert model["config"]["resolution"] == 64 and model["seed"] == 3
    assert client.get("/v1/variants/bolt").json()["active_model_version"] == 1

    listing = client.get("/v1/variants/bolt/models").json()
    assert [m["version"] for m in listing["items"]] == [1] and listing["total"] == 1


def test_training_without_good_images_is_409(api: Any, images: Any, client: TestClient,
                                              problem: Any) -> None:
    api.create_variant("bolt")
    body = problem(client.post("/v1/variants/bolt/models", json={}), 409)
    assert "good images" in body["detail"]
    api.upload("bolt", [images.defect_png(0)], label="defect")
    problem(client.post("/v1/variants/bolt/models"), 409)
    assert client.get("/v1/variants/bolt/models").json()["total"] == 0


def test_training_with_defects_uses_them(api: Any, images: Any, client: TestClient) -> None:
    api.create_variant("bolt")
    api.upload("bolt", [images.good_png(s) for s in range(3)])
    api.upload("bolt", [images.defect_png(10)], label="defect")
    model = api.train("bolt", seed=0)
    assert model["status"] == "ready", model
    assert model["n_defect_images"] == 1
    assert len(model["calibration"]["defect_scores"]) == 1


def test_versions_and_activation_roll_back_and_forward(trained: Any, images: Any,
                                                       client: TestClient, problem: Any) -> None:
    second = trained.train("bolt", seed=1, activate=False)
    assert second["version"] == 2 and second["status"] == "ready"
    assert second["is_active"] is False
    assert client.get("/v1/variants/bolt").json()["active_model_version"] == 1

    raw = {"content": images.good_png(7), "headers": {"content-type": "image/png"}}
    assert client.post("/v1/variants/bolt/inspect", **raw).json()["model_version"] == 1
    response = client.post("/v1/variants/bolt/models/2/activate")
    assert response.status_code == 200 and response.json()["is_active"] is True
    # The same view as GET, file size included (it used to come back null).
    assert response.json() == {**client.get("/v1/variants/bolt/models/2").json()}
    assert response.json()["onnx_size_bytes"] > 0
    assert client.post("/v1/variants/bolt/inspect", **raw).json()["model_version"] == 2
    assert client.post("/v1/variants/bolt/models/1/activate").status_code == 200
    assert client.post("/v1/variants/bolt/inspect", **raw).json()["model_version"] == 1

    problem(client.post("/v1/variants/bolt/models/9/activate"), 404)
    problem(client.post("/v1/variants/bolt/models/0/activate"), 422)
    problem(client.get("/v1/variants/bolt/models/abc"), 422)
    problem(client.delete("/v1/variants/bolt/models/1"), 409)  # active
    assert client.delete("/v1/variants/bolt/models/2").status_code == 204
    problem(client.get("/v1/variants/bolt/models/2"), 404)
    third = trained.train("bolt", seed=2)
    assert third["version"] == 3  # versions are never reused


def test_override_settings_for_one_model(trained: Any, client: TestClient, problem: Any) -> None:
    model = trained.train("bolt", seed=0, settings={"augment": "flip"}, activate=False)
    assert model["config"]["augment"] == "flip"
    assert client.get("/v1/variants/bolt").json()["settings"]["augment"] == "auto"
    problem(client.post("/v1/variants/bolt/models", json={"settings": {"resolution": 5}}), 422)
    problem(client.post("/v1/variants/bolt/models", json={"seed": -1}), 422)
    problem(client.post("/v1/variants/bolt/models", json={"bogus": 1}), 422)


def test_cancel_queued_job(make_client: Any, api_class: Any, images: Any, problem: Any) -> None:
    # The only replica has no training threads: the job stays queued until cancelled.
    serve_only = make_client(training_workers=0)
    api = api_class(serve_only)
    api.create_variant("bolt")
    api.upload("bolt", [images.good_png(0)])
    version = serve_only.post("/v1/variants/bolt/models", json={}).json()["version"]
    response = serve_only.post(f"/v1/variants/bolt/models/{version}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    problem(serve_only.post(f"/v1/variants/bolt/models/{version}/cancel"), 409)
    problem(serve_only.post(f"/v1/variants/bolt/models/{version}/activate"), 409)
    problem(serve_only.get(f"/v1/variants/bolt/models/{version}/onnx"), 409)


def test_onnx_download_matches_api_score(trained: Any, images: Any, client: TestClient) -> None:
    response = client.get("/v1/variants/bolt/models/1/onnx")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert "attachment" in response.headers["content-disposition"]
    assert "bolt-v1.onnx" in response.headers["content-disposition"]

    session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert {o.name for o in session.get_outputs()} >= {"score", "anomaly_map"}
    threshold = float(session.get_modelmeta().custom_metadata_map["nominal.threshold"])

    for data in (images.good_png(11), images.defect_png(12)):
        verdict = client.post("/v1/variants/bolt/inspect", content=data,
                              headers={"content-type": "image/png"}).json()
        pixels = decode_image(data).pixels
        score, anomaly_map = session.run(["score", "anomaly_map"], {"image": pixels})
        assert anomaly_map.shape == pixels.shape[:2]
        expected = float(np.asarray(score).reshape(-1)[0])
        assert abs(verdict["score"] - expected) / max(abs(expected), 1e-12) < 1e-3
        assert verdict["threshold"] == threshold
        assert verdict["is_anomalous"] == (expected > threshold)


class _SlowFit:
    """Wraps the app's detector: many progress reports before the real fit."""

    def __init__(self, real: Any, steps: int = 4000, delay: float = 0.005) -> None:
        self.real, self.steps, self.delay = real, steps, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def fit(self, good: Any, config: Any, **kwargs: Any) -> Any:
        import time

        for i in range(self.steps):
            kwargs["progress"](0.4 * i / self.steps, "features")
            time.sleep(self.delay)
        return self.real.fit(good, config, **kwargs)


def test_cancel_running_job_while_inspect_keeps_answering(trained: Any, images: Any,
                                                          client: TestClient) -> None:
    import time

    worker = client.app.state.worker  # type: ignore[attr-defined]
    worker.detector = _SlowFit(worker.detector)
    version = client.post("/v1/variants/bolt/models", json={"seed": 1}).json()["version"]
    deadline = time.monotonic() + 20
    while client.get(f"/v1/variants/bolt/models/{version}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)

    # Training runs in its own thread: inspect (with the active v1) is served meanwhile.
    raw = {"content": images.good_png(3), "headers": {"content-type": "image/png"}}
    for _ in range(5):
        started = time.monotonic()
        response = client.post("/v1/variants/bolt/inspect", **raw)
        assert response.status_code == 200 and response.json()["model_version"] == 1
        assert time.monotonic() - started < 2.0
    running = client.get(f"/v1/variants/bolt/models/{version}").json()
    assert running["status"] == "running" and 0 < running["progress"] < 1

    response = client.post(f"/v1/variants/bolt/models/{version}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    final = trained.wait_for_model("bolt", version)
    assert final["status"] == "cancelled", final
    assert client.get("/v1/variants/bolt").json()["active_model_version"] == 1


def test_delete_variant_with_models_and_a_running_job(trained: Any, images: Any,
                                                      client: TestClient, problem: Any) -> None:
    import time

    worker = client.app.state.worker  # type: ignore[attr-defined]
    real = worker.detector
    worker.detector = _SlowFit(real, steps=400)
    version = client.post("/v1/variants/bolt/models", json={}).json()["version"]
    deadline = time.monotonic() + 20
    while client.get(f"/v1/variants/bolt/models/{version}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.delete("/v1/variants/bolt").status_code == 204
    problem(client.get("/v1/variants/bolt/models/1"), 404)
    problem(client.post("/v1/variants/bolt/inspect", content=images.good_png(1),
                        headers={"content-type": "image/png"}), 404)
    # The worker notices at its next progress report and moves on to the next job.
    worker.detector = real
    trained.trained_variant("bolt")  # same name, new variant: versions start again at 1
    assert client.get("/v1/variants/bolt").json()["active_model_version"] == 1


def test_a_job_finishing_mid_request_reads_consistently(
        make_client: Any, database_url: str, api_class: Any, images: Any) -> None:
    """The worker commits ``ready`` and the activation together; a GET that loaded the variant
    just before that commit must not answer ``ready`` but not active (seen on PostgreSQL, where
    each statement reads the latest commit). The commit is placed exactly there: after the
    variant lookup, before the handler reads the model."""
    client = make_client(training_workers=0)  # the test plays the worker
    api = api_class(client)
    api.create_variant("bolt")
    assert api.upload("bolt", [images.good_png(0)]).status_code == 201
    assert client.post("/v1/variants/bolt/models", json={"seed": 0}).status_code == 202

    worker_db = Database(database_url)
    finish = {"armed": False}

    def variant_then_commit(name: VariantName, session: SessionDep) -> Variant:
        variant = get_variant(name, session)
        if finish["armed"]:
            finish["armed"] = False
            with worker_db.writing() as other:  # another connection, as the worker's is
                model_id = other.scalar(select(Model.id).where(Model.variant_id == variant.id))
                other.execute(update(Model).where(Model.id == model_id)
                              .values(status="ready", progress=1.0, stage="done"))
                other.execute(update(Variant).where(Variant.id == variant.id)
                              .values(active_model_id=model_id))
        return variant

    client.app.dependency_overrides[get_variant] = variant_then_commit  # type: ignore[attr-defined]
    try:
        for path in ("/v1/variants/bolt/models/1", "/v1/variants/bolt/models"):
            with worker_db.writing() as other:  # back to queued, inactive
                other.execute(update(Variant).values(active_model_id=None))
                other.execute(update(Model).values(status="queued", progress=0.0, stage=None))
            finish["armed"] = True
            response = client.get(path)
            assert response.status_code == 200, response.text
            body = response.json()
            model = body if "version" in body else body["items"][0]
            assert not finish["armed"]
            # Before the commit (SQLite's snapshot) or after it (PostgreSQL), never a mix.
            assert model["is_active"] == (model["status"] == "ready"), model
    finally:
        client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
        worker_db.dispose()
