"""Presets resolve under explicit settings, and the default preset is the field defaults."""

from __future__ import annotations

import pytest

from app.detector.backbones import REGISTRY
from app.detector.config import SETTINGS, DetectorConfig
from app.detector.presets import DEFAULT_PRESET, PRESET_FIELDS, PRESET_NAMES, PRESETS
from app.errors import InvalidInputError


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
    with pytest.raises(InvalidInputError, match="preset must be fast or accurate, got 'best'"):
        DetectorConfig.from_dict({"preset": "best"})


def test_a_setting_a_preset_sets_documents_every_presets_value() -> None:
    backbone = next(s for s in SETTINGS if s.name == "backbone")
    assert backbone.help.endswith(
        "default efficientnet_lite0 (accurate: vit_small_l6_l9)"), backbone.help
