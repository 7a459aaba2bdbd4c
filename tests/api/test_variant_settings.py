"""Variant settings are the detector's: every DetectorConfig field exposed, its defaults quoted
from DetectorConfig, and the effective settings carried through create, PATCH, GET and
training unchanged."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.api.schemas import VariantSettings, VariantSettingsPublic
from app.db.models import Variant
from app.db.session import Database
from app.detector.config import DetectorConfig

DEFAULTS = DetectorConfig().to_dict()


def test_every_detector_setting_is_exposed() -> None:
    fields = [f.name for f in dataclasses.fields(DetectorConfig)]
    assert list(VariantSettings.model_fields) == fields
    assert list(VariantSettingsPublic.model_fields) == fields


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(DetectorConfig)])
def test_documented_defaults_are_the_detectors(name: str) -> None:
    description = VariantSettings.model_fields[name].description or ""
    value = DEFAULTS[name]
    if value is None:
        assert "null" in description, description
    else:
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"default {shown}" in description, description
    assert VariantSettingsPublic.model_json_schema()["examples"] == [DEFAULTS]


def test_defaults_on_create(client: TestClient) -> None:
    body = client.post("/v1/variants", json={"name": "plain"}).json()
    assert body["settings"] == DEFAULTS


def test_settings_round_trip_into_training(client: TestClient, api: Any, images: Any) -> None:
    sent = {"resolution": 64, "resize": "square", "border": 2, "score_top_fraction": 0.1,
            "min_bank_size": 64, "max_bank_size": 128, "blur_sigma": 2.0, "precision": "int8"}
    created = api.create_variant("bolt", settings=sent)
    assert created["settings"] == {**DEFAULTS, **sent}
    patched = client.patch("/v1/variants/bolt", json={"settings": {
        "border": None, "score_top_fraction": 0.05, "resize": "shorter_side"}})
    assert patched.status_code == 200, patched.text
    effective = {**DEFAULTS, **sent, "border": None, "score_top_fraction": 0.05,
                 "resize": "shorter_side"}
    assert patched.json()["settings"] == effective
    assert client.get("/v1/variants/bolt").json()["settings"] == effective

    assert api.upload("bolt", [images.good_png(s) for s in range(2)]).status_code == 201
    model = api.train("bolt", seed=0)
    assert model["status"] == "ready", model
    # The model records what augment auto chose: these generated parts all lie one way.
    used = {**effective, "augment": "none"}
    assert model["config"] == used
    assert DetectorConfig.from_dict(model["config"]) == DetectorConfig(**used)
    assert model["bank_size"] <= sent["max_bank_size"]
    # A per-model override reaches the detector too, without changing the variant.
    override = api.train("bolt", seed=0, activate=False, settings={"border": 0})
    assert override["status"] == "ready" and override["config"] == {**used, "border": 0}
    assert client.get("/v1/variants/bolt").json()["settings"] == effective


@pytest.mark.parametrize("settings", [
    {"resize": "crop"}, {"border": 5}, {"border": -1}, {"score_top_fraction": 0.6},
    {"score_top_fraction": -0.1}, {"coreset_ratio": None}, {"resize": None},
    {"min_bank_size": 100, "max_bank_size": 10}, {"precision": "int4"}, {"precision": None},
])
def test_out_of_bounds_settings_are_422(client: TestClient, problem: Any,
                                        settings: dict[str, Any]) -> None:
    problem(client.post("/v1/variants", json={"name": "v", "settings": settings}), 422)
    assert client.post("/v1/variants", json={"name": "ok"}).status_code == 201
    problem(client.patch("/v1/variants/ok", json={"settings": settings}), 422)
    client.delete("/v1/variants/ok")


def test_a_variant_stored_before_a_setting_existed_shows_its_default(
        client: TestClient, database_url: str) -> None:
    assert client.post("/v1/variants", json={"name": "old"}).status_code == 201
    legacy = {k: v for k, v in DEFAULTS.items()
              if k not in ("resize", "border", "score_top_fraction", "precision")
              } | {"min_bank_size": 4096}
    database = Database(database_url)
    try:
        with database.writing() as session:
            session.execute(update(Variant).where(Variant.name == "old").values(settings=legacy))
    finally:
        database.dispose()
    assert client.get("/v1/variants/old").json()["settings"] == {**DEFAULTS, "min_bank_size": 4096}
