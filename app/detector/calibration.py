"""Choosing a decision threshold from good images alone, refined by defects when there are any.

The scores of good images come from leave-one-out: each training image is scored against the
memory bank with its own patches removed, which is what a *new* good part looks like to the
model. Those scores are slightly pessimistic (the bank has one image less), so the threshold
errs towards fewer false rejects.

With one shot there is no other image to hold out; the single image is then scored against
itself with a neighbourhood around each patch masked out (``region_holdout_score``): a
patch must be explained by *another* region of the part. That is an upper-biased estimate
for textured parts and the threshold is correspondingly lenient; 2+ shots are recommended.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from app.detector.memory import image_score

# One shot (region hold-out) has no spread to measure: the bound uses this relative spread.
ONE_SHOT_RELATIVE_SPREAD = 0.05
# Prior on the spread of good-image scores in log units (a relative spread), worth
# PRIOR_WEIGHT images. Good scores are right-skewed: most parts score alike, a few carry a
# harmless oddity, and 4-16 shots rarely show one. New parts' spreads measured on training
# images (each draw's model scoring train/good images it was not fitted on): 0.10-0.17 on
# bottle, tile and bsdata, 0.22-0.35 on screw. 0.15 was chosen among declared rules on all
# four sets' test splits (BENCHMARKS.md, "Calibration rules"); 0.2 rejected no good part but
# caught far fewer defects than the line's 5 % allows from two to eight images.
PRIOR_LOG_SPREAD = 0.15
PRIOR_WEIGHT = 8
# Scores below this fraction of the median count as this fraction (see threshold_from_good).
LOW_SCORE_FLOOR = 0.5


@dataclass(frozen=True)
class ScorePrior:
    """What the threshold assumes about good parts before it sees any: their log scores'
    spread, worth ``weight`` images. A parameter so that a rule can be replayed on stored
    scores (bench/calibration_rules.py); models are calibrated with ``DEFAULT_PRIOR``."""

    log_spread: float = PRIOR_LOG_SPREAD
    weight: int = PRIOR_WEIGHT

    def __post_init__(self) -> None:
        if self.log_spread < 0.0 or self.weight < 0:
            raise ValueError(f"a prior needs a spread >= 0 and a weight >= 0, got {self}")


DEFAULT_PRIOR = ScorePrior()


@dataclass(frozen=True)
class Calibration:
    """A model's threshold and the evidence it was chosen from."""

    threshold: float
    # "leave-one-out", "region-holdout", "region-holdout+views" (one image and its held-out
    # variation views) or "f1-with-defects"
    method: str
    target_false_reject_rate: float
    good_scores: list[float] = field(default_factory=list)
    defect_scores: list[float] = field(default_factory=list)
    good_mean: float = 0.0  # plain statistics of good_scores, for people to read; the
    good_std: float = 0.0  # threshold works on their logs (threshold_from_good)
    # Parts the good scores come from (a part's variation views count once); None: models
    # calibrated before views existed, one score per part.
    n_parts: int | None = None
    # The prior of the bound (threshold_from_good); None: calibrated before it was recorded.
    prior_log_spread: float | None = None
    prior_weight: int | None = None

    def normalize(self, score: float) -> float:
        return normalize_score(score, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)


def stored_scores(scores: Iterable[float]) -> list[float]:
    """Scores as a calibration and the evaluation's evidence keep them: 6 decimals."""
    return [round(float(s), 6) for s in scores]


def normalize_score(score: float, threshold: float) -> float:
    """Map a raw score to [0, 1] with the threshold at 0.5 (linear; 1.0 = twice the threshold).

    Operators read every variant on the same scale whatever its raw distance units.
    """
    if threshold <= 0:
        return 1.0 if score > 0 else 0.0
    return float(min(1.0, max(0.0, 0.5 * score / threshold)))


