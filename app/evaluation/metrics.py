"""Evaluation metrics, numpy only (and ``scipy.ndimage.label`` for mask regions).

Image scores are few and kept: ``auroc`` is exact. Pixel scores are far too many to keep
(334 maps of 1130 x 460 are 174 M scores), so the pixel metrics are accumulated image by
image into histograms over one fixed set of bins, ``ScoreBins``, and memory stays the same
whatever the number of test images:

* ``ScoreBins``: bins on a logarithmic scale around a reference score (the model's calibrated
  image threshold, known before any test image is scored; anomaly-map scores are distances,
  >= 0). ``bins_per_decade`` bins per factor of 10 over ``decades`` decades each side of the
  reference, plus one bin for everything below the range (0 included) and one above it. With
  the defaults (10 000 per decade, 6 decades each side: 120 002 bins) a bin is 0.023 % wide,
  relative to its scores.
* ``PixelRoc``: pixel AUROC from the histograms of defect and good pixels: the Mann-Whitney
  statistic with scores in the same bin counted as ties. Equal scores are ties in the exact
  value too; only distinct scores that share a bin move it, by at most half the fraction of
  (defect, good) pixel pairs in the same bin (tested against ``auroc``: error < 1e-3).
* ``ProCurve``: the per-region overlap (PRO) of Bergmann et al., "Uninformed Students:
  Student-Teacher Anomaly Detection with Discriminative Latent Embeddings", CVPR 2020, as
  reported for MVTec AD (Bergmann et al., IJCV 2021). The regions are the connected components
  of every ground-truth mask (8-connectivity, as in the MVTec AD evaluation code). At a
  threshold t, the overlap of a region is the fraction of its pixels scoring above t, and
  PRO(t) is the mean over all regions of all test images (a small region counts as much as a
  large one); FPR(t) is the fraction of good pixels (every pixel outside the masks, in all test
  images, good and defective) scoring above t. PRO is the area under PRO(FPR) from FPR 0 to
  0.3 (trapezoids, the curve cut at 0.3 by linear interpolation), divided by 0.3: 1.0 for a
  detector that scores every defect pixel above every good pixel, 0.15 for a constant map.
  The thresholds are the bin edges; each region's pixels enter one weighted histogram with
  weight 1 / (region size), so memory does not grow with the number of regions either.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from app.detector.roc import auroc

__all__ = ["PRO_FPR_LIMIT", "PixelMetrics", "PixelRoc", "ProCurve", "ScoreBins", "auroc",
           "recall_at_false_reject_rate"]


def recall_at_false_reject_rate(scores: np.ndarray, is_defect: np.ndarray,
                                rate: float) -> float:
    """Defect recall at the lowest threshold that rejects at most ``rate`` of the good
    ``scores`` (anomalous: score > threshold): what a threshold set on the test split itself
    would catch at that false-reject rate, the yardstick for one calibrated without it."""
    if not 0 <= rate <= 1:
        raise ValueError(f"false-reject rate must be in [0, 1], got {rate}")
    good = np.sort(np.asarray(scores)[~is_defect])[::-1]
    defects = np.asarray(scores)[is_defect]
    if len(good) == 0 or len(defects) == 0:
        return float("nan")
    allowed = int(np.floor(rate * len(good) + 1e-9))  # good images it may reject
    threshold = good[allowed] if allowed < len(good) else -np.inf
    return float(np.mean(defects > threshold))

PRO_FPR_LIMIT = 0.3
# 8-connectivity: diagonal neighbours belong to the same region.
_REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


class ScoreBins:
    """Fixed logarithmic bins around ``reference`` (see the module docstring).

    Bin 0 holds scores <= ``low`` (0 and negatives included), the last bin scores >= ``high``;
    bin i in between holds [low * 10**((i - 1) / bins_per_decade), low * 10**(i / ...)).
    """

    def __init__(self, reference: float, *, decades: int = 6,
                 bins_per_decade: int = 10_000) -> None:
        if not (np.isfinite(reference) and reference > 0):
            reference = 1.0  # a degenerate threshold: any positive scale will do
        self.reference = float(reference)
        self.bins_per_decade = bins_per_decade
        self.log_low = float(np.log10(self.reference)) - decades
        self.count = 2 * decades * bins_per_decade + 2
        self.low = 10.0**self.log_low
        self.high = 10.0 ** (self.log_low + 2 * decades)

    def index(self, scores: np.ndarray) -> np.ndarray:
        """The bin of each score (flattened), as intp."""
        x = np.asarray(scores, dtype=np.float64).ravel()
        if np.isnan(x).any():
            raise ValueError("NaN in the scores")
        # Below the range -> the position 0 (bin 0 after the clip), above it (inf too) -> the
        # last bin; clipped as floats first, so that the cast never sees inf.
        pos = (np.log10(np.clip(x, self.low, self.high)) - self.log_low) * self.bins_per_decade
        idx = np.floor(pos).astype(np.intp) + 1
        idx[x <= self.low] = 0
        np.clip(idx, 0, self.count - 1, out=idx)
        return idx

    def edges(self) -> np.ndarray:
        """Lower edge of each bin (the threshold "score > edge" counts that bin and above);
        bin 0's edge is -inf."""
        inner = 10.0 ** (self.log_low + np.arange(self.count - 1) / self.bins_per_decade)
        return np.concatenate([[-np.inf], inner])


