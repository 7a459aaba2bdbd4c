"""The candidate configurations for the default and the ``accurate`` preset, as declared in
BENCHMARKS.md ("Presets") before their screening runs: one place for the latency bench
(``bench.presets``) and the screening command lines.

Each value is what a variant's ``settings`` would hold.
"""

from __future__ import annotations

from typing import Any

from app.detector.presets import PresetName

# What every candidate was measured with unless it names the setting: the defaults of the
# first screening. Pinned, so that a later default (C11's turns, C13's JPEG copies) does not
# change what an earlier candidate's name means.
SCREENED_WITH: dict[str, Any] = {"augment": "none", "light": "keep", "jpeg_views": 0,
                                 "jpeg_copy_light": 0.0, "max_bank_size": 16384,
                                 "edge_reach": "finest"}
# EfficientNet-Lite2's own resolution until C15 made it 384 (what null meant for C9-C14).
LITE2_288: dict[str, Any] = {"backbone": "efficientnet_lite2", "resolution": 288}
# C15 and what was built on it: C13 at 384 px with half the bank.
LITE2_384: dict[str, Any] = {"backbone": "efficientnet_lite2", "augment": "auto", "jpeg_views": 1,
                             "resolution": 384, "max_bank_size": 8192}

# C18 and C19 (which differ in the code's turn rule, not in settings).
LITE2_384_CONTRAST: dict[str, Any] = {**LITE2_384, "jpeg_copy_light": 0.2,
                                      "edge_reach": "coarsest", "light": "contrast"}

_DECLARED: dict[str, dict[str, Any]] = {
    "C0": {"preset": "fast"},
    "C1": {"backbone": "vit_small_l6_l9"},  # the accurate preset of the screening
    "C2": {"backbone": "vit_small_l6_l9", "resolution": 336, "resize": "square"},
    "C3": {"backbone": "vit_small_l8"},
    "C4": {"backbone": "vit_small_l5"},
    "C5": {"backbone": "vit_small_l6_l9", "resolution": 336, "resize": "fixed_scale"},
    "C6": {"backbone": "vit_small_l6_l9", "score_top_fraction": 0.01},
    "C7": {"backbone": "vit_small_l6_l9", "distance": "cosine"},
    "C8": {"backbone": "vit_small_l6_l9", "background": "auto"},
    "C9": LITE2_288,
    "C10": {"backbone": "vit_small_l6_l9", "resolution": 336, "resize": "square",
            "variation_views": 4},
    "C11": {**LITE2_288, "augment": "auto"},  # turns for parts at any angle
    "C12": {**LITE2_288, "augment": "auto", "light": "normalise"},
    "C13": {**LITE2_288, "augment": "auto", "jpeg_views": 1},  # C11's own JPEG copy
    "C14": {**LITE2_288, "augment": "auto", "jpeg_views": 1,
            "jpeg_copy_light": 0.2},  # the JPEG copy re-lit x0.8-1.2
    "C15": LITE2_384,  # finer patches, the bank halved
    "C16": {**LITE2_384, "jpeg_copy_light": 0.2},  # C15's JPEG copy re-lit x0.8-1.2
    # C16 with the edge band one cell wider (run as edge_band 4, the band this reach gives
    # Lite2's margin)
    "C17": {**LITE2_384, "jpeg_copy_light": 0.2, "edge_reach": "coarsest"},
    "C18": LITE2_384_CONTRAST,  # C17 with the contrast matched
    # C18's settings under auto's turn rule of C19 (orientation.placed_at_varying_angles: the
    # photos' directions spread over more than 45 degrees): the code's rule since, so C11-C18
    # now run with it too; at 1 and 16 images both rules decide alike on every evaluation draw
    "C19": LITE2_384_CONTRAST,
}
CANDIDATES: dict[str, dict[str, Any]] = {
    name: settings if settings.get("preset") else {**SCREENED_WITH, **settings}
    for name, settings in _DECLARED.items()}

# The candidate each preset is (the configurations auto chooses among).
PRESET_CANDIDATES: dict[PresetName, str] = {"accurate": "C19", "fast": "C0"}

# The reference of the latency budget: the default must cost at most 6x its time per image.
REFERENCE = "C0"
LATENCY_BUDGET = 6.0


def evaluate_args(candidate: str) -> list[str]:
    """``nominal evaluate`` options that give ``candidate``'s configuration."""
    return [part for name, value in CANDIDATES[candidate].items()
            for part in ("--set", f"{name}={'null' if value is None else value}")]
