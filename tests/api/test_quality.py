"""Every model's quality report through HTTP, the same as in its ONNX file, and the gate: a
model below its variant's floor stays inactive with the reason, until an admin activates it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.db.models import Model
from app.db.session import Database
from tests.conftest import encode, good_png


def _metadata_quality(client: TestClient, version: int) -> dict[str, Any]:
    data = client.get(f"/v1/variants/bolt/models/{version}/onnx").content
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return json.loads(session.get_modelmeta().custom_metadata_map["nominal.quality"])  # type: ignore[no-any-return]


def test_every_model_shows_its_report_as_its_file_does(api: Any, client: TestClient) -> None:
    api.create_variant("bolt")
    assert api.upload("bolt", [good_png(s) for s in range(4)]).status_code == 201
    model = api.train("bolt", seed=0)
    quality = model["quality"]
    assert quality == _metadata_quality(client, 1)
    assert 0 <= quality["expected_image_auroc"] <= 1
    assert 0 <= quality["expected_pixel_auroc"] <= 1
    assert quality["n_good"] == 4 and quality["n_defects"] > 0
    assert set(quality["recall_by_size"]) and isinstance(quality["warnings"], list)
    assert model["is_active"] is True  # the test variant's floor is 0


def test_a_report_stored_by_an_earlier_release_reads_as_its_reader_says(
        api: Any, client: TestClient, database_url: str) -> None:
    """The first reports' only false-reject figure (variation views) is that one's now."""
    api.create_variant("bolt")
    assert api.upload("bolt", [good_png(s) for s in range(2)]).status_code == 201
    stored = api.train("bolt", seed=0)["quality"]
    first = {k: v for k, v in stored.items() if k != "variation_false_reject_rate"}
    first["estimated_false_reject_rate"] = 0.25
    database = Database(database_url)
    try:
        with database.writing() as session:
            session.execute(update(Model).values(quality=first))
    finally:
        database.dispose()
    quality = client.get("/v1/variants/bolt/models/1").json()["quality"]
    assert quality["estimated_false_reject_rate"] is None
    assert quality["variation_false_reject_rate"] == 0.25


def _unlike_each_other() -> list[bytes]:
    """Three "good" images with nothing in common (noise, a flat grey, stripes): each held out
    scores as high as a defect, so the report expects little."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    flat = np.clip(128 + rng.normal(0, 2, size=(96, 96, 3)), 0, 255).astype(np.uint8)
    stripes = np.zeros((96, 96, 3), np.uint8)
    stripes[:, ::6] = 230
    return [encode(image) for image in (noise, flat, stripes)]


def test_a_model_below_the_floor_stays_ready_and_inactive_until_activated(
        api: Any, client: TestClient) -> None:
    api.create_variant("bolt", settings={"resolution": 64, "min_expected_auroc": 0.9})
    assert api.upload("bolt", _unlike_each_other()).status_code == 201
    model = api.train("bolt", seed=0)
    assert model["status"] == "ready", model
    assert model["quality"]["expected_image_auroc_large"] < 0.9
    assert model["is_active"] is False
    assert any("below this variant's min_expected_auroc 0.9" in w
               for w in model["quality"]["warnings"]), model["quality"]["warnings"]
    assert client.get("/v1/variants/bolt").json()["active_model_version"] is None
    assert _metadata_quality(client, 1) == model["quality"]
    refused = client.post("/v1/variants/bolt/inspect", content=good_png(0),
                          headers={"Content-Type": "image/png"})
    assert refused.status_code == 409, refused.text
    assert "version 1 is ready but inactive" in refused.json()["detail"]
    assert "/v1/variants/bolt/models/1/activate" in refused.json()["detail"]

    activated = client.post("/v1/variants/bolt/models/1/activate")
    assert activated.status_code == 200, activated.text
    assert client.get("/v1/variants/bolt").json()["active_model_version"] == 1


def test_a_one_image_model_says_its_threshold_is_uncertain(api: Any) -> None:
    api.create_variant("bolt")
    assert api.upload("bolt", [good_png(0)]).status_code == 201
    model = api.train("bolt", seed=0)
    assert any(w.startswith("one good image") for w in model["quality"]["warnings"])
    assert model["quality"]["n_good"] > 1  # its own allowed-variation views stand in