class PixelRoc:
    """Pixel AUROC accumulated image by image: ``add(scores, mask)``, then ``auroc()``."""

    def __init__(self, bins: ScoreBins) -> None:
        self.bins = bins
        self.positive = np.zeros(bins.count, dtype=np.int64)
        self.negative = np.zeros(bins.count, dtype=np.int64)

    def add(self, scores: np.ndarray, mask: np.ndarray) -> None:
        self.add_binned(self.bins.index(scores), np.asarray(mask, dtype=bool).ravel())

    def add_binned(self, idx: np.ndarray, mask: np.ndarray) -> None:
        if idx.shape != mask.shape:
            raise ValueError(f"{idx.size} scores and {mask.size} mask pixels")
        n = self.bins.count
        self.positive += np.bincount(idx[mask], minlength=n)
        self.negative += np.bincount(idx[~mask], minlength=n)

    def auroc(self) -> float:
        n_pos, n_neg = int(self.positive.sum()), int(self.negative.sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        neg = self.negative.astype(np.float64)
        below = np.cumsum(neg) - neg  # good pixels in lower bins
        wins = float(np.dot(self.positive.astype(np.float64), below + 0.5 * neg))
        return wins / (float(n_pos) * float(n_neg))


class ProCurve:
    """Per-region overlap accumulated image by image: ``add(scores, mask)``, then ``pro()``."""

    def __init__(self, bins: ScoreBins) -> None:
        self.bins = bins
        self.regions = 0
        # Sum over region pixels of 1 / (size of their region), per bin.
        self.region_weight = np.zeros(bins.count, dtype=np.float64)
        self.negative = np.zeros(bins.count, dtype=np.int64)

    def add(self, scores: np.ndarray, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        if np.shape(scores) != mask.shape:
            raise ValueError(f"scores {np.shape(scores)} and mask {mask.shape} differ")
        self.add_binned(self.bins.index(scores), mask)

    def add_binned(self, idx: np.ndarray, mask: np.ndarray) -> None:
        """``idx``: the bins of the scores, flattened; ``mask``: the 2-D mask."""
        n = self.bins.count
        flat = mask.ravel()
        self.negative += np.bincount(idx[~flat], minlength=n)
        if not flat.any():
            return
        labels, count = ndimage.label(mask, structure=_REGION_STRUCTURE)
        labels = labels.ravel()[flat]
        sizes = np.bincount(labels)  # sizes[0] is 0: only region pixels are left
        weights = 1.0 / sizes[labels]
        self.region_weight += np.bincount(idx[flat], weights=weights, minlength=n)
        self.regions += int(count)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, mean region overlap) at every bin edge, FPR ascending, from (0, 0)."""
        n_neg = int(self.negative.sum())
        # Counts above each edge: reversed cumulative sums, plus the point above every bin.
        neg_above = np.concatenate([np.cumsum(self.negative[::-1]), [0]])[::-1]
        weight_above = np.concatenate([np.cumsum(self.region_weight[::-1]), [0.0]])[::-1]
        fpr = neg_above[::-1] / max(n_neg, 1)
        overlap = weight_above[::-1] / max(self.regions, 1)
        return fpr, overlap

    def pro(self, fpr_limit: float = PRO_FPR_LIMIT) -> float:
        """Area under PRO(FPR) up to ``fpr_limit``, divided by it (nan without regions or good
        pixels)."""
        if self.regions == 0 or int(self.negative.sum()) == 0:
            return float("nan")
        return normalised_area(*self.curve(), fpr_limit)


def normalised_area(fpr: np.ndarray, tpr: np.ndarray, limit: float) -> float:
    """Area under the curve (``fpr`` ascending) from 0 to ``limit``, divided by ``limit``."""
    i = int(np.searchsorted(fpr, limit, side="right"))  # points [0, i) have fpr <= limit
    x, y = fpr[:i], tpr[:i]
    if i < len(fpr) and x[-1] < limit:  # cut the segment that crosses the limit
        x0, x1, y0, y1 = fpr[i - 1], fpr[i], tpr[i - 1], tpr[i]
        x = np.append(x, limit)
        y = np.append(y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.trapezoid(y, x) / limit)


class PixelMetrics:
    """Pixel AUROC and PRO over the same bins; each image's scores are binned once."""

    def __init__(self, reference: float) -> None:
        self.bins = ScoreBins(reference)
        self.roc = PixelRoc(self.bins)
        self.pro_curve = ProCurve(self.bins)

    def add(self, scores: np.ndarray, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        if np.shape(scores) != mask.shape:
            raise ValueError(f"scores {np.shape(scores)} and mask {mask.shape} differ")
        idx = self.bins.index(scores)
        self.roc.add_binned(idx, mask.ravel())
        self.pro_curve.add_binned(idx, mask)

    def auroc(self) -> float:
        return self.roc.auroc()

    def pro(self) -> float:
        return self.pro_curve.pro()
