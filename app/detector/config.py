"""Per-model detector configuration, validated where it enters.

Each detector setting is declared once, as a field of ``DetectorConfig``: its type (a
``Literal`` type lists the allowed values), its default, and a ``Setting`` in the field's
metadata with its bounds and the description users read. ``DetectorConfig`` checks every value
against these declarations, and the API schemas (``app.api.schemas``) and the CLI's choices are
derived from them (``SETTINGS``): adding a setting is one field here, plus its tests.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from app.detector.presets import (
    DEFAULT_PRESET,
    PRESET_FIELDS,
    PRESETS,
    PresetChoice,
    preset_values,
    shown_preset,
)
from app.errors import InvalidInputError

Augmentation = Literal["none", "flip", "rot90", "turns", "auto"]
ResizePolicy = Literal["fixed_scale", "shorter_side", "square"]
Precision = Literal["float32", "int8"]
Distance = Literal["euclidean", "cosine"]
Background = Literal["keep", "auto"]
Light = Literal["keep", "normalise", "contrast"]
EdgeReach = Literal["finest", "coarsest"]

AUGMENTATIONS: tuple[Augmentation, ...] = get_args(Augmentation)
RESIZE_POLICIES: tuple[ResizePolicy, ...] = get_args(ResizePolicy)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
DISTANCES: tuple[Distance, ...] = get_args(Distance)

DEFAULT_BACKBONE = "efficientnet_lite2"  # the default preset's (presets.DEFAULT_PRESET)

_SETTING = "setting"  # the metadata key of a field's declaration


@dataclass(frozen=True)
class Setting:
    """The declaration of one detector setting, besides its type and default.

    ``ge``/``gt``/``le``/``lt`` bound a number (inclusive/exclusive, as in the API schema).
    ``null`` says what None means; it is required exactly for the settings whose default is
    None, the only ones that may be None.
    """

    description: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    null: str | None = None


def setting(description: str, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None,
            null: str | None = None) -> Mapping[str, Setting]:
    """A field's metadata: ``field(default=..., metadata=setting("what it is", ge=0))``."""
    return {_SETTING: Setting(description, ge=ge, gt=gt, le=le, lt=lt, null=null)}


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that shapes one trained model; stored with it so a model can be rebuilt.

    ``resolution`` is the network input's shorter side in pixels; ``resize`` says how images
    of other sizes get there (see ``graph.ResizePlan``): by default one fixed scale for all
    images of the model, so crops of different sizes keep the same pixel scale. The aspect
    ratio is always kept unless ``resize="square"``; there is never a centre crop.
    """

    # Resolved by from_dict: the preset's settings under the explicit ones (detector/presets.py).
    preset: PresetChoice = field(default=DEFAULT_PRESET, metadata=setting(
        "a named configuration (what each is for: GET /v1/presets), or auto: each training "
        "fits every preset within auto_latency_budget and keeps the one whose quality report "
        "expects the most. Sending a preset sets the settings it sets (GET /v1/presets lists "
        "them) to its values, except those sent with it"))
    backbone: str = field(default=DEFAULT_BACKBONE, metadata=setting(
        "a name from GET /v1/backbones"))
    resolution: int | None = field(default=None, metadata=setting(
        "shorter side of the network input in px", ge=64, le=1024, null="the backbone's"))
    resize: ResizePolicy = field(default="fixed_scale", metadata=setting(
        "how images reach `resolution`: fixed_scale (one scale for every image of the model, "
        "from the training images), shorter_side (each image's shorter side to resolution), "
        "square (both sides, aspect not kept)"))
    max_aspect: float = field(default=4.0, metadata=setting(
        "longer side cap, in multiples of resolution", ge=1, le=16))
    # Mirrored margin around the image, in backbone size multiples (16 px for the
    # EfficientNets, 14 for ViT-S), so that border patches are not judged on a CNN's zero
    # padding.
    border: int | None = field(default=None, metadata=setting(
        "mirrored margin around the image, in multiples of the backbone's input size "
        "multiple, so border patches are not judged on zero padding", ge=0, le=4,
        null="the backbone's"))
    # Below 1, a part displaced in the frame no longer rejects for what the mirrored margin
    # shows next to the edge; 0.5 (and the band's width, engine.edge_band) chosen among
    # declared candidates on the four shared sets
    # (BENCHMARKS.md, "Tolerance of allowed variations").
    edge_weight: float = field(default=0.5, metadata=setting(
        "factor on the scores of the patches next to the frame's edge, those the mirrored "
        "margin reaches (none without a margin): 1 judges them like the others, 0 ignores them",
        ge=0, le=1))
    # How far the edge_weight band reaches past the margin's own cells (engine.edge_band). Each
    # layer is averaged over its 3 x 3 neighbourhood at its own stride (graph._aggregate), so
    # the coarsest layer carries the margin furthest: coarsest since candidate C17
    # (BENCHMARKS.md "Presets"; fast keeps finest, the band it was measured with).
    edge_reach: EdgeReach = field(default="coarsest", metadata=setting(
        "how far past the mirrored margin's own cells edge_weight applies: finest, as far as "
        "the finest layer's 3 x 3 patch neighbourhood carries the margin (Lite0 and Lite2: "
        "2 + 1 cells of the stride-8 grid), coarsest, as far as the coarsest layer's does at "
        "its stride (2 + 2); the same for one-layer backbones"))
    # Cosine: every patch feature scaled to unit length (graph._front_end), in the bank and in
    # the inspected image alike; the euclidean distance between unit vectors orders patches as
    # the cosine distance does (AnomalyDINO compares DINOv2 tokens so).
    distance: Distance = field(default="euclidean", metadata=setting(
        "patch distance to the memory bank: euclidean on the features, or cosine (the "
        "features scaled to unit length first)"))
    # AnomalyDINO masks the background of object images; "auto" decides from the training
    # images alone (engine.separates_background), never per data set by hand.
    background: Background = field(default="keep", metadata=setting(
        "keep judges every cell; auto leaves the background out (the side of each image's "
        "first principal component of its own patch features that the border lies on) when "
        "the training images show a part on a background, judging the whole frame otherwise"))
    # One gain and offset per image, the same for its three channels (graph._normalise_light):
    # brightness and contrast, not colour, and a part uniformly darker than the training parts
    # is no longer a defect by its level alone.
    light: Light = field(default="contrast", metadata=setting(
        "keep judges each image's levels as photographed; normalise first brings each image's "
        "mean level and contrast (one gain and offset for its three channels) to those of the "
        "training images, so a brighter or flatter light does not look like a defect (nor "
        "does a part uniformly darker or lighter than the training parts); contrast brings "
        "only the contrast there, about the image's own mean level, so a flatter light passes "
        "and a part's own level still counts"))
    coreset_ratio: float = field(default=0.1, metadata=setting(
        "fraction of patches kept in the memory bank (large banks only)", gt=0, le=1))
    # Banks smaller than this keep every patch: few-shot banks are small and subsampling
    # them only loses coverage (PatchCore's coreset is a speed device for large banks).
    min_bank_size: int = field(default=2048, metadata=setting(
        "banks up to this many patches keep them all", ge=1))
    # Scoring costs patches x bank rows: the default preset's finer grid (Lite2 at 384) keeps
    # its cost with half the rows of fast's cap (candidate C15, BENCHMARKS.md "Presets").
    max_bank_size: int = field(default=8192, metadata=setting(
        "the bank keeps at most this many patches", ge=1))
    target_false_reject_rate: float = field(default=0.01, metadata=setting(
        "good parts the calibrated threshold may reject", gt=0, lt=0.5))
    augment: Augmentation = field(default="auto", metadata=setting(
        "training-time views: none, flip (mirror images), rot90 (quarter turns and mirrors), "
        "turns (turns by every 45 degrees, for parts placed at any angle), auto (turns when "
        "the training images show the part at varying angles: the directions of those with "
        "one spread over more than 45 degrees, one photo in ten left out; a model records "
        "what was used)"))
    # Views of each training image drawn from a good part's allowed variations (displaced,
    # turned, re-lit, JPEG; app/detector/variations.py): in the bank, and held out to calibrate.
    variation_views: int = field(default=0, metadata=setting(
        "training views per image drawn from the allowed variations of a good part (window "
        "displaced by up to 4 %, turned up to 3 degrees, light x0.8-1.2, contrast x0.8-1, JPEG "
        "60-95): fitted into the memory bank, and held out to set the threshold", ge=0, le=16))
    # Bank only: neither held out nor judged, so the threshold and the quality report are
    # those of the photos; the cost is one extraction per copy and a larger coreset input.
    jpeg_views: int = field(default=1, metadata=setting(
        "copies of each training image re-encoded as JPEG at a quality drawn from 60-95 (as a "
        "camera or gateway may send a good part), fitted into the memory bank only", ge=0,
        le=4))
    jpeg_copy_light: float = field(default=0.2, metadata=setting(
        "the JPEG copies' light: each copy's pixel values times a factor drawn from 1 - this "
        "to 1 + this before the encode (0: as photographed; 0.2: the allowed variations' "
        "x0.8-1.2), so a brighter or dimmer light, highlights saturated, passes", ge=0, le=0.5))
    # The same views, held out only: the bank, every score and the quality report's
    # comparison stay as without them, and the threshold covers how far a good part's allowed
    # variations move its score. One image is calibrated on fresh views whatever the count.
    threshold_views: int = field(default=0, metadata=setting(
        "training views per image drawn from the allowed variations, as variation_views, but "
        "only held out to set the threshold (the memory bank, the scores, the quality report's "
        "expected AUROC and the inspection cost are those without them; with one image, 8 "
        "fresh views whatever the count)", ge=0, le=16))
    # 0: image score = max patch score (PatchCore); > 0: mean of that top fraction of patches.
    score_top_fraction: float = field(default=0.0, metadata=setting(
        "image score: 0 = the largest patch score, > 0 = the mean of that top fraction of patch "
        "scores", ge=0, le=0.5))
    # Read at inspection (runtime.CompiledModel.inspect) from the model's nominal.regions.
    min_defect_area_px: int = field(default=0, metadata=setting(
        "an image is anomalous only if one of its defect regions covers at least this many "
        "pixels of the inspected image (0: any region, the score alone decides)",
        ge=0, le=100_000_000))
    auto_latency_budget: float = field(default=6.0, metadata=setting(
        "with preset auto: the presets costing at most this multiple of fast's time per image "
        "are candidates", ge=1, le=100))
    # Read when a training job finishes (services/training.py) from the model's quality report
    # (detector/quality.py); 0 lets every model activate itself as requested.
    min_expected_auroc: float = field(default=0.9, metadata=setting(
        "a finished model activates itself (when asked to) only if its quality report's "
        "expected image AUROC on synthetic defects of 1/20 of the image and larger reaches "
        "this; below, it stays ready, the reason in its warnings, and an admin can still "
        "activate it", ge=0, le=1))
    # At the processed resolution, as in PatchCore.
    blur_sigma: float = field(default=4.0, metadata=setting(
        "anomaly map smoothing", ge=0, le=16))
    # int8: the backbone runs in 8 bits, calibrated on the training images (up to about 1.2x
    # the images per second on a CPU, a small measured accuracy cost; app/detector/quantize.py).
    precision: Precision = field(default="float32", metadata=setting(
        "backbone arithmetic: float32, or int8 (calibrated on the training images; up to about "
        "1.2x the images per second on a CPU, small accuracy cost, see BENCHMARKS.md)"))

    def __post_init__(self) -> None:
        for declared in SETTINGS:
            declared.check(getattr(self, declared.name))
        if self.min_bank_size > self.max_bank_size:
            raise InvalidInputError(
                "min_bank_size must be at most max_bank_size, got "
                f"{self.min_bank_size}, {self.max_bank_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorConfig:
        """The configuration of ``data``: the field defaults, then the settings of its preset
        (the default preset when it names none), then ``data`` itself. (The constructor takes
        its fields as given: ``DetectorConfig(preset="fast")`` keeps the default backbone.)"""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidInputError(f"unknown detector settings: {sorted(unknown)}")
        name = data.get("preset", DEFAULT_PRESET)
        _PRESET_SETTING.check(name)
        preset = shown_preset(name)
        assert preset is not None  # checked above
        return cls(**{**preset.settings, **data})


def show(value: Any) -> str:
    """A setting's value as descriptions and messages quote it (floats without trailing 0s)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class DeclaredSetting:
    """One field of ``DetectorConfig`` with its declaration: what checks and schemas use."""

    name: str
    type: Any  # the field's type without None: int, float, str or a Literal type
    default: Any
    choices: tuple[Any, ...]  # the Literal type's values; () when any value of the type goes
    setting: Setting

    @property
    def nullable(self) -> bool:
        return self.setting.null is not None

    @property
    def bounds(self) -> dict[str, float]:
        """The bounds declared, by the names pydantic and JSON Schema use (``ge``, ``lt``...)."""
        s = self.setting
        candidates = {"ge": s.ge, "gt": s.gt, "le": s.le, "lt": s.lt}
        return {k: v for k, v in candidates.items() if v is not None}

    @property
    def help(self) -> str:
        """The description with the default quoted: "...; default 0.1", and what each preset
        that sets it gives: "...; default efficientnet_lite2 (fast: efficientnet_lite0, ...)"."""
        if self.default is None:
            text = f"{self.setting.description}; default (null): {self.setting.null}"
        else:
            text = f"{self.setting.description}; default {show(self.default)}"
        others = {name: value for name, value in preset_values(self.name).items()
                  if name != DEFAULT_PRESET}
        if others:
            text += " (" + ", ".join(f"{name}: {show(v)}" for name, v in others.items()) + ")"
        return text

    def check(self, value: Any) -> None:
        """Raise ``InvalidInputError`` naming the setting unless ``value`` is allowed."""
        if value is None:
            if self.nullable:
                return
            raise InvalidInputError(f"{self.name} cannot be null")
        if self.choices and value not in self.choices:
            *others, last = self.choices
            allowed = f"{', '.join(others)} or {last}" if others else last
            raise InvalidInputError(f"{self.name} must be {allowed}, got {value!r}")
        bounds = self.bounds
        if not bounds:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(f"{self.name} must be a number, got {value!r}")
        s = self.setting
        if ((s.ge is not None and value < s.ge) or (s.gt is not None and value <= s.gt)
                or (s.le is not None and value > s.le) or (s.lt is not None and value >= s.lt)):
            raise InvalidInputError(f"{self.name} must be {self.range}, got {value}")

    @property
    def range(self) -> str:
        """The bounds in words: "within 64..1024", "in (0, 1]", "at least 1"."""
        s = self.setting
        low = s.ge if s.ge is not None else s.gt
        high = s.le if s.le is not None else s.lt
        if low is not None and high is not None:
            if s.ge is not None and s.le is not None:
                return f"within {show(low)}..{show(high)}"
            return (f"in {'[' if s.ge is not None else '('}{show(low)}, "
                    f"{show(high)}{']' if s.le is not None else ')'}")
        if low is not None:
            return f"at least {show(low)}" if s.ge is not None else f"greater than {show(low)}"
        if high is not None:
            return f"at most {show(high)}" if s.le is not None else f"less than {show(high)}"
        return "any number"


