"""Presets resolve under explicit settings, and the default preset is the field defaults."""

from __future__ import annotations

import json

import onnx
import pytest

from app.detector.backbones import REGISTRY
from app.detector.config import SETTINGS, DetectorConfig
from app.detector.engine import Detector
from app.detector.presets import (
    AUTO_STANDS_IN,
    DEFAULT_PRESET,
    PRESET_FIELDS,
    PRESET_NAMES,
    PRESETS,
)
from app.errors import InvalidInputError
from tests.detector.conftest import make_good


def test_the_default_preset_is_the_field_defaults() -> None:
    assert DetectorConfig() == DetectorConfig.from_dict({})
    assert DetectorConfig() == DetectorConfig.from_dict({"preset": DEFAULT_PRESET})
    assert DetectorConfig().preset == DEFAULT_PRESET


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_a_preset_sets_its_settings_and_leaves_the_others_at_their_defaults(name: str) -> None:
    config = DetectorConfig.from_dict({"preset": name}).to_dict()
    assert config["preset"] == name
    assert config["backbone"] in REGISTRY
    preset = PRESETS[name]
    for s in SETTINGS:
        if s.name in preset.settings:
            assert config[s.name] == preset.settings[s.name]
        elif s.name != "preset":
            assert config[s.name] == s.default, s.name


def test_explicit_settings_win_over_the_preset() -> None:
    config = DetectorConfig.from_dict({"preset": "accurate", "backbone": "vit_small_l8",
                                       "resolution": 336})
    assert (config.preset, config.backbone, config.resolution) == \
        ("accurate", "vit_small_l8", 336)


def test_presets_differ_where_they_say() -> None:
    fast = DetectorConfig.from_dict({"preset": "fast"})
    accurate = DetectorConfig.from_dict({"preset": "accurate"})
    differing = {k for k, v in fast.to_dict().items() if accurate.to_dict()[k] != v}
    assert differing == {"preset"} | {k for k in PRESET_FIELDS
                                     if PRESETS["fast"].settings.get(k)
                                     != PRESETS["accurate"].settings.get(k)}
    assert "backbone" in differing


def test_an_unknown_preset_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError,
                       match="preset must be fast, accurate or auto, got 'best'"):
        DetectorConfig.from_dict({"preset": "best"})
    with pytest.raises(InvalidInputError):  # renamed accurate (migration 0007)
        DetectorConfig.from_dict({"preset": "balanced"})


def test_a_setting_a_preset_sets_documents_every_presets_value() -> None:
    backbone = next(s for s in SETTINGS if s.name == "backbone")
    assert backbone.help.endswith(
        "default efficientnet_lite2 (fast: efficientnet_lite0)"
    ), backbone.help


def test_auto_keeps_the_preset_whose_report_expects_the_most(detector: Detector) -> None:
    images = [make_good(s) for s in range(3)]
    config = DetectorConfig.from_dict({"preset": "auto", "resolution": 70,
                                       "min_expected_auroc": 0.0})
    assert config.backbone == PRESETS[AUTO_STANDS_IN].settings["backbone"]  # until it chooses
    fitted = detector.fit(images, config, seed=0)
    choice = fitted.quality.choice
    assert choice is not None
    by_cost = ["fast", "accurate"]
    assert [c["preset"] for c in choice["candidates"]] == by_cost
    best = max(c["expected_image_auroc"] for c in choice["candidates"])
    chosen = next(c for c in choice["candidates"] if c["preset"] == choice["chosen"])
    assert chosen["expected_image_auroc"] == best
    assert fitted.config.preset == choice["chosen"]
    assert fitted.config.backbone == PRESETS[choice["chosen"]].settings["backbone"]
    props = {p.key: p.value for p in onnx.load_from_string(fitted.onnx_bytes).metadata_props}
    assert json.loads(props["nominal.quality"]) == fitted.quality.to_dict()
    assert fitted.timings["auto_s"] >= fitted.timings["total_s"]


def test_auto_fits_only_the_presets_within_its_budget(detector: Detector) -> None:
    config = DetectorConfig.from_dict({"preset": "auto", "resolution": 64,
                                       "auto_latency_budget": 1.0, "min_expected_auroc": 0.0})
    fitted = detector.fit([make_good(0), make_good(1)], config, seed=0)
    assert fitted.quality.choice is not None
    assert [c["preset"] for c in fitted.quality.choice["candidates"]] == ["fast"]
    assert fitted.config.preset == "fast"
