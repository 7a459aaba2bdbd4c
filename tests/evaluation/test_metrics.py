"""The pixel metrics accumulated in histograms (``app.evaluation.metrics``) against exact
values: pixel AUROC within 1e-3 of the rank statistic on generated scores (ties, heavy tails,
zeros, a reference far from the data), PRO on masks whose answer is known by hand, and memory
that does not grow with the number of images added."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from app.evaluation.metrics import (
    PixelMetrics,
    PixelRoc,
    ProCurve,
    ScoreBins,
    auroc,
    normalised_area,
    recall_at_false_reject_rate,
)


def _generated(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(scores, labels, reference) of one generated distribution."""
    n_neg, n_pos = 200_000, 20_000
    if name == "lognormal":  # overlapping, around the reference
        neg = rng.lognormal(0.0, 0.3, n_neg)
        pos = rng.lognormal(0.3, 0.4, n_pos)
    elif name == "ties":  # scores on a coarse grid: most pixels tie, zeros included
        neg = np.round(rng.gamma(2.0, 0.5, n_neg), 1)
        pos = np.round(rng.gamma(3.0, 0.5, n_pos), 1)
        neg[:5000] = 0.0
    elif name == "heavy_tails":  # Pareto tails over several decades
        neg = rng.pareto(1.2, n_neg) * 0.5
        pos = rng.pareto(0.8, n_pos) * 0.7
    elif name == "far_reference":  # the reference 100 x above the data
        neg = rng.exponential(0.01, n_neg)
        pos = rng.exponential(0.015, n_pos)
    elif name == "float32_maps":  # blurred-map-like float32 values, tightly packed
        neg = (1.0 + 0.05 * rng.standard_normal(n_neg)).astype(np.float32)
        pos = (1.02 + 0.05 * rng.standard_normal(n_pos)).astype(np.float32)
    else:
        raise AssertionError(name)
    scores = np.concatenate([neg, pos]).astype(np.float64)
    labels = np.concatenate([np.zeros(n_neg, bool), np.ones(n_pos, bool)])
    return scores, labels, 1.0


@pytest.mark.parametrize(
    "name", ["lognormal", "ties", "heavy_tails", "far_reference", "float32_maps"])
def test_histogram_auroc_matches_the_exact_value(name: str) -> None:
    rng = np.random.default_rng(7)
    scores, labels, reference = _generated(name, rng)
    order = rng.permutation(len(scores))
    scores, labels = scores[order], labels[order]
    roc = PixelRoc(ScoreBins(reference))
    for part in np.array_split(np.arange(len(scores)), 11):  # image by image
        roc.add(scores[part], labels[part])
    exact = auroc(scores, labels)
    assert 0.5 < exact < 1.0
    assert abs(roc.auroc() - exact) < 1e-3


def test_histogram_auroc_of_separable_and_constant_scores() -> None:
    roc = PixelRoc(ScoreBins(1.0))
    roc.add(np.array([0.1, 0.2, 3.0, 4.0]), np.array([False, False, True, True]))
    assert roc.auroc() == 1.0
    flat = PixelRoc(ScoreBins(1.0))
    flat.add(np.full(10, 0.7), np.arange(10) < 3)
    assert flat.auroc() == 0.5
    empty = PixelRoc(ScoreBins(1.0))
    empty.add(np.ones(4), np.zeros(4, bool))
    assert np.isnan(empty.auroc())


def test_bins_cover_zero_negatives_and_the_extremes() -> None:
    bins = ScoreBins(2.0)
    idx = bins.index(np.array([-1.0, 0.0, bins.low, 2.0, 2.001, bins.high, 1e30, np.inf]))
    assert idx[0] == idx[1] == idx[2] == 0
    assert 0 < idx[3] < idx[4] < bins.count - 1
    assert idx[5] == idx[6] == idx[7] == bins.count - 1
    edges = bins.edges()
    (i,) = bins.index(np.array([2.5]))
    assert edges[i] <= 2.5 < edges[i + 1]
    with pytest.raises(ValueError):
        bins.index(np.array([np.nan]))


def _pro(scores: list[np.ndarray], masks: list[np.ndarray], reference: float = 1.0) -> float:
    curve = ProCurve(ScoreBins(reference))
    for s, m in zip(scores, masks, strict=True):
        curve.add(s, m)
    return curve.pro()


def _square_mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for r0, r1, c0, c1 in boxes:
        mask[r0:r1, c0:c1] = True
    return mask


def test_pro_of_a_perfect_detector_is_one() -> None:
    mask = _square_mask((32, 32), (4, 10, 4, 10), (20, 22, 25, 30))
    rng = np.random.default_rng(0)
    scores = np.where(mask, 2.0 + rng.random(mask.shape), rng.random(mask.shape))
    good = rng.random((32, 32))
    assert _pro([scores, good], [mask, np.zeros_like(mask)]) == pytest.approx(1.0)


def test_pro_of_a_constant_map_is_the_diagonal() -> None:
    """Every threshold flags all pixels or none: the curve is (0, 0) -> (1, 1), whose area up
    to FPR 0.3 is 0.3**2 / 2; normalised by 0.3 that is 0.15."""
    mask = _square_mask((32, 32), (4, 10, 4, 10))
    assert _pro([np.full((32, 32), 0.8)], [mask]) == pytest.approx(0.15)


