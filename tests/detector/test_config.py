"""DetectorConfig checks every setting against its one declaration (bounds, choices, null),
with messages that name the setting and the rule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import get_args

import pytest

from app.cli import build_parser
from app.detector import config as config_module
from app.detector.config import (
    AUGMENTATIONS,
    PRECISIONS,
    RESIZE_POLICIES,
    SETTINGS,
    Augmentation,
    DetectorConfig,
    Precision,
    ResizePolicy,
    setting,
)
from app.errors import InvalidInputError
from app.services.variants import resolve_settings
from tests.setting_cases import CASES, Case


def test_every_field_is_declared_once() -> None:
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(DetectorConfig)]
    defaults = DetectorConfig()
    for s in SETTINGS:
        assert s.default == getattr(defaults, s.name)
        assert s.nullable == (s.default is None)
        assert s.setting.description and not s.setting.description.endswith(".")
    assert CASES  # the generated cases cover something


def test_allowed_values_come_from_the_literal_types() -> None:
    choices = {s.name: s.choices for s in SETTINGS}
    assert choices["resize"] == RESIZE_POLICIES == get_args(ResizePolicy)
    assert choices["augment"] == AUGMENTATIONS == get_args(Augmentation)
    assert choices["precision"] == PRECISIONS == get_args(Precision)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_declared_rule_is_checked(case: Case) -> None:
    if case.allowed:
        config = DetectorConfig(**case.settings)
        assert getattr(config, case.name) == case.value
        assert resolve_settings({}, case.settings)[case.name] == case.value
    else:
        with pytest.raises(InvalidInputError, match=case.name):
            DetectorConfig(**case.settings)
        with pytest.raises(InvalidInputError, match=case.name):  # what the services store
            resolve_settings({}, case.settings)


@pytest.mark.parametrize(("settings", "message"), [
    ({"resolution": 63}, "resolution must be within 64..1024, got 63"),
    ({"coreset_ratio": 0.0}, r"coreset_ratio must be in \(0, 1\], got 0.0"),
    ({"target_false_reject_rate": 0.5}, r"target_false_reject_rate must be in \(0, 0.5\), got 0.5"),
    ({"min_bank_size": 0}, "min_bank_size must be at least 1, got 0"),
    ({"resize": "crop"}, "resize must be fixed_scale, shorter_side or square, got 'crop'"),
    ({"precision": "int4"}, "precision must be float32 or int8, got 'int4'"),
    ({"blur_sigma": None}, "blur_sigma cannot be null"),
    ({"max_aspect": "wide"}, "max_aspect must be a number, got 'wide'"),
    ({"min_bank_size": 100, "max_bank_size": 10},
     "min_bank_size must be at most max_bank_size, got 100, 10"),
])
def test_messages_name_the_setting_and_the_rule(settings: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=f"^{message}$"):
        DetectorConfig.from_dict(settings)


def test_a_field_without_a_declaration_or_a_null_meaning_is_refused() -> None:
    @dataclass(frozen=True)
    class Undeclared:
        plain: int = 3

    @dataclass(frozen=True)
    class NullWithoutMeaning:
        size: int | None = field(default=None, metadata=setting("a size", ge=1))

    @dataclass(frozen=True)
    class MeaningWithoutNull:
        size: int = field(default=1, metadata=setting("a size", ge=1, null="the backbone's"))

    for cls in (Undeclared, NullWithoutMeaning, MeaningWithoutNull):
        with pytest.raises(TypeError, match=f"{cls.__name__}."):
            config_module._declared(cls)


def test_cli_choices_and_defaults_are_the_detectors(tmp_path: object) -> None:
    parser = build_parser()
    args = parser.parse_args(["evaluate", str(tmp_path)])
    assert (args.resize, args.augment, args.precision) == (None, None, None)  # the detector's
    for option, choices in (("--resize", RESIZE_POLICIES), ("--augment", AUGMENTATIONS),
                            ("--precision", PRECISIONS)):
        for choice in choices:
            parsed = parser.parse_args(["evaluate", str(tmp_path), option, choice])
            assert getattr(parsed, option[2:]) == choice
        with pytest.raises(SystemExit):
            parser.parse_args(["evaluate", str(tmp_path), option, "bogus"])
