"""How good a model is, estimated at training time from its good images alone.

Defective parts are rare, so a new model usually meets its first defect on the line. The
report estimates beforehand how well it separates defects it never saw: synthetic defects
(``synthetic``) pasted into training images are scored as unseen, each against the memory
bank without the patches of the image it was pasted into (the leave-one-out of the
calibration), and compared with the same held-out scores of the good images the threshold
was calibrated on. With one good image there is nothing to hold out: defects go into that
image's allowed-variation views (``variations``), scored against the whole bank.

What it says, and why it is an estimate: synthetic defects are not the line's defects, and
a handful of held-out images is a small sample. BENCHMARKS.md measures how well it ranks
models against the real test splits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from app.detector.calibration import predicted_false_reject_rate
from app.detector.memory import PatchFeatures
from app.detector.roc import auroc
from app.detector.synthetic import KINDS, SMALLEST_PX, DefectKind, SyntheticDefect, synthesize
from app.detector.variations import variation_views

REPORT_IMAGES = 5  # training images defects are pasted into (a seeded sample beyond this)
DEFECTS_PER_IMAGE = 3
ONE_SHOT_VIEWS = 6  # allowed-variation views that stand in for held-out images with one shot
SIZE_STEPS = 6  # defect sizes, log-spaced from SMALLEST_PX to a tenth of the shorter side
# The gate reads the image AUROC over defects from this fraction of the shorter side up (the
# sizes a line calls a defect: expected_image_auroc_large). The expected image AUROC counts
# every size: it ranks configurations against their real figures best of the declared
# profiles (BENCHMARKS.md, "Quality report").
GATE_FROM = 1 / 20
RECALL = 0.9  # "caught": this share of a size's synthetic defects above the threshold
UNEVEN_GOOD = 0.25  # relative spread of held-out good scores that says "add more images"
HIGH_FALSE_REJECTS = 0.05
# Defects pasted together keep this fraction of the shorter side clear of each other (besides
# their own extent), so one's halo of raised patch scores does not lift another's.
SPACING = 1 / 6



@dataclass(frozen=True)
class DefectProfile:
    """Which synthetic defects the report pastes, and which count in its image AUROC."""

    kinds: tuple[DefectKind, ...] = KINDS
    strength: float = 1.0  # share of each defect's change applied (synthetic.synthesize)
    auroc_from: float = 0.0  # smallest size counted, as a fraction of the shorter side
    # Defects pasted into one image at once, apart from each other (SPACING): above 1, each is
    # judged as the image it would make alone (judge_apart), so one extraction judges that
    # many defects.
    together: int = 1
    hosts: int = REPORT_IMAGES  # training images defects go into (a seeded sample beyond)
    passes: int = DEFECTS_PER_IMAGE  # extractions per host, ``together`` defects each

    def __post_init__(self) -> None:
        """``ValueError`` for a profile that would paste nothing or judge nonsense."""
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be a non-empty choice of {KINDS}, got {self.kinds}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not 0 <= self.auroc_from < 1:
            raise ValueError(f"auroc_from must be in [0, 1), got {self.auroc_from}")
        for name in ("together", "hosts", "passes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


DEFAULT_PROFILE = DefectProfile()

Extractor = Callable[[np.ndarray], PatchFeatures]
Scorer = Callable[[PatchFeatures, np.ndarray], np.ndarray]  # (features, bank) -> patch scores
ImageScore = Callable[[np.ndarray, PatchFeatures], float]  # (patch scores, features) -> score
JudgedCells = Callable[[PatchFeatures], "np.ndarray | None"]  # (h * w,) 1 where judged


@dataclass(frozen=True)
class QualityReport:
    """The report stored with every model (API ``quality``, ONNX ``nominal.quality``)."""

    expected_image_auroc: float | None  # synthetic defects vs held-out good images
    expected_image_auroc_large: float | None  # the same over defects from GATE_FROM up
    expected_pixel_auroc: float | None  # the patch scores against the defects' masks
    # New good parts expected above the threshold, by the calibration's own model of good
    # scores (None: one image, whose spread between parts is unknown; or a report from before
    # this estimate, whose only figure is the next one's).
    estimated_false_reject_rate: float | None
    smallest_caught_px: int | None  # the smallest size caught RECALL of the time (and larger)
    recall_by_size: dict[int, float]  # at the threshold, by defect size in px
    n_good: int  # held-out good scores compared
    n_defects: int
    warnings: tuple[str, ...]
    # With preset auto: which preset was kept, by what rule, and every candidate's figures.
    choice: dict[str, Any] | None = None
    # Held-out good images above the threshold once re-lit or re-encoded as a line may show
    # them (with one image, fresh views of it, also displaced and turned).
    variation_false_reject_rate: float | None = None

    def reaches(self, floor: float) -> bool:
        """Whether the expected image AUROC reaches ``floor`` (no estimate: no evidence
        against the model, so yes)."""
        figure = self.expected_image_auroc_large
        return figure is None or figure >= floor

    def with_floor(self, floor: float) -> QualityReport:
        """The report with a warning when it is below ``floor`` (the gate on activation)."""
        if self.reaches(floor):
            return self
        return self.warned(
            f"expected image AUROC on defects of 1/20 of the image and larger "
            f"{self.expected_image_auroc_large:.3f} is below this variant's "
            f"min_expected_auroc {floor:g}: training does not make it the active model, "
            "even when asked to; activate it explicitly to use it anyway")

    def relaid(self) -> QualityReport:
        """The report of a model given another layout than it was trained with: the figures
        are the old layout's, and say so."""
        return self.warned("computed with the layout this model was trained with, not its "
                           "current one: train a new model for a report of this layout")

    def warned(self, said: str) -> QualityReport:
        """The report with ``said`` among its warnings (once)."""
        return self if said in self.warnings else replace(self,
                                                           warnings=(*self.warnings, said))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recall_by_size"] = {str(k): v for k, v in self.recall_by_size.items()}
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityReport:
        data = {"expected_image_auroc_large": data.get("expected_image_auroc"), **data}
        if "variation_false_reject_rate" not in data:  # the first reports' only estimate
            data = {**data, "variation_false_reject_rate": data["estimated_false_reject_rate"],
                    "estimated_false_reject_rate": None}
        return cls(**{**data, "recall_by_size": {int(k): float(v) for k, v in
                                                 data["recall_by_size"].items()},
                      "warnings": tuple(data["warnings"])})