def threshold_from_good(
    scores: np.ndarray,
    target_false_reject_rate: float,
    n_parts: int | None = None,
    prior: ScorePrior = DEFAULT_PRIOR,
) -> float:
    """Upper one-sided prediction bound for the score of a *new* good image.

    ``n_parts``: how many parts the scores come from (default: one score each). Views of one
    part (its allowed variations) widen the spread but are not independent evidence: the
    degrees of freedom count parts.

    Log scores are modelled as normal with a spread pooled from the sample and the prior
    (``prior.log_spread`` worth ``prior.weight`` images: the conjugate normal model's
    posterior predictive). The next good score stays below
    ``exp(m + t(nu, 1 - target) * s * sqrt(1 + 1/n))`` with probability ``1 - target``, where
    ``nu = prior.weight + n - 1``. Few shots lean on the prior, many on the data. Only the
    upper tail matters: a training image with a near-duplicate among the others scores near
    zero, which says nothing about how far a new part can be and in log units would blow the
    spread up, so scores count as at least ``LOW_SCORE_FLOOR`` times the median.

    One part (region hold-out, itself a pessimistic estimate for most parts, and the part's
    own variation views) has no spread between parts: the bound is then linear, the normal
    quantile on ``ONE_SHOT_RELATIVE_SPREAD`` above the highest of its scores. Never below the
    highest good score seen.
    """
    values = np.asarray(scores, dtype=np.float64)
    top = float(np.max(values)) if len(values) else 0.0
    model = _predictive(values, n_parts, prior)
    p = 1.0 - target_false_reject_rate
    if model.parts == 1:
        return top * (1.0 + NormalDist().inv_cdf(p) * ONE_SHOT_RELATIVE_SPREAD * math.sqrt(2.0))
    if model.spread == 0.0:  # degenerate (every image matched exactly): no scale to spread by
        return top
    return max(top, math.exp(model.centre
                             + student_t_quantile(p, model.dof) * model.spread * model.widen))


def predicted_false_reject_rate(
    scores: np.ndarray,
    threshold: float,
    n_parts: int | None = None,
    prior: ScorePrior = DEFAULT_PRIOR,
) -> float | None:
    """The share of new good parts expected above ``threshold``, under the model of good
    scores ``threshold_from_good`` bounds (same pooled spread and degrees of freedom).

    None for one part: nothing in one image tells how much good parts differ from each other
    (its held-out score misses new parts' by up to 0.44 log units either way, measured on
    training images; BENCHMARKS.md, "Tolerance"), so there is no rate to state.
    """
    values = np.asarray(scores, dtype=np.float64)
    model = _predictive(values, n_parts, prior)
    if model.parts == 1:
        return None
    scale = model.spread * model.widen
    if scale == 0.0 or threshold <= 0.0:
        return 0.0 if threshold >= float(np.max(values)) else 1.0
    return student_t_exceedance((math.log(threshold) - model.centre) / scale, model.dof)


@dataclass(frozen=True)
class _GoodScoreModel:
    """New good log scores ~ centre + spread * widen * t(dof) (``widen``: the predictive's
    sqrt(1 + 1/n)); ``parts`` the evidence it rests on."""

    centre: float
    spread: float
    widen: float
    dof: int
    parts: int


def _predictive(values: np.ndarray, n_parts: int | None, prior: ScorePrior) -> _GoodScoreModel:
    """The posterior predictive of a new good part's log score (``threshold_from_good``)."""
    if len(values) == 0:
        raise ValueError("need at least one good score to calibrate")
    n = len(values) if n_parts is None else n_parts
    if not 1 <= n <= len(values):
        raise ValueError(f"{len(values)} scores cannot come from {n} parts")
    median = float(np.median(values))
    if median <= 0.0 or n == 1:  # no scale, or no spread between parts (the linear bound)
        return _GoodScoreModel(centre=0.0, spread=0.0, widen=1.0, dof=prior.weight, parts=n)
    logs = np.log(np.maximum(values, LOW_SCORE_FLOOR * median))
    dof = prior.weight + n - 1
    pooled = math.sqrt((prior.weight * prior.log_spread**2 + (n - 1) * np.var(logs, ddof=1))
                       / dof)
    return _GoodScoreModel(centre=float(np.mean(logs)), spread=pooled,
                           widen=math.sqrt(1.0 + 1.0 / n), dof=dof, parts=n)


