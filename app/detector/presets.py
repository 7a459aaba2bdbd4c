"""Presets: named detector configurations, so that choosing a model needs no block numbers.

A preset sets some detector settings (``Preset.settings``); a configuration resolves as the
detector's field defaults, then its preset's settings, then the settings given explicitly
(``config.DetectorConfig.from_dict``). The default preset's settings are the field defaults
(checked at import in ``config``), so ``DetectorConfig()`` is the default preset's model.

Which preset is the default, and what ``accurate`` holds, is chosen on the four shared data
sets among candidates declared before measuring (BENCHMARKS.md, "Presets"): EfficientNet-Lite2
wins within the latency budget and, by the rule's tie margin (0.005), without it, so it is
both the default and ``accurate``; since candidate C11 it also turns the training images of a
part the photos show at varying angles (``augment`` auto), since C13 it learns a JPEG copy
of each training image (``jpeg_views`` 1), and since C15 it sees the part at 384 px (the
backbone's resolution) with half the bank (``max_bank_size`` 8192), and since C16 its JPEG
copies are re-lit by up to 20 % (``jpeg_copy_light`` 0.2), and since C17 the edge weight
covers the four cells the margin reaches through the stride-16 layer's neighbourhood
(``edge_reach`` coarsest), and since C18 each image's contrast is matched to the training
images' (``light`` contrast); since C19 auto turns a part as soon as the photos with a
direction spread over more than 45 degrees. ``fast`` is the cheaper EfficientNet-Lite0, as
photographed. ``balanced`` named it while the slower candidates were still being screened
(migration 0007 renames it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

PresetName = Literal["fast", "accurate"]
PRESET_NAMES: tuple[PresetName, ...] = get_args(PresetName)
# What the ``preset`` setting takes: a preset, or ``auto`` (fit each preset within the latency
# budget and keep the one whose quality report expects the most; engine.Detector.fit).
AUTO = "auto"
PresetChoice = Literal["fast", "accurate", "auto"]


@dataclass(frozen=True)
class Preset:
    """One preset: the settings it sets and what its figures say (what users choose by)."""

    name: PresetName
    summary: str
    settings: Mapping[str, Any]
    # Time per 512 x 512 image (JSON verdict, 2 threads) as a multiple of fast's, measured side
    # by side (bench.presets; BENCHMARKS.md, "Presets"): a constant, so auto chooses the same
    # candidates on every machine.
    cost: float


PRESETS: Mapping[PresetName, Preset] = MappingProxyType({
    "fast": Preset(
        "fast",
        "EfficientNet-Lite0: the quickest; excellent on objects in a fixed pose (MVTec "
        "bottle 0.996 image AUROC from one image), weak on textures and turned parts",
        MappingProxyType({"backbone": "efficientnet_lite0", "augment": "none",
                          "jpeg_views": 0, "jpeg_copy_light": 0.0,
                          "max_bank_size": 16384, "edge_reach": "finest",
                          "light": "keep"}), 1.0),
    "accurate": Preset(
        "accurate",
        "EfficientNet-Lite2 at 384 px, its training images turned when they show the part at "
        "varying angles and also learnt as a JPEG copy re-lit by up to 20 %, the patches the "
        "frame's edge reaches weighted half, each image's contrast matched to the training "
        "images': the default; the best over the four shared data sets of every declared "
        "candidate by the rule (all 21 allowed-variation criteria, mean 0.833; fast 0.790): "
        "screws at any angle 0.87 from 16 images (without the turns 0.64) and 0.77 from 4, "
        "textures better "
        "(magnetic tile 0.78 / 0.82 from 1 / 16 images against 0.74 / 0.78), level on bottle, "
        "the bsdata spindles 0.87 / 0.88 (fast 0.84 / 0.89); JPEG-70 from a camera rejects 2 % "
        "of good bottles (without the copy 22 %), +20 % light 3 % of good spindles (unlit "
        "copy 19 %), a spindle 4 % off its place 3 %; about 4.4x fast's time per image, 4.2x "
        "where it turns",
        MappingProxyType({"backbone": "efficientnet_lite2", "augment": "auto",
                          "jpeg_views": 1, "jpeg_copy_light": 0.2,
                          "max_bank_size": 8192, "edge_reach": "coarsest",
                          "light": "contrast"}), 4.35),
})

DEFAULT_PRESET: PresetName = "accurate"

# Until auto has chosen (a variant's settings before its first model), it shows the cheapest
# preset's settings.
AUTO_STANDS_IN: PresetName = "fast"

# The configuration every variant and model had before presets existed (migration 0005).
LEGACY_PRESET: PresetName = "fast"

# The settings some preset sets (every preset sets all of them): sending a preset sets these.
PRESET_FIELDS: frozenset[str] = frozenset(k for p in PRESETS.values() for k in p.settings)


def shown_preset(name: str) -> Preset | None:
    """The preset whose settings a configuration on ``name`` takes: ``name``'s own, or for
    auto its stand-in until it has chosen (None: not a preset)."""
    return PRESETS.get(AUTO_STANDS_IN if name == AUTO else name)  # type: ignore[call-overload]


def auto_pick(expected: Mapping[PresetName, float | None]) -> PresetName:
    """What auto keeps among presets by their quality reports' expected image AUROC: the
    highest (one without an estimate last), a tie going to the cheaper."""
    return max(expected, key=lambda name: (expected[name] or 0.0, -PRESETS[name].cost))


def preset_values(name: str) -> dict[str, Any]:
    """The values each preset gives setting ``name``, for the setting's description."""
    return {p.name: p.settings[name] for p in PRESETS.values() if name in p.settings}