def size_ladder(side: float) -> list[int]:
    """The defect sizes the report pastes into images of shorter side ``side``:
    ``SIZE_STEPS`` log-spaced extents from ``SMALLEST_PX`` to a tenth of it (fewer when they
    coincide)."""
    largest = max(SMALLEST_PX, int(0.1 * side))
    return sorted({int(round(v)) for v in np.geomspace(SMALLEST_PX, largest, SIZE_STEPS)})


def quality_report(
    images: Sequence[np.ndarray],
    *,
    extractor: Extractor,
    patch_scores: Scorer,
    image_score: ImageScore,
    bank: np.ndarray,
    bank_owner: np.ndarray,
    good_scores: np.ndarray,
    threshold: float,
    seed: int,
    n_parts: int | None = None,
    target_false_reject_rate: float = 0.0,
    judged_cells: JudgedCells | None = None,
    profile: DefectProfile = DEFAULT_PROFILE,
    compared_good: np.ndarray | None = None,
) -> QualityReport:
    """The report of a model fitted on ``images`` (``bank_owner[j]``: the image bank row j
    came from), whose held-out ``good_scores`` (from ``n_parts`` parts, as in
    ``calibration.threshold_from_good``) set ``threshold`` for ``target_false_reject_rate``
    (no warning of false rejects at or under it). ``patch_scores`` and
    ``image_score`` are the model's own rules (edge weights, layout, top fraction);
    ``judged_cells``: the cells the model judges in an image (layout, background), where
    defects are pasted and pixels counted (None: every cell). ``compared_good``: the held-out
    good scores the defects are compared with and whose spread warns, where the threshold
    also held out views that change nothing else (default: ``good_scores``)."""
    rng = np.random.default_rng(seed + 7919)
    if len(images) == 1:
        views = list(variation_views(images[0], ONE_SHOT_VIEWS, seed=seed, stream=7919))
        hosts: list[tuple[np.ndarray, int | None]] = [(v, None) for v in views] or \
            [(images[0], None)]
        # The clean views, scored as the defective ones are, stand in for held-out images; drawn
        # apart from any the calibration held out, they also say how its threshold holds.
        good = np.array([image_score(patch_scores(feats, bank), feats)
                         for feats in (extractor(view) for view, _ in hosts)])
        line_views = good
    else:
        chosen = np.arange(len(images))
        if len(chosen) > profile.hosts:
            chosen = np.sort(rng.choice(len(images), profile.hosts, replace=False))
        held = [(images[int(i)], int(i)) for i in chosen]
        hosts = list(held)
        good = np.asarray(good_scores if compared_good is None else compared_good,
                          dtype=np.float64)
        # Each held-out photo re-lit and re-encoded (light, contrast, JPEG), as a line may
        # show a good part: how far the threshold holds beyond the photos it came from. Not
        # displaced: a window of a photo the bank learnt whole shows the part cut closer by
        # the frame than any photo did (a zoom, not a shift; bottle: 40 % of such windows above
        # the threshold, none of the parts really displaced in the tolerance benchmark).
        line_views = np.array([
            image_score(patch_scores(feats, _held_out_bank(bank, bank_owner, i)), feats)
            for image, i in held
            for feats in (extractor(view) for view in variation_views(
                image, 1, seed=seed, stream=7919 + i, displaced=False))])

    side = float(np.median([min(host.shape[:2]) for host, _ in hosts]))
    ladder = size_ladder(side)
    scores: list[float] = []
    sizes: list[int] = []
    pixel_values: list[np.ndarray] = []
    pixel_labels: list[np.ndarray] = []
    turn = step = 0
    for n, (host, owner) in enumerate(hosts):
        rows = bank if owner is None else _held_out_bank(bank, bank_owner, owner)
        donor = hosts[(n + 1) % len(hosts)][0]
        judged = None
        if judged_cells is not None:
            clean = extractor(host)
            cells = judged_cells(clean)
            judged = None if cells is None else _on_pixels(cells.reshape(clean.grid) > 0,
                                                           host.shape[:2])
        for _ in range(profile.passes):
            # One size per image (the ladder's next step): a large defect's halo of raised
            # patch scores would lift a small neighbour's.
            size = ladder[step % len(ladder)]
            step += 1
            kinds = [profile.kinds[(turn + i) % len(profile.kinds)]
                     for i in range(profile.together)]
            placed = paste_apart(host, kinds, size, rng, donor=donor,
                                 strength=profile.strength, within=judged,
                                 gap=size + int(SPACING * side))
            turn += min(profile.together, len(placed) + 1)  # the kinds tried
            if not placed:
                continue
            feats = extractor(placed[-1][0].image)
            cells_scores = patch_scores(feats, rows)
            grid_scores = cells_scores.reshape(feats.grid)
            scores.extend([image_score(cells_scores, feats)] if profile.together == 1 else
                          judge_apart(placed, cells_scores, feats, image_score))
            sizes.extend([size] * len(placed))  # the ladder's step (a small image may cut it)
            union = np.logical_or.reduce([defect.mask for defect, _ in placed])
            values, labels = _pixels(grid_scores, union, judged)
            pixel_values.append(values)
            pixel_labels.append(labels)

    defect_scores = np.asarray(scores, dtype=np.float64)

    def against_good(smallest: float) -> float | None:
        counted = defect_scores[np.asarray(sizes) >= smallest * side]
        return _auroc(np.concatenate([good, counted]),
                      np.concatenate([np.zeros(len(good)), np.ones(len(counted))]))

    image_auroc = against_good(profile.auroc_from)
    image_auroc_large = against_good(GATE_FROM)
    pixel_auroc = (_auroc(np.concatenate(pixel_values), np.concatenate(pixel_labels))
                   if pixel_values else None)
    false_rejects = predicted_false_reject_rate(good_scores, threshold, n_parts)
    # As reported (4 decimals), so that a threshold set for the target, which the estimate
    # gives back up to rounding (0.2000001 for 0.2), does not warn of exceeding it.
    false_rejects = None if false_rejects is None else round(false_rejects, 4)
    varied_rejects = (float(np.mean(line_views > threshold))
                      if line_views is not None and len(line_views) else None)
    recall = {s: float(np.mean(defect_scores[np.asarray(sizes) == s] > threshold))
              for s in sorted(set(sizes))}
    smallest = _smallest_caught(recall)
    return QualityReport(
        expected_image_auroc=image_auroc, expected_image_auroc_large=image_auroc_large,
        expected_pixel_auroc=pixel_auroc,
        estimated_false_reject_rate=false_rejects,
        smallest_caught_px=smallest,
        recall_by_size=recall, n_good=len(good), n_defects=len(defect_scores),
        warnings=tuple(_warnings(len(images), good, false_rejects, varied_rejects, recall,
                                 smallest, max(HIGH_FALSE_REJECTS, target_false_reject_rate))),
        variation_false_reject_rate=varied_rejects)


