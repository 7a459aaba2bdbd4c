"""Threshold choice from good scores (and defects), the normalised score, one-shot hold-out."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest

from app.detector.calibration import (
    ONE_SHOT_RELATIVE_SPREAD,
    PRIOR_LOG_SPREAD,
    PRIOR_WEIGHT,
    Calibration,
    ScorePrior,
    calibrate,
    f1_threshold,
    normalize_score,
    predicted_false_reject_rate,
    region_holdout_score,
    student_t_exceedance,
    student_t_quantile,
    threshold_from_good,
)
from app.detector.config import DetectorConfig
from app.detector.engine import Detector, resize_plan

# --- threshold_from_good -----------------------------------------------------------------


@pytest.mark.parametrize(
    "scores",
    [[3.0], [1.0, 1.1, 1.2], [2.0, 2.0, 9.0], [5.0, 4.0, 4.5, 4.2, 4.8, 4.1]],
)
@pytest.mark.parametrize("rate", [0.001, 0.01, 0.2, 0.49])
def test_threshold_accepts_every_calibration_image(scores: list[float], rate: float) -> None:
    assert threshold_from_good(np.asarray(scores), rate) >= max(scores)


def test_threshold_is_monotone_in_the_target_rate() -> None:
    scores = np.array([2.0, 2.3, 2.1, 2.6, 2.2, 2.4])
    rates = [0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.45]
    thresholds = [threshold_from_good(scores, r) for r in rates]
    # A higher tolerated false-reject rate can only lower (never raise) the threshold ...
    assert all(a >= b for a, b in zip(thresholds, thresholds[1:], strict=False))
    # ... and it really moves while above the max good score.
    assert thresholds[0] > thresholds[2] > max(scores)


def test_identical_scores_use_the_prior_spread() -> None:
    rate = 0.01
    threshold = threshold_from_good(np.array([4.0, 4.0, 4.0]), rate)
    # No sample spread: the prior's, with its weight in the degrees of freedom.
    dof = PRIOR_WEIGHT + 2
    pooled = PRIOR_LOG_SPREAD * math.sqrt(PRIOR_WEIGHT / dof)
    expected = 4.0 * math.exp(student_t_quantile(1 - rate, dof) * pooled * math.sqrt(1 + 1 / 3))
    assert threshold == pytest.approx(expected)
    # One shot: no spread at all, the normal quantile on the one-shot spread.
    z = NormalDist().inv_cdf(1 - rate)
    one = threshold_from_good(np.array([4.0]), rate)
    assert one == pytest.approx(4.0 + z * ONE_SHOT_RELATIVE_SPREAD * 4.0 * math.sqrt(2))


def test_a_wide_sample_outweighs_the_prior() -> None:
    calm = np.array([10.0, 10.2, 9.9, 10.1, 10.0, 9.8])
    wild = np.array([10.0, 16.0, 8.0, 13.0, 9.0, 15.0])
    ratio = threshold_from_good(wild, 0.01) / np.exp(np.mean(np.log(wild)))
    assert ratio > threshold_from_good(calm, 0.01) / np.exp(np.mean(np.log(calm)))


@pytest.mark.parametrize("low", [0.0, 1e-9, 0.05, 0.5])
def test_a_near_duplicate_scoring_zero_does_not_blow_the_threshold_up(low: float) -> None:
    # Leave-one-out gives ~0 to an image whose twin is among the others.
    usual = threshold_from_good(np.array([2.5, 2.6, 2.4, 2.55]), 0.01)
    with_twin = threshold_from_good(np.array([low, 2.5, 2.6, 2.4]), 0.01)
    assert math.isfinite(with_twin)
    assert 2.6 <= with_twin <= 1.2 * usual


def test_all_zero_scores_give_a_zero_threshold() -> None:
    assert threshold_from_good(np.zeros(4), 0.01) == 0.0


def test_threshold_is_scale_free() -> None:
    scores = np.array([2.0, 2.3, 2.1, 2.6])
    assert threshold_from_good(10 * scores, 0.02) == pytest.approx(
        10 * threshold_from_good(scores, 0.02)
    )


@pytest.mark.parametrize(
    ("dof", "expected"), [(1, 31.821), (2, 6.965), (3, 4.541), (5, 3.365), (10, 2.764), (30, 2.457)]
)
def test_student_t_quantile_matches_tables(dof: int, expected: float) -> None:
    assert student_t_quantile(0.99, dof) == pytest.approx(expected, rel=5e-3)


@pytest.mark.parametrize("dof", [3, 8, 23])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.99, 0.999])
def test_student_t_exceedance_inverts_the_quantile(dof: int, p: float) -> None:
    x = student_t_quantile(p, dof)
    assert student_t_exceedance(x, dof) == pytest.approx(1 - p, rel=1e-4)
    assert student_t_exceedance(-x, dof) == pytest.approx(p, rel=1e-4)
    assert student_t_exceedance(0.0, dof) == pytest.approx(0.5)
    assert student_t_exceedance(1e6, dof) == 0.0


@pytest.mark.parametrize("n", [2, 4, 16])
def test_the_predicted_rate_at_the_bound_is_the_target(n: int) -> None:
    scores = np.exp(np.random.default_rng(n).normal(0.0, 0.1, n))
    threshold = threshold_from_good(scores, 0.02)
    assert predicted_false_reject_rate(scores, threshold) == pytest.approx(0.02, rel=1e-3)
    assert predicted_false_reject_rate(scores, 2 * threshold) < 0.02
    assert predicted_false_reject_rate(scores, 0.5 * threshold) > 0.02


def test_a_narrower_prior_lowers_the_bound_most_where_images_are_few() -> None:
    """The prior is worth a fixed number of images: with two shots it sets most of the
    spread, with forty it hardly matters; the predicted rate uses the same prior."""
    narrow = ScorePrior(log_spread=0.1, weight=PRIOR_WEIGHT)
    drops = []
    for n in (2, 40):  # log scores at the normal quantiles: spread 0.1, no outlier on top
        scores = np.exp([0.1 * NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])
        wide_bound = threshold_from_good(scores, 0.01)
        narrow_bound = threshold_from_good(scores, 0.01, prior=narrow)
        assert narrow_bound < wide_bound
        assert predicted_false_reject_rate(scores, narrow_bound, prior=narrow) == pytest.approx(
            0.01, rel=1e-3)
        drops.append(math.log(wide_bound / narrow_bound))
    assert drops[0] > 2 * drops[1]
    assert threshold_from_good(scores, 0.01, prior=ScorePrior()) == threshold_from_good(
        scores, 0.01)


@pytest.mark.parametrize("spread, weight", [(-0.1, 8), (0.2, -1)])
def test_a_prior_cannot_be_negative(spread: float, weight: int) -> None:
    with pytest.raises(ValueError, match="prior"):
        ScorePrior(log_spread=spread, weight=weight)


def test_the_predicted_rate_falls_below_the_target_when_the_top_score_sets_it() -> None:
    scores = np.array([1.0] * 15 + [2.0])  # one part far above the bound of the rest
    threshold = threshold_from_good(scores, 0.01)
    assert threshold == 2.0
    assert predicted_false_reject_rate(scores, threshold) < 0.01


def test_one_part_predicts_no_rate() -> None:
    """One image shows no spread between parts: there is no rate to state."""
    threshold = threshold_from_good(np.array([2.0]), 0.01)
    assert predicted_false_reject_rate(np.array([2.0]), threshold) is None
    assert predicted_false_reject_rate(np.array([2.0, 2.1, 1.9]), threshold, n_parts=1) is None


def test_threshold_bound_tightens_with_more_shots() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(10.0, 1.0, 64)
    few = threshold_from_good(scores[:4], 0.01) - np.mean(scores[:4])
    many = threshold_from_good(scores, 0.01) - np.mean(scores)
    assert few / np.std(scores[:4], ddof=1) > many / np.std(scores, ddof=1)


def test_threshold_rejects_empty_scores() -> None:
    with pytest.raises(ValueError, match="at least one"):
        threshold_from_good(np.array([]), 0.01)
    with pytest.raises(ValueError):
        calibrate(np.array([]), 0.01, method="leave-one-out")


# --- f1_threshold and calibrate ----------------------------------------------------------


@pytest.mark.parametrize(
    ("good", "defect"),
    [
        ([1.0, 2.0, 3.0], [5.0, 6.0]),
        ([0.5], [0.6]),
        ([10.0, 10.5, 11.0, 12.0], [12.5, 40.0, 13.0]),
    ],
)
def test_f1_threshold_separates_separable_sets(good: list[float], defect: list[float]) -> None:
    cut = f1_threshold(np.asarray(good), np.asarray(defect))
    assert max(good) <= cut < min(defect)


def test_f1_threshold_with_overlap_maximises_f1() -> None:
    good = np.array([1.0, 2.0, 3.0, 7.0])
    defect = np.array([6.0, 8.0, 9.0])
    cut = f1_threshold(good, defect)
    # Best: flag 6, 7, 8, 9 (tp 3, fp 1) -> F1 6/7; flagging only 8, 9 gives 4/5.
    assert 3.0 <= cut < 6.0


def test_calibrate_without_defects_keeps_the_method() -> None:
    cal = calibrate(np.array([1.0, 1.2, 1.1]), 0.01, method="leave-one-out")
    assert cal.method == "leave-one-out"
    assert cal.threshold >= 1.2
    assert cal.defect_scores == []
    assert cal.good_mean == pytest.approx(1.1)


def test_calibrate_with_defects_switches_to_f1() -> None:
    good = np.array([1.0, 1.2, 1.1])
    defects = np.array([3.0, 4.0])
    cal = calibrate(good, 0.01, method="leave-one-out", defect_scores=defects)
    assert cal.method == "f1-with-defects"
    assert 1.2 <= cal.threshold < 3.0
    assert cal.defect_scores == [3.0, 4.0]
    assert cal.good_scores == [1.0, 1.2, 1.1]
    # Empty defects are "no defects".
    assert calibrate(good, 0.01, method="x", defect_scores=np.array([])).method == "x"


def test_calibration_round_trips_through_a_dict() -> None:
    cal = calibrate(np.array([1.0, 1.5]), 0.05, method="leave-one-out")
    assert type(cal).from_dict(cal.to_dict()) == cal
    assert cal.normalize(cal.threshold) == pytest.approx(0.5)


# --- normalize_score ---------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.01, 1.0, 3.7, 250.0])
def test_normalize_score_fixed_points(threshold: float) -> None:
    assert normalize_score(threshold, threshold) == pytest.approx(0.5)
    assert normalize_score(0.0, threshold) == 0.0
    assert normalize_score(2 * threshold, threshold) == pytest.approx(1.0)
    assert normalize_score(10 * threshold, threshold) == 1.0
    assert normalize_score(-threshold, threshold) == 0.0


def test_normalize_score_is_monotone_and_bounded() -> None:
    threshold = 2.5
    scores = np.linspace(-1.0, 8.0, 301)
    values = [normalize_score(float(s), threshold) for s in scores]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    below = [v for s, v in zip(scores, values, strict=True) if 0 < s < threshold]
    assert all(v < 0.5 for v in below)


def test_normalize_score_with_a_zero_threshold() -> None:
    assert normalize_score(0.0, 0.0) == 0.0
    assert normalize_score(1e-6, 0.0) == 1.0


# --- region_holdout_score ----------------------------------------------------------------


def _periodic_patches(h: int, w: int, dim: int, seed: int, noise: float = 0.01) -> np.ndarray:
    """Patch features of a period-2 texture: each patch has exact look-alikes 4 cells away."""
    rng = np.random.default_rng(seed)
    motifs = rng.standard_normal((2, 2, dim))
    rows, cols = np.divmod(np.arange(h * w), w)
    patches = motifs[rows % 2, cols % 2] + noise * rng.standard_normal((h * w, dim))
    return patches.astype(np.float32)


def test_region_holdout_is_larger_for_a_unique_blob() -> None:
    h, w, dim = 8, 8, 32
    texture = _periodic_patches(h, w, dim, seed=0)
    with_blob = texture.copy()
    with_blob[3 * w + 4] += 5.0  # one patch unlike any other
    plain = region_holdout_score(texture, (h, w))
    blob = region_holdout_score(with_blob, (h, w))
    assert plain > 0.0
    assert blob > 10 * plain


def test_region_holdout_on_real_features(
    detector: Detector,
    good_image: Callable[..., np.ndarray],
    defect_image: Callable[..., Any],
) -> None:
    # A 12 x 18 grid: at 8 x 8 the radius-2 window hides most of the image and the border
    # patches of a plain texture already look unique (the documented upper bias).
    config = DetectorConfig(resolution=96)
    image = good_image(0, 96, 144)
    extractor = detector.extractor(config, resize_plan(config, [image]))
    plain = extractor(image)
    blob = extractor(defect_image(0, 96, 144).image)
    assert plain.grid == (12, 18)
    plain_score = region_holdout_score(plain.patches, plain.grid)
    blob_score = region_holdout_score(blob.patches, blob.grid)
    assert plain_score > 0.0
    assert blob_score > 1.4 * plain_score


def test_region_holdout_excludes_the_neighbourhood() -> None:
    """A patch duplicated right next to itself (inside the window) is still unexplained."""
    h, w, dim = 8, 8, 16
    patches = _periodic_patches(h, w, dim, seed=1)
    patches[2 * w + 2] = patches[2 * w + 3] = 7.0  # a two-patch blob
    assert region_holdout_score(patches, (h, w)) > 10 * region_holdout_score(
        _periodic_patches(h, w, dim, seed=1), (h, w)
    )
    # With radius 0 only the patch itself is held out: its twin explains it.
    assert region_holdout_score(patches, (h, w), radius=0) < 1.0


def test_region_holdout_rejects_a_grid_too_small() -> None:
    patches = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="too small"):
        region_holdout_score(patches, (3, 3), radius=2)


# --- views of a part ----------------------------------------------------------------------


def test_views_of_few_parts_count_as_few_parts() -> None:
    """Twelve scores from three parts (four views each) are less evidence than twelve parts:
    the bound is wider, and never below the highest score."""
    scores = np.array([2.0, 2.2, 2.5, 2.1, 2.4, 2.3, 2.6, 2.0, 2.2, 2.5, 2.7, 2.1])
    as_parts = threshold_from_good(scores, 0.01)
    as_views = threshold_from_good(scores, 0.01, n_parts=3)
    assert as_views > as_parts >= scores.max()
    assert threshold_from_good(scores, 0.01, n_parts=12) == as_parts


def test_one_part_with_views_bounds_its_highest_score() -> None:
    z = NormalDist().inv_cdf(0.99)
    threshold = threshold_from_good(np.array([3.0, 4.0, 3.5]), 0.01, n_parts=1)
    assert threshold == pytest.approx(4.0 * (1 + z * ONE_SHOT_RELATIVE_SPREAD * math.sqrt(2)))


@pytest.mark.parametrize("n_parts", [0, 4])
def test_more_parts_than_scores_is_refused(n_parts: int) -> None:
    with pytest.raises(ValueError, match="cannot come from"):
        threshold_from_good(np.array([1.0, 2.0, 3.0]), 0.01, n_parts=n_parts)


def test_calibration_records_the_parts() -> None:
    cal = calibrate(np.array([1.0, 1.2, 1.1, 1.3]), 0.01, method="leave-one-out", n_parts=2)
    assert cal.n_parts == 2
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert calibrate(np.array([1.0, 1.2]), 0.01, method="leave-one-out").n_parts == 2


def test_calibration_states_the_prior_it_used() -> None:
    narrow = ScorePrior(log_spread=0.1, weight=4)
    cal = calibrate(np.array([1.0, 1.2]), 0.01, method="leave-one-out", prior=narrow)
    assert (cal.prior_log_spread, cal.prior_weight) == (0.1, 4)
    assert cal.threshold == threshold_from_good(np.array([1.0, 1.2]), 0.01, prior=narrow)
    # A calibration stored before the prior was recorded reads back without one.
    stored = {k: v for k, v in cal.to_dict().items() if not k.startswith("prior_")}
    assert Calibration.from_dict(stored).prior_log_spread is None
