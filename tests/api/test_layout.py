"""Regions of interest and ignore masks through the API: validated, stored with the variant,
applied to the active model at once as a new version, and answered per region."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import encode, textured_part

# The test parts are 96 px with a dark disc of radius 10 in the middle (cells of 12 px).
CENTRE = {"name": "centre", "x": 0.3, "y": 0.3, "width": 0.4, "height": 0.4}
CORNER = {"name": "corner", "x": 0.0, "y": 0.0, "width": 0.25, "height": 0.25}
LAYOUT = {"regions_of_interest": [CENTRE, CORNER]}


def _inspect(client: TestClient, data: bytes) -> dict[str, Any]:
    response = client.post("/v1/variants/bolt/inspect", content=data,
                           headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_new_layout_makes_a_new_active_version_at_once(trained: Any, images: Any,
                                                        client: TestClient) -> None:
    v1 = client.get("/v1/variants/bolt/models/1").json()
    assert v1["layout"] is None
    assert _inspect(client, images.defect_png(1))["regions_of_interest"] == []

    response = client.patch("/v1/variants/bolt", json={"layout": LAYOUT})
    assert response.status_code == 200, response.text
    variant = response.json()
    assert variant["active_model_version"] == 2
    assert variant["layout"]["regions_of_interest"][0]["name"] == "centre"
    v2 = client.get("/v1/variants/bolt/models/2").json()
    assert v2["status"] == "ready" and v2["is_active"]
    assert v2["threshold"] == v1["threshold"] and v2["bank_size"] == v1["bank_size"]
    assert v2["layout"]["regions_of_interest"][1]["name"] == "corner"
    assert "layout_s" in v2["timings"]

    bad = _inspect(client, images.defect_png(2))
    assert bad["model_version"] == 2 and bad["is_anomalous"]
    by_name = {r["name"]: r for r in bad["regions_of_interest"]}
    assert list(by_name) == ["centre", "corner"]
    assert by_name["centre"]["is_anomalous"]
    assert by_name["centre"]["score"] == bad["score"] > by_name["corner"]["score"]
    assert {r["region_of_interest"] for r in bad["regions"]} <= {"centre", "corner"}
    good = _inspect(client, images.good_png(3))
    assert not good["is_anomalous"]
    assert [r["is_anomalous"] for r in good["regions_of_interest"]] == [False, False]

    # The downloaded file carries the layout; rolling back to version 1 drops it again.
    onnx_bytes = client.get("/v1/variants/bolt/models/2/onnx").content
    meta = {p.key: p.value for p in onnx.load_from_string(onnx_bytes).metadata_props}
    assert '"centre"' in meta["nominal.layout"]
    # The quality report is version 1's, and says it was computed with the old layout.
    assert json.loads(meta["nominal.quality"]) == v2["quality"]
    assert v2["quality"]["warnings"][-1].startswith("computed with the layout this model was "
                                                    "trained with")
    assert v2["quality"]["expected_image_auroc"] == v1["quality"]["expected_image_auroc"]
    assert client.post("/v1/variants/bolt/models/1/activate").status_code == 200
    assert _inspect(client, images.defect_png(2))["regions_of_interest"] == []


def _part(seed: int, blob: tuple[int, int] | None = None) -> bytes:
    """A 192 px part whose good copies differ a little (noise 12), optionally with a lighter
    disc of radius 16 centred at ``blob`` (row, column): a defect near the threshold, whose
    patch scores stay near it."""
    pixels = textured_part(seed, 192, 192, noise=12.0).astype(np.int16)
    if blob is not None:
        yy, xx = np.mgrid[0:192, 0:192]
        pixels[(yy - blob[0]) ** 2 + (xx - blob[1]) ** 2 <= 16 * 16] += 40
    return encode(np.clip(pixels, 0, 255).astype(np.uint8))


def test_an_ignore_mask_over_the_defect_leaves_it_good(api: Any, client: TestClient) -> None:
    # Lite0 (fast): the ignore rectangle fits the disc with a margin sized for its receptive
    # field; Lite2's reaches further (its halo crosses the rectangle's edge at this scale).
    api.create_variant("bolt", settings={"preset": "fast", "resolution": 128})
    assert api.upload("bolt", [_part(s) for s in range(4)]).status_code == 201
    assert api.train("bolt", seed=0)["status"] == "ready"
    lot_number = _part(20, blob=(150, 48))  # where a label changes from part to part
    assert _inspect(client, lot_number)["is_anomalous"]
    label_area = {"x": 0.0, "y": 0.6, "width": 0.5, "height": 0.4}
    variant = client.patch("/v1/variants/bolt", json={"layout": {"ignore": [label_area]}})
    assert variant.json()["active_model_version"] == 2
    verdict = _inspect(client, lot_number)
    assert not verdict["is_anomalous"] and verdict["regions"] == []
    assert _inspect(client, _part(21, blob=(48, 144)))["is_anomalous"]  # elsewhere: still seen
    # An empty layout removes it, as another new version.
    variant = client.patch("/v1/variants/bolt", json={"layout": {}})
    assert variant.json()["active_model_version"] == 3
    assert variant.json()["layout"] == {"regions_of_interest": [], "ignore": []}
    assert _inspect(client, lot_number)["is_anomalous"]


def test_training_uses_the_variant_layout(api: Any, images: Any, client: TestClient) -> None:
    api.create_variant("bolt", layout={"ignore": [{"x": 0, "y": 0, "width": 1, "height": 0.5}]})
    assert api.upload("bolt", [images.good_png(s) for s in range(3)]).status_code == 201
    model = api.train("bolt", seed=0)
    assert model["status"] == "ready", model
    assert model["layout"]["ignore"][0]["height"] == 0.5
    assert client.get("/v1/variants/bolt/models").json()["total"] == 1


def test_a_layout_without_a_model_is_stored_for_training(api: Any, client: TestClient) -> None:
    api.create_variant("bolt")
    variant = client.patch("/v1/variants/bolt", json={"layout": LAYOUT}).json()
    assert variant["active_model_version"] is None
    assert [r["name"] for r in variant["layout"]["regions_of_interest"]] == ["centre", "corner"]
    assert client.get("/v1/variants/bolt/models").json()["total"] == 0


@pytest.mark.parametrize(("layout", "detail"), [
    ({"ignore": [{"x": 0.8, "y": 0, "width": 0.3, "height": 0.5}]}, "inside the frame"),
    ({"ignore": [{"x": 0.1, "y": 0, "width": 0, "height": 0.5}]}, "width"),
    ({"regions_of_interest": [CENTRE, CENTRE]}, "unique"),
    ({"regions_of_interest": [{**CENTRE, "name": "no spaces"}]}, "name"),
    ({"regions_of_interest": [CENTRE] * 33}, "regions_of_interest"),
    ({"ignore": [{"x": 0.1, "y": 0, "width": 0.2, "height": 0.2, "angle": 3}]}, "angle"),
])
def test_bad_layouts_are_422_and_change_nothing(trained: Any, client: TestClient,
                                                problem: Any, layout: dict[str, Any],
                                                detail: str) -> None:
    before = client.get("/v1/variants/bolt").json()
    body = problem(client.patch("/v1/variants/bolt",
                                json={"description": "changed", "layout": layout}), 422)
    assert detail in body["detail"] or detail in str(body.get("errors", ""))
    after = client.get("/v1/variants/bolt").json()
    assert after == before
    assert client.get("/v1/variants/bolt/models").json()["total"] == 1
    problem(client.post("/v1/variants", json={"name": "other", "layout": layout}), 422)
    problem(client.get("/v1/variants/other"), 404)


def test_the_same_layout_again_changes_nothing(trained: Any, client: TestClient) -> None:
    assert client.patch("/v1/variants/bolt", json={"layout": LAYOUT}).json()[
        "active_model_version"] == 2
    again = client.patch("/v1/variants/bolt", json={"layout": LAYOUT}).json()
    assert again["active_model_version"] == 2
    assert client.get("/v1/variants/bolt/models").json()["total"] == 2


def test_unmasking_what_the_model_never_learnt_is_409(api: Any, images: Any,
                                                     client: TestClient, problem: Any) -> None:
    masked = {"ignore": [{"x": 0, "y": 0, "width": 1, "height": 0.5}]}
    api.create_variant("bolt", layout=masked)
    assert api.upload("bolt", [images.good_png(s) for s in range(3)]).status_code == 201
    assert api.train("bolt", seed=0)["status"] == "ready"
    before = client.get("/v1/variants/bolt").json()
    body = problem(client.patch("/v1/variants/bolt", json={"description": "x", "layout": {}}),
                   409)
    assert "does not cover" in body["detail"]
    assert client.get("/v1/variants/bolt").json() == before  # nothing stored
    wider = {"ignore": [{"x": 0, "y": 0, "width": 1, "height": 0.6}]}
    assert client.patch("/v1/variants/bolt", json={"layout": wider}).json()[
        "active_model_version"] == 2


def test_a_job_queued_before_a_layout_change_does_not_undo_it(api: Any, images: Any,
                                                             client: TestClient) -> None:
    """However the training and the change interleave, the active model ends with the
    variant's layout."""
    api.create_variant("bolt")
    assert api.upload("bolt", [images.good_png(s) for s in range(3)]).status_code == 201
    queued = client.post("/v1/variants/bolt/models", json={"seed": 0})
    assert queued.status_code == 202
    assert client.patch("/v1/variants/bolt", json={"layout": LAYOUT}).status_code == 200
    api.wait_for_model("bolt", queued.json()["version"])
    variant = client.get("/v1/variants/bolt").json()
    active = client.get(f"/v1/variants/bolt/models/{variant['active_model_version']}").json()
    assert active["layout"] == variant["layout"]
    verdict = _inspect(client, images.defect_png(5))
    assert [r["name"] for r in verdict["regions_of_interest"]] == ["centre", "corner"]