def _held_out_bank(bank: np.ndarray, owner: np.ndarray, image: int) -> np.ndarray:
    """The bank without image ``image``'s patches (the whole bank if it owns all of it)."""
    rows = bank[owner != image]
    return rows if len(rows) else bank


def _on_pixels(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A cell grid ``(h, w)`` spread over an image of ``shape`` (each pixel takes its cell)."""
    height, width = shape
    h, w = cells.shape
    rows = np.minimum(np.arange(height) * h // height, h - 1)
    cols = np.minimum(np.arange(width) * w // width, w - 1)
    return cells[np.ix_(rows, cols)]


Placed = list[tuple[SyntheticDefect, np.ndarray]]  # each defect with its grown box


def paste_apart(host: np.ndarray, kinds: Sequence[DefectKind], size: int,
                rng: np.random.Generator, *, donor: np.ndarray, strength: float,
                within: np.ndarray | None, gap: int) -> Placed:
    """Defects of ``kinds`` (one size) pasted one after another into ``host``, each outside
    the others' boxes grown by ``gap`` px; the last one's image holds them all. Fewer when
    there is no room left."""
    placed: Placed = []
    image, free = host, within
    for kind in kinds:
        defect = synthesize(image, kind, size, rng, donor=donor, strength=strength,
                            within=free)
        if defect is None:
            break
        placed.append((defect, ~_apart_from(defect.mask, None, gap)))
        image = defect.image
        free = _apart_from(defect.mask, free, gap)
    return placed


def judge_apart(placed: Placed, cells_scores: np.ndarray, feats: PatchFeatures,
                image_score: ImageScore) -> list[float]:
    """Each defect of ``placed`` judged as the image it would make alone: the model's own
    image score with the cells of the others' grown boxes at 0 (not its own cells)."""
    scores = []
    for i, (defect, _) in enumerate(placed):
        others = np.zeros(defect.mask.shape, bool)
        for j, (_, box) in enumerate(placed):
            if j != i:
                others |= box
        left_out = (_cells_touching(others, feats.grid)
                    & ~_cells_touching(defect.mask, feats.grid))
        alone = np.where(left_out, 0.0, cells_scores).astype(cells_scores.dtype)
        scores.append(image_score(alone, feats))
    return scores


def _apart_from(mask: np.ndarray, free: np.ndarray | None, gap: int) -> np.ndarray:
    """``free`` (None: everywhere) without the box around ``mask`` grown by ``gap`` pixels:
    where the next defect's centre may fall."""
    out = np.ones(mask.shape, bool) if free is None else free.copy()
    ys, xs = np.nonzero(mask)
    out[max(0, ys.min() - gap):ys.max() + gap + 1, max(0, xs.min() - gap):xs.max() + gap + 1] = \
        False
    return out


def _cells_touching(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(h * w,)`` bool: the cells of ``grid`` some pixel of ``mask`` falls in."""
    height, width = mask.shape
    h, w = grid
    ys, xs = np.nonzero(mask)
    cells = np.zeros((h, w), bool)
    cells[np.minimum(ys * h // height, h - 1), np.minimum(xs * w // width, w - 1)] = True
    return cells.ravel()


def _pixels(grid_scores: np.ndarray, mask: np.ndarray,
            judged: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each sampled pixel's patch score (the cell it falls in) and whether it is defective
    (``mask``); only judged pixels, on a stride that keeps about 128 samples along the
    shorter side."""
    height, width = mask.shape
    stride = max(1, min(height, width) // 128)
    values = _on_pixels(grid_scores, (height, width))[::stride, ::stride].ravel()
    labels = mask[::stride, ::stride].ravel()
    if judged is not None:
        keep = judged[::stride, ::stride].ravel()
        values, labels = values[keep], labels[keep]
    return values, labels


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    value = auroc(scores, labels.astype(bool))
    return None if math.isnan(value) else round(value, 4)


def _smallest_caught(recall: dict[int, float]) -> int | None:
    """The smallest size from which every larger size is caught ``RECALL`` of the time."""
    smallest = None
    for size in sorted(recall, reverse=True):
        if recall[size] < RECALL:
            break
        smallest = size
    return smallest


def _warnings(n_images: int, good: np.ndarray, false_rejects: float | None,
              varied_rejects: float | None, recall: dict[int, float],
              smallest: int | None, high: float) -> list[str]:
    said = []
    if n_images == 1:
        said.append("one good image: the threshold is uncertain; add good images of other "
                    "parts")
    elif len(good) >= 2 and float(np.std(good) / max(np.mean(good), 1e-12)) > UNEVEN_GOOD:
        said.append("the good images differ a lot from each other: add more good images")
    if false_rejects is not None and false_rejects > high:
        said.append(f"about {false_rejects:.0%} of good parts are expected above the "
                    "threshold: add more good images")
    if varied_rejects is not None and varied_rejects > high:
        said.append(f"{varied_rejects:.0%} of the held-out good images score above the "
                    "threshold once re-lit or re-encoded (JPEG): if the line varies so, add "
                    "good images that show it or set variation_views")
    if recall and smallest is None:
        said.append(f"synthetic defects up to {max(recall)} px are not caught 9 times in 10 "
                    "at the threshold")
    elif smallest is not None and smallest > min(recall):
        said.append(f"synthetic defects under {smallest} px are not caught 9 times in 10 at "
                    "the threshold")
    return said