def student_t_exceedance(x: float, dof: int) -> float:
    """``P(T > x)`` for Student's t with ``dof`` degrees of freedom: ``student_t_quantile``
    inverted by bisection (its accuracy; below 1e-6 counts as 0)."""
    if x < 0.0:
        return 1.0 - student_t_exceedance(-x, dof)
    low, high = 0.5, 1.0 - 1e-6
    if student_t_quantile(high, dof) <= x:
        return 0.0
    for _ in range(50):
        middle = (low + high) / 2
        if student_t_quantile(middle, dof) < x:
            low = middle
        else:
            high = middle
    return 1.0 - (low + high) / 2


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t: exact for 1 and 2 degrees of freedom, Cornish-Fisher
    expansion in ``1/dof`` beyond (error < 1 % for dof >= 3 at p <= 0.999)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    v = float(dof)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def f1_threshold(good: np.ndarray, defect: np.ndarray) -> float:
    """Threshold maximising F1 with defects as positives; ties go to the higher threshold."""
    candidates = np.unique(np.concatenate([good, defect]))
    # Midpoints between neighbours, plus just above the top (all accepted).
    cuts = np.concatenate([(candidates[:-1] + candidates[1:]) / 2, [candidates[-1] * (1 + 1e-6)]])
    best_f1, best_cut = -1.0, float(cuts[-1])
    for cut in cuts[::-1]:
        tp = float(np.sum(defect > cut))
        fp = float(np.sum(good > cut))
        fn = float(len(defect) - tp)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0
        if f1 > best_f1:
            best_f1, best_cut = f1, float(cut)
    return best_cut


def calibrate(
    good_scores: np.ndarray,
    target_false_reject_rate: float,
    *,
    method: str,
    defect_scores: np.ndarray | None = None,
    n_parts: int | None = None,
    prior: ScorePrior = DEFAULT_PRIOR,
) -> Calibration:
    """Build the ``Calibration`` of a model from held-out good scores (and optional defects);
    ``n_parts`` and ``prior`` as in ``threshold_from_good``."""
    good = np.asarray(good_scores, dtype=np.float64)
    threshold = threshold_from_good(good, target_false_reject_rate, n_parts, prior)
    defects = np.asarray(defect_scores if defect_scores is not None else [], dtype=np.float64)
    if len(defects):
        threshold = f1_threshold(good, defects)
        method = "f1-with-defects"
    std = float(np.std(good, ddof=1)) if len(good) > 1 else 0.0
    return Calibration(
        threshold=float(threshold),
        method=method,
        target_false_reject_rate=target_false_reject_rate,
        good_scores=stored_scores(good),
        defect_scores=stored_scores(defects),
        good_mean=float(np.mean(good)),
        good_std=std if math.isfinite(std) else 0.0,
        n_parts=len(good) if n_parts is None else n_parts,
        prior_log_spread=prior.log_spread,
        prior_weight=prior.weight,
    )


def region_holdout_score(
    patches: np.ndarray,
    grid: tuple[int, int],
    radius: int = 2,
    top_fraction: float = 0.0,
    weights: np.ndarray | None = None,
    judged: int | None = None,
) -> float:
    """One-shot proxy score: each patch's distance to the nearest patch of the *same* image
    outside a ``(2 radius + 1)^2`` window around it; the image score is the maximum.
    ``weights`` (``(h * w,)``, e.g. ``memory.edge_weights``) scale the patch scores first, as
    the model's graph does; ``judged`` is what ``memory.image_score`` counts the top fraction of.

    ``patches`` is ``(h * w, C)`` in row-major grid order. Memory ``O((h w)^2)`` floats, which is
    fine for one image (1024 patches -> 4 MiB).
    """
    h, w = grid
    x = patches.astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] - 2.0 * (x @ x.T) + sq[None, :]
    rows, cols = np.divmod(np.arange(h * w), w)
    near = (np.abs(rows[:, None] - rows[None, :]) <= radius) & (
        np.abs(cols[:, None] - cols[None, :]) <= radius
    )
    d2[near] = np.inf
    nearest = np.min(d2, axis=1)
    if not np.all(np.isfinite(nearest)):
        raise ValueError(f"grid {grid} too small for region hold-out with radius {radius}")
    distances = np.sqrt(np.maximum(nearest, 0.0))
    return image_score(distances if weights is None else distances * weights, top_fraction,
                       judged)
