"""Presets through HTTP: listed with what they resolve to, chosen by a variant or one training
request, under the settings given explicitly, and recorded in the model's configuration."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db.models import Variant
from app.db.session import Database
from app.detector.config import DetectorConfig
from app.detector.presets import DEFAULT_PRESET, PRESET_NAMES
from tests.conftest import good_png


def test_presets_are_listed_with_their_configuration(client: TestClient) -> None:
    response = client.get("/v1/presets")
    assert response.status_code == 200, response.text
    presets = {p["name"]: p for p in response.json()}
    assert tuple(presets) == PRESET_NAMES
    assert [n for n, p in presets.items() if p["is_default"]] == [DEFAULT_PRESET]
    accurate = presets["accurate"]
    assert accurate["settings"] == {"backbone": "efficientnet_lite2", "augment": "auto",
                                    "jpeg_views": 1, "jpeg_copy_light": 0.2,
                                    "max_bank_size": 8192, "edge_reach": "coarsest",
                                    "light": "contrast"}
    assert presets["fast"]["settings"] == {"backbone": "efficientnet_lite0", "augment": "none",
                                           "jpeg_views": 0, "jpeg_copy_light": 0.0,
                                           "max_bank_size": 16384, "edge_reach": "finest",
                                           "light": "keep"}
    assert accurate["configuration"] == DetectorConfig.from_dict({"preset": "accurate"}).to_dict()
    assert "textures" in accurate["summary"]


def test_a_variant_takes_its_presets_settings_under_its_own(client: TestClient) -> None:
    plain = client.post("/v1/variants", json={"name": "plain"}).json()
    assert plain["settings"]["preset"] == DEFAULT_PRESET and plain["overrides"] == []

    body = client.post("/v1/variants", json={"name": "tile", "settings": {
        "preset": "fast", "resolution": 336}}).json()
    assert body["settings"]["backbone"] == "efficientnet_lite0"
    assert body["settings"]["resolution"] == 336
    assert body["overrides"] == ["resolution"]


def test_sending_a_preset_resets_what_presets_set(client: TestClient) -> None:
    created = client.post("/v1/variants", json={"name": "bolt", "settings": {
        "backbone": "vit_small_l8", "target_false_reject_rate": 0.02}})
    assert created.json()["overrides"] == ["backbone", "target_false_reject_rate"]

    other = client.patch("/v1/variants/bolt", json={"settings": {"blur_sigma": 2.0}})
    assert other.json()["settings"]["backbone"] == "vit_small_l8"  # no preset sent: kept

    patched = client.patch("/v1/variants/bolt", json={"settings": {"preset": "fast"}})
    assert patched.status_code == 200, patched.text
    settings = patched.json()["settings"]
    assert settings["backbone"] == "efficientnet_lite0"
    assert settings["target_false_reject_rate"] == 0.02  # presets do not set it: kept
    assert patched.json()["overrides"] == ["target_false_reject_rate", "blur_sigma"]

    both = client.patch("/v1/variants/bolt", json={"settings": {
        "preset": DEFAULT_PRESET, "backbone": "vit_small_l5"}})
    assert both.json()["settings"]["backbone"] == "vit_small_l5"  # the same request wins
    again = client.patch("/v1/variants/bolt", json={"settings": {"preset": DEFAULT_PRESET}})
    assert again.json()["settings"]["backbone"] == "efficientnet_lite2"  # override dropped


def test_a_variant_stores_every_setting_and_reads_what_is_refused_now(
        client: TestClient, database_url: str) -> None:
    """A variant stores every setting resolved (what a later release defaults to never changes
    its next models), and a value a later release refuses still reads."""
    client.post("/v1/variants", json={"name": "bolt"})
    database = Database(database_url)
    try:
        with database.writing() as session:
            stored = session.scalars(select(Variant)).one().settings
            assert stored == DetectorConfig().to_dict()
            session.execute(update(Variant).values(settings={**stored, "backbone": "retired"}))
    finally:
        database.dispose()
    body = client.get("/v1/variants/bolt")
    assert body.status_code == 200 and body.json()["settings"]["backbone"] == "retired"
    assert client.get("/v1/variants").status_code == 200


def test_an_unknown_preset_is_a_422_problem(client: TestClient, problem: Any) -> None:
    response = client.post("/v1/variants", json={"name": "x", "settings": {"preset": "best"}})
    problem(response, 422)
    assert client.get("/v1/variants/x").status_code == 404


def test_the_model_records_the_resolved_configuration(api: Any) -> None:
    api.create_variant("bolt")
    assert api.upload("bolt", [good_png(s) for s in range(2)]).status_code == 201
    default = api.train("bolt", seed=0)
    assert default["status"] == "ready", default
    assert default["config"]["preset"] == DEFAULT_PRESET
    assert default["config"]["backbone"] == "efficientnet_lite2"

    fast = api.train("bolt", seed=0, activate=False,
                     settings={"preset": "fast", "resolution": 70})
    assert fast["status"] == "ready", fast
    assert fast["config"] == DetectorConfig.from_dict(
        {"preset": "fast", "resolution": 70, "min_expected_auroc": 0.0}).to_dict()


def test_a_variant_on_auto_gets_the_preset_its_reports_favour(api: Any, client: TestClient) -> None:
    api.create_variant("bolt", settings={"preset": "auto", "resolution": 70,
                                         "min_expected_auroc": 0.0})
    assert api.upload("bolt", [good_png(s) for s in range(3)]).status_code == 201
    model = api.train("bolt", seed=0)
    assert model["status"] == "ready", model
    choice = model["quality"]["choice"]
    assert model["config"]["preset"] == choice["chosen"] in PRESET_NAMES
    assert {c["preset"] for c in choice["candidates"]} == set(PRESET_NAMES)
    variant = client.get("/v1/variants/bolt").json()
    assert variant["settings"]["preset"] == "auto"  # chooses again
    assert variant["overrides"] == ["resolution", "min_expected_auroc"]  # not what auto shows
    costs = {p["name"]: p["cost"] for p in client.get("/v1/presets").json()}
    assert costs["fast"] == 1.0 and costs["accurate"] > 1.0


def test_auto_refuses_a_backbone_it_would_not_use(client: TestClient, problem: Any) -> None:
    refused = client.post("/v1/variants", json={"name": "bolt", "settings": {
        "preset": "auto", "backbone": "vit_small_l8"}})
    assert "with preset auto, training chooses" in problem(refused, 422)["detail"]
    client.post("/v1/variants", json={"name": "bolt", "settings": {"preset": "auto"}})
    later = client.patch("/v1/variants/bolt", json={"settings": {"backbone": "vit_small_l8"}})
    problem(later, 422)
    chosen = client.patch("/v1/variants/bolt", json={"settings": {
        "preset": "accurate", "backbone": "vit_small_l8"}})
    assert chosen.json()["settings"]["backbone"] == "vit_small_l8"
