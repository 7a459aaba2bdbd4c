"""Inspect: raw body or multipart, JSON verdict or heatmap PNG, batches in order."""

from __future__ import annotations

import io
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

VERDICT_KEYS = {"score", "normalized_score", "threshold", "is_anomalous", "regions", "variant",
                "model_version", "latency_ms"}


def test_raw_body_and_multipart_give_the_same_verdict(trained: Any, images: Any,
                                                      client: TestClient) -> None:
    data = images.good_png(21)
    raw = client.post("/v1/variants/bolt/inspect", content=data,
                      headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    verdict = raw.json()
    assert set(verdict) >= VERDICT_KEYS
    assert verdict["variant"] == "bolt" and verdict["model_version"] == 1
    assert verdict["latency_ms"] > 0
    assert 0.0 <= verdict["normalized_score"] <= 1.0
    multipart = client.post("/v1/variants/bolt/inspect",
                            files={"file": ("x.png", data, "image/png")}).json()
    assert multipart["score"] == verdict["score"]


def test_defect_scores_higher_than_good(trained: Any, images: Any, client: TestClient) -> None:
    def score(data: bytes) -> dict[str, Any]:
        response = client.post("/v1/variants/bolt/inspect", content=data,
                               headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    good, bad = score(images.good_png(30)), score(images.defect_png(31))
    assert bad["score"] > good["score"]
    assert bad["is_anomalous"] is True
    assert good["is_anomalous"] is False


def test_verdicts_say_where_the_defect_is(trained: Any, images: Any, client: TestClient) -> None:
    """The test defect is a dark disc of radius 10 in the middle of a 96 px part."""
    def verdict(data: bytes) -> dict[str, Any]:
        response = client.post("/v1/variants/bolt/inspect", content=data,
                               headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    assert verdict(images.good_png(32))["regions"] == []
    bad = verdict(images.defect_png(33))
    top = bad["regions"][0]
    x, y, width, height = top["bbox"]
    assert 0 <= x < 48 < x + width <= 96 and 0 <= y < 48 < y + height <= 96
    assert 0 < top["area_px"] <= width * height
    assert top["max_score"] == bad["score"]
    assert top["normalized_max_score"] == bad["normalized_score"]
    scores = [r["max_score"] for r in bad["regions"]]
    assert scores == sorted(scores, reverse=True)


def test_regions_per_verdict_are_capped(make_client: Any, api_class: Any, images: Any) -> None:
    client = make_client(max_defect_regions=0)
    api_class(client).trained_variant("bolt")
    response = client.post("/v1/variants/bolt/inspect", content=images.defect_png(34),
                           headers={"content-type": "image/png"})
    assert response.json()["is_anomalous"] and response.json()["regions"] == []


def test_all_raw_formats(trained: Any, images: Any, client: TestClient) -> None:
    pixels = images.good_pixels(40)
    for fmt, media in (("PNG", "image/png"), ("JPEG", "image/jpeg"), ("BMP", "image/bmp"),
                       ("TIFF", "image/tiff")):
        response = client.post("/v1/variants/bolt/inspect", content=images.encode(pixels, fmt),
                               headers={"content-type": media})
        assert response.status_code == 200, (fmt, response.text)


def test_heatmap_png_with_verdict_headers(trained: Any, images: Any, client: TestClient) -> None:
    data = images.defect_png(50)
    for request in (
        {"params": {"heatmap": "png"}, "headers": {"content-type": "image/png"}},
        {"headers": {"content-type": "image/png", "accept": "image/png"}},
    ):
        response = client.post("/v1/variants/bolt/inspect", content=data, **request)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert float(response.headers["x-anomaly-score"]) > 0
        assert response.headers["x-is-anomalous"] in ("true", "false")
        assert response.headers["x-model-version"] == "1"
        assert int(response.headers["x-defect-regions"]) >= 1
        assert int(response.headers["x-record-id"]) >= 1
        overlay = Image.open(io.BytesIO(response.content))
        assert overlay.size == (96, 96) and overlay.mode == "RGB"
    json_answer = client.post("/v1/variants/bolt/inspect", content=data,
                              headers={"content-type": "image/png"}).json()
    assert float(response.headers["x-anomaly-score"]) == json_answer["score"]


def test_batch_returns_verdicts_in_order(trained: Any, images: Any, client: TestClient) -> None:
    data = [images.good_png(60), images.defect_png(61), images.good_png(62)]
    files = [("files", (f"f{i}.png", d, "image/png")) for i, d in enumerate(data)]
    response = client.post("/v1/variants/bolt/inspect/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["filename"] for r in results] == ["f0.png", "f1.png", "f2.png"]
    assert all(set(r) >= VERDICT_KEYS for r in results)
    singles = [client.post("/v1/variants/bolt/inspect", content=d,
                           headers={"content-type": "image/png"}).json()["score"] for d in data]
    assert [r["score"] for r in results] == singles
    assert results[1]["is_anomalous"] and not results[0]["is_anomalous"]
    assert results[1]["regions"] and results[0]["regions"] == []


def test_inspect_before_any_model_is_409(api: Any, images: Any, client: TestClient,
                                         problem: Any) -> None:
    api.create_variant("bolt")
    body = problem(client.post("/v1/variants/bolt/inspect", content=images.good_png(0),
                               headers={"content-type": "image/png"}), 409)
    assert body["type"].endswith("no-active-model")
    assert "train one with POST /v1/variants/bolt/models" in body["detail"]
    files = [("files", ("a.png", images.good_png(0), "image/png"))]
    problem(client.post("/v1/variants/bolt/inspect/batch", files=files), 409)


def test_model_cache_is_bounded_and_reused(make_client: Any, api: Any, images: Any) -> None:
    small = make_client(model_cache_size=1)
    for name in ("a", "b"):
        api.trained_variant(name, n_good=2)
    raw = {"content": images.good_png(1), "headers": {"content-type": "image/png"}}
    for name in ("a", "a", "b", "a"):
        assert small.post(f"/v1/variants/{name}/inspect", **raw).status_code == 200
    cache = small.app.state.model_cache  # type: ignore[attr-defined]
    assert len(cache) == 1
    assert cache.loads == 3  # a, b, a again (evicted by b); the second "a" was a hit


def test_concurrent_inspects_uploads_and_training(trained: Any, images: Any,
                                                  client: TestClient) -> None:
    """Readers, writers and the training worker at once: no 'database is locked', no 5xx."""
    from concurrent.futures import ThreadPoolExecutor

    raw = {"content": images.good_png(70), "headers": {"content-type": "image/png"}}

    def inspect_many(_: int) -> list[int]:
        return [client.post("/v1/variants/bolt/inspect", **raw).status_code for _ in range(4)]

    def upload(i: int) -> list[int]:
        return [trained.upload("bolt", [images.good_png(100 + i)]).status_code,
                client.post("/v1/variants/bolt/models", json={"activate": False}).status_code]

    with ThreadPoolExecutor(8) as pool:
        inspected = pool.map(inspect_many, range(6))
        uploaded = pool.map(upload, range(4))
        statuses = [s for batch in inspected for s in batch] + [s for b in uploaded for s in b]
    assert set(statuses) <= {200, 201, 202}, statuses
    versions = [m["version"] for m in client.get("/v1/variants/bolt/models").json()["items"]]
    assert sorted(versions) == [1, 2, 3, 4, 5]
    for version in versions:
        assert trained.wait_for_model("bolt", version)["status"] == "ready"