def test_pro_weights_each_region_equally() -> None:
    """A 20 x 20 region scoring above every good pixel, a 2 x 2 region below every good pixel:
    below FPR 1 the mean overlap is 0.5, whatever the sizes (pixel-weighted it would be 0.99)."""
    mask = _square_mask((64, 64), (2, 22, 2, 22), (40, 42, 40, 42))
    scores = np.ones((64, 64))
    scores[2:22, 2:22] = 2.0
    scores[40:42, 40:42] = 0.5
    assert _pro([scores], [mask]) == pytest.approx(0.5)


def test_pro_with_uniform_good_pixels() -> None:
    """Good pixels uniform on (0, 1) make FPR(t) = 1 - t; the one region scores 0.9, so the
    overlap is 0 up to FPR 0.1 and 1 after: area (0.3 - 0.1) / 0.3."""
    rng = np.random.default_rng(1)
    good = rng.random((200, 200))
    mask = _square_mask((200, 200), (10, 30, 10, 30))
    scores = rng.random((200, 200))
    scores[mask] = 0.9
    got = _pro([scores, good], [mask, np.zeros_like(mask)])
    assert got == pytest.approx(2 / 3, abs=2e-3)


def test_regions_are_8_connected_and_counted_per_image() -> None:
    curve = ProCurve(ScoreBins(1.0))
    diagonal = np.eye(5, dtype=bool)  # one region, touching only at corners
    curve.add(np.ones((5, 5)), diagonal)
    curve.add(np.ones((5, 5)), _square_mask((5, 5), (0, 1, 0, 1), (3, 5, 3, 5)))
    assert curve.regions == 3
    assert curve.region_weight.sum() == pytest.approx(3.0)  # each region weighs 1 in all


def _exact_pro(scores: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """PRO by brute force: every distinct score is a threshold (flagged: score >= t)."""
    from scipy import ndimage

    regions: list[tuple[int, np.ndarray]] = []
    for i, m in enumerate(masks):
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, labels == j) for j in range(1, n + 1)]
    fpr, overlap = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:
        flagged = scores >= t
        fpr.append(float(flagged[~masks].mean()))
        overlap.append(float(np.mean([flagged[i][r].mean() for i, r in regions])))
    return normalised_area(np.array(fpr), np.array(overlap), limit)


def test_pro_matches_a_brute_force_computation() -> None:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:24, 0:24]
    masks = np.stack([
        (yy - 6) ** 2 + (xx - 8) ** 2 <= 9,
        ((yy - 15) ** 2 + (xx - 15) ** 2 <= 16) | ((yy < 3) & (xx > 20)),
        np.zeros((24, 24), bool),
    ])
    scores = np.round(rng.gamma(2.0, 0.4, masks.shape) + 0.8 * masks, 3)  # ties too
    got = _pro(list(scores), list(masks))
    assert abs(got - _exact_pro(scores, masks)) < 1e-3
    assert 0.2 < got < 1.0


def test_pixel_metrics_bins_once_for_both() -> None:
    rng = np.random.default_rng(5)
    mask = _square_mask((40, 40), (5, 15, 5, 15))
    scores = rng.random((40, 40)) + mask
    both = PixelMetrics(1.0)
    both.add(scores, mask)
    roc, curve = PixelRoc(ScoreBins(1.0)), ProCurve(ScoreBins(1.0))
    roc.add(scores, mask)
    curve.add(scores, mask)
    assert both.auroc() == roc.auroc()
    assert both.pro() == curve.pro()
    with pytest.raises(ValueError):
        both.add(scores, mask[:-1])


def _peak_adding(n_images: int) -> int:
    rng = np.random.default_rng(0)
    metrics = PixelMetrics(1.0)
    mask = _square_mask((64, 64), (10, 20, 10, 20))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(n_images):
            metrics.add(rng.random((64, 64)) + mask, mask)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_accumulator_memory_does_not_grow_with_the_number_of_images() -> None:
    small, large = _peak_adding(10), _peak_adding(40)
    assert large < 1.2 * small + 64 * 1024


def test_recall_at_a_false_reject_rate_uses_the_test_splits_own_threshold() -> None:
    good = np.arange(1.0, 21.0)  # 20 good scores 1..20
    defects = np.array([0.5, 10.5, 18.5, 19.5, 25.0])
    scores = np.concatenate([good, defects])
    is_defect = np.r_[np.zeros(20, bool), np.ones(5, bool)]
    # 5 % of 20 goods: one may be rejected, so the threshold is the second highest (19).
    assert recall_at_false_reject_rate(scores, is_defect, 0.05) == pytest.approx(2 / 5)
    # Under one good image's worth: none rejected, the threshold is the highest good (20).
    assert recall_at_false_reject_rate(scores, is_defect, 0.01) == pytest.approx(1 / 5)
    assert recall_at_false_reject_rate(scores, is_defect, 1.0) == 1.0
    assert np.isnan(recall_at_false_reject_rate(good, np.zeros(20, bool), 0.05))
    with pytest.raises(ValueError, match="-0.1"):
        recall_at_false_reject_rate(scores, is_defect, -0.1)


def test_recall_at_a_false_reject_rate_counts_tied_good_scores_as_rejected_together() -> None:
    # Two goods tie at the top: a threshold rejecting one must reject both, so at 5 % of 20
    # it sits at the tie (rejects neither) and a defect at the tie is not caught.
    good = np.r_[np.arange(1.0, 19.0), 19.0, 19.0]
    scores = np.r_[good, 19.0, 19.5]
    is_defect = np.r_[np.zeros(20, bool), np.ones(2, bool)]
    assert recall_at_false_reject_rate(scores, is_defect, 0.05) == pytest.approx(0.5)