def _declared(config: type) -> tuple[DeclaredSetting, ...]:
    """The declarations of a config dataclass's fields; ``TypeError`` for a field declared
    wrongly (checked at import, so a mistake never reaches a request)."""
    hints = get_type_hints(config)
    declared = []
    for f in fields(config):
        where = f"{config.__name__}.{f.name}"
        spec = f.metadata.get(_SETTING)
        if not isinstance(spec, Setting):
            raise TypeError(f"{where} has no Setting: declare it with "
                            "field(default=..., metadata=setting(...))")
        if (f.default is None) != (spec.null is not None):
            raise TypeError(f"{where}: a setting may be None exactly when its default is None, "
                            "and then its Setting says what null means (null=...)")
        kind = hints[f.name]
        if get_origin(kind) in (Union, types.UnionType):
            kind, = (a for a in get_args(kind) if a is not type(None))
        choices = get_args(kind) if get_origin(kind) is Literal else ()
        declared.append(DeclaredSetting(f.name, kind, f.default, choices, spec))
    return tuple(declared)


# Every detector setting in field order, with its type, default and declaration.
SETTINGS: tuple[DeclaredSetting, ...] = _declared(DetectorConfig)

_PRESET_SETTING = next(s for s in SETTINGS if s.name == "preset")


def _check_presets() -> None:
    """``TypeError`` at import for a preset that sets an unknown setting, a value the setting
    refuses, or (the default preset) a value other than the field's default."""
    defaults = {s.name: s for s in SETTINGS}
    for preset in PRESETS.values():
        if set(preset.settings) != PRESET_FIELDS:  # else one preset's values leak into another
            raise TypeError(f"preset {preset.name} must set every setting some preset sets: "
                            f"{sorted(PRESET_FIELDS)}")
        for name, value in preset.settings.items():
            if name not in defaults or name == "preset":
                raise TypeError(f"preset {preset.name} sets {name!r}, not a detector setting")
            try:
                defaults[name].check(value)
            except InvalidInputError as exc:
                raise TypeError(f"preset {preset.name}: {exc}") from None
            if preset.name == DEFAULT_PRESET and value != defaults[name].default:
                raise TypeError(f"the default preset {preset.name} sets {name}={value!r}; the "
                                f"field's default must be the same ({defaults[name].default!r})")


_check_presets()
