"""What the defect regions of verdicts are worth on a labelled test split.

Per ground-truth defect (each 8-connected component of a mask): is it found, that is, does
a region reported at the calibrated threshold overlap its bounding box with IoU >= 0.3? And
what a minimum defect area does: false-reject rate and recall when an image counts as
anomalous only with a region at least that large. Both for each declared candidate of the
region rule's peak fraction (``regions.RegionRule``), from one pass over the test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from app.detector.regions import defect_regions

# Declared before measuring (BENCHMARKS.md, "Defect regions"): 0 = every cell above the
# threshold, 0.5 = half of a group's peak, 0.75.
PEAK_FRACTION_CANDIDATES = (0.0, 0.5, 0.75)
MIN_AREA_SIZES = (0, 64, 256, 1024, 4096)
FOUND_IOU = 0.3


def ground_truth_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(x, y, width, height)`` of each 8-connected component of a boolean mask."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for window in ndimage.find_objects(labels):
        if window is not None:
            rows, cols = window
            boxes.append((cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start))
    return boxes


class RegionTally:
    """Accumulates, image by image, the region figures of one draw."""

    def __init__(self, threshold: float,
                 candidates: tuple[float, ...] = PEAK_FRACTION_CANDIDATES) -> None:
        self.threshold = threshold
        self.candidates = candidates
        self.ground_truth = 0
        self.found = dict.fromkeys(candidates, 0)
        # Per candidate, per image: (is a defect image, score above threshold, largest area).
        self._images: dict[float, list[tuple[bool, bool, int]]] = {c: [] for c in candidates}

    def add(self, score: float, patch_scores: np.ndarray, image_size: tuple[int, int],
            is_defect: bool, mask: np.ndarray | None = None) -> None:
        boxes = ground_truth_boxes(mask) if mask is not None and is_defect else []
        self.ground_truth += len(boxes)
        above = score > self.threshold
        for fraction in self.candidates:
            regions = defect_regions(patch_scores, self.threshold, image_size,
                                     peak_fraction=fraction)
            largest = max((r.area_px for r in regions), default=0)
            self._images[fraction].append((is_defect, above, largest))
            self.found[fraction] += sum(
                any(r.iou(box) >= FOUND_IOU for r in regions) for box in boxes)

    def found_share(self) -> dict[str, float | None]:
        """Per candidate (as text), the share of ground-truth defects found."""
        return {f"{c:g}": (self.found[c] / self.ground_truth if self.ground_truth else None)
                for c in self.candidates}

    def min_area_rates(self) -> dict[str, list[dict[str, Any]]]:
        """Per candidate, FRR and recall at each of ``MIN_AREA_SIZES``."""
        out: dict[str, list[dict[str, Any]]] = {}
        for c in self.candidates:
            rows = np.asarray(self._images[c], dtype=np.int64).reshape(-1, 3)
            defect, above, largest = rows[:, 0] == 1, rows[:, 1] == 1, rows[:, 2]
            table = []
            for size in MIN_AREA_SIZES:
                flagged = above & ((largest >= size) if size > 0 else True)
                table.append({
                    "min_area_px": size,
                    "false_reject_rate": float(flagged[~defect].mean()) if (~defect).any()
                    else None,
                    "recall": float(flagged[defect].mean()) if defect.any() else None,
                })
            out[f"{c:g}"] = table
        return out
