"""Perturbed views of source images, and how a model's decisions hold up under them.

A perturbation benchmark asks: a model fitted on k good images, calibrated to a false-reject
rate, still accepts good parts and still catches defects when the camera sees them a little
differently (displaced, rotated, brighter, blurred, re-compressed)?

Views never invent content. Every view, the training images' included, is a ``Window`` of the
source image (by default its central 90 %), so a displaced or rotated window shows the part's
real surroundings, never padding, mirrored borders or black corners: a perturbation that would
need pixels from outside the source is refused with ``ValueError``, not filled in.

    source (H, W, 3) uint8 --window / rotation--> view (h, w, 3) uint8 --photometric--> view

``STANDARD_PERTURBATIONS`` names each variation for reports; each is a function
``(source, rng) -> view`` whose random part (offset, angle) is drawn per view from ``rng``, so
a seed reproduces every view. ``perturbation_report`` scores good and defect sources under
each and reports the false-reject rate, the recall at the model's threshold and image AUROC;
``mean_over_draws`` averages the reports of several fits (draws of the k training images).

Numpy and Pillow only (detector core).
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter

from app.detector import roc

DEFAULT_FRACTION = 0.9  # side of the central window, as a fraction of the source's side
DEFAULT_VIEWS_PER_IMAGE = 5

# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Window:
    """An axis-aligned window of a source image, in pixels: rows ``top : top + height``,
    columns ``left : left + width``."""

    top: int
    left: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"window must be at least 1 x 1 px, got {self.height} x {self.width}")

    @property
    def centre(self) -> tuple[float, float]:
        """``(x, y)`` of the window's centre in Pillow's continuous coordinates (pixel ``i``
        spans ``[i, i + 1]``)."""
        return (self.left + self.width / 2.0, self.top + self.height / 2.0)

    def fits(self, source_shape: tuple[int, ...]) -> bool:
        """Whether the window lies inside a source of shape ``(H, W, ...)``."""
        height, width = source_shape[0], source_shape[1]
        return (self.top >= 0 and self.left >= 0
                and self.top + self.height <= height and self.left + self.width <= width)

    def room(self, source_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """How far the window can move inside the source: ``(up, down, left, right)`` px."""
        height, width = source_shape[0], source_shape[1]
        return (self.top, height - self.top - self.height,
                self.left, width - self.left - self.width)

    def shifted(self, dy: int, dx: int, source_shape: tuple[int, ...]) -> Window:
        """This window displaced by ``dy`` rows and ``dx`` columns; ``ValueError`` when the
        result would leave a source of shape ``source_shape``."""
        moved = Window(self.top + int(dy), self.left + int(dx), self.height, self.width)
        if not moved.fits(source_shape):
            up, down, left, right = self.room(source_shape)
            raise ValueError(
                f"offset (dy={dy}, dx={dx}) moves the window out of the {source_shape[1]} x "
                f"{source_shape[0]} source; it can move up {up}, down {down}, left {left}, "
                f"right {right} px"
            )
        return moved

    def crop(self, source: np.ndarray) -> np.ndarray:
        """The window's pixels ``(height, width, C)`` (a contiguous copy); ``ValueError`` when
        the window does not lie inside ``source``."""
        if not self.fits(source.shape):
            raise ValueError(f"{self} does not lie inside a source of shape {source.shape}")
        return np.ascontiguousarray(
            source[self.top:self.top + self.height, self.left:self.left + self.width]
        )


def central_window(source_shape: tuple[int, ...], fraction: float = DEFAULT_FRACTION) -> Window:
    """The centred window whose sides are ``fraction`` of the source's ``(H, W, ...)`` sides."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"window fraction must be in (0, 1], got {fraction}")
    height, width = int(source_shape[0]), int(source_shape[1])
    h = max(1, round(fraction * height))
    w = max(1, round(fraction * width))
    return Window((height - h) // 2, (width - w) // 2, h, w)


def max_rotation_deg(window: Window, source_shape: tuple[int, ...]) -> float:
    """The largest angle (degrees, either sense) by which the source can be rotated about the
    window's centre with the window still showing only source pixels.

    The rotated window's corners, relative to its centre, are ``R(theta) (+-w/2, +-h/2)``;
    their horizontal reach is ``a cos t + b sin t = r cos(t - phi)`` and their vertical reach
    ``a sin t + b cos t = r sin(t + phi)``, with ``a = w/2``, ``b = h/2``, ``r = |(a, b)|``,
    ``phi = atan2(b, a)`` and ``t = |theta|``. Each must stay within the room from the centre
    to the source's nearer edge on that axis. The whole window boundary is kept inside (not
    only the outermost pixel centres), which is half a pixel conservative.
    """
    if not window.fits(source_shape):
        raise ValueError(f"{window} does not lie inside a source of shape {source_shape}")
    height, width = source_shape[0], source_shape[1]
    cx, cy = window.centre
    room_x, room_y = min(cx, width - cx), min(cy, height - cy)
    a, b = window.width / 2.0, window.height / 2.0
    r, phi = math.hypot(a, b), math.atan2(b, a)
    # Reach grows with t until t = phi (horizontal) or t = pi/2 - phi (vertical); up to a
    # quarter turn, the reach exceeds the room from the first angle where it equals it.
    limit_x = math.pi / 2 if room_x >= r else phi - math.acos(room_x / r)
    limit_y = math.pi / 2 if room_y >= r else (math.pi / 2 - phi) - math.acos(room_y / r)
    return max(0.0, math.degrees(min(limit_x, limit_y)))


def rotated_view(source: np.ndarray, window: Window, angle_deg: float) -> np.ndarray:
    """The window of ``source`` after rotating the source ``angle_deg`` degrees
    anticlockwise about the window's centre (bicubic), ``(height, width, 3)`` uint8.

    ``ValueError`` when the angle exceeds ``max_rotation_deg``: the window would then show
    content from outside the source.
    """
    limit = max_rotation_deg(window, source.shape)
    if abs(angle_deg) > limit:
        raise ValueError(
            f"rotation by {angle_deg} degrees needs content outside the source: a "
            f"{window.width} x {window.height} window of a {source.shape[1]} x "
            f"{source.shape[0]} source can turn at most {limit:.2f} degrees"
        )
    if angle_deg == 0:
        return window.crop(source)
    rotated = Image.fromarray(source).rotate(
        angle_deg, resample=Image.Resampling.BICUBIC, center=window.centre
    )
    return window.crop(np.asarray(rotated))


# --------------------------------------------------------------------------- photometric


def brightness(view: np.ndarray, factor: float) -> np.ndarray:
    """Every pixel times ``factor`` (a brighter or dimmer exposure), rounded and clipped."""
    if not factor > 0:
        raise ValueError(f"brightness factor must be positive, got {factor}")
    return _to_uint8(view.astype(np.float32) * np.float32(factor))


def contrast(view: np.ndarray, factor: float) -> np.ndarray:
    """Deviations from the view's mean times ``factor``, per channel (so every channel's mean
    stays where it was, up to rounding and clipping)."""
    if not factor > 0:
        raise ValueError(f"contrast factor must be positive, got {factor}")
    pixels = view.astype(np.float32)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    return _to_uint8(mean + np.float32(factor) * (pixels - mean))


def jpeg(view: np.ndarray, quality: int) -> np.ndarray:
    """The view after a JPEG encode at ``quality`` (Pillow's defaults otherwise, chroma
    subsampled 4:2:0 as most cameras write it) and a decode back to RGB."""
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(view).save(buffer, format="JPEG", quality=int(quality))
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.ascontiguousarray(np.asarray(decoded.convert("RGB"), dtype=np.uint8))


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` px (Pillow's ``GaussianBlur``, whose
    radius is the standard deviation)."""
    if not sigma >= 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return np.ascontiguousarray(image)
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=float(sigma)))
    return np.ascontiguousarray(np.asarray(blurred, dtype=np.uint8))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- perturbations

ViewFunction = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    """A named variation: ``make(source, rng) -> view``. ``random``: whether ``make`` draws
    from ``rng`` (only then do several views of one source differ)."""

    name: str
    description: str
    make: ViewFunction
    random: bool = False

    def views(self, source: np.ndarray, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        """``count`` views of ``source`` (one when the perturbation is not random: more would
        be identical copies)."""
        if count < 1:
            raise ValueError(f"views per image must be >= 1, got {count}")
        return [self.make(source, rng) for _ in range(count if self.random else 1)]


def training_view(source: np.ndarray, fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """What a model is fitted on: the central window of ``source``."""
    return central_window(source.shape, fraction).crop(source)


def shift(max_fraction: float, fraction: float = DEFAULT_FRACTION) -> ViewFunction:
    """The central window displaced by a whole-pixel offset drawn per view, uniformly in
    ``+- floor(max_fraction * side)`` of the window's height and width independently."""

    def make(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        window = central_window(source.shape, fraction)
        max_dy = math.floor(max_fraction * window.height)
        max_dx = math.floor(max_fraction * window.width)
        up, down, left, right = window.room(source.shape)
        if max_dy > min(up, down) or max_dx > min(left, right):
            raise ValueError(
                f"a shift of up to {max_fraction:.0%} (+-{max_dy} x +-{max_dx} px) leaves the "
                f"{source.shape[1]} x {source.shape[0]} source, whose {fraction:.0%} window has "
                f"{min(up, down)} x {min(left, right)} px of room: use a smaller window fraction"
            )
        dy = int(rng.integers(-max_dy, max_dy + 1))
        dx = int(rng.integers(-max_dx, max_dx + 1))
        return window.shifted(dy, dx, source.shape).crop(source)

    return make


# A rotation may shrink its window to this share of the requested fraction, no further.
MIN_ROTATION_WINDOW_SHARE = 0.8


def rotatable_window(source_shape: tuple[int, ...], max_deg: float,
                     fraction: float = DEFAULT_FRACTION) -> Window:
    """The central window of ``fraction`` of the source, or where that cannot turn by
    ``max_deg`` the largest central window that can: an elongated source (1130 x 460) has too
    little room across its short side for its 90 % window to turn 3 degrees (2.62 at most),
    while its 88.6 % window can. ``ValueError`` when even a window of
    ``MIN_ROTATION_WINDOW_SHARE`` of ``fraction`` cannot, rather than a view of something else.
    """
    window = central_window(source_shape, fraction)
    if max_rotation_deg(window, source_shape) >= max_deg:
        return window
    low, high = fraction * MIN_ROTATION_WINDOW_SHARE, fraction
    smallest = central_window(source_shape, low)
    limit = max_rotation_deg(smallest, source_shape)
    if limit < max_deg:
        raise ValueError(
            f"rotations of up to {max_deg} degrees need content outside the "
            f"{source_shape[1]} x {source_shape[0]} source (even its {low:.0%} window can "
            f"turn at most {limit:.2f} degrees)"
        )
    for _ in range(30):  # the largest fraction that turns far enough, to well under a pixel
        middle = (low + high) / 2
        if max_rotation_deg(central_window(source_shape, middle), source_shape) >= max_deg:
            low = middle
        else:
            high = middle
    return central_window(source_shape, low)


def rotation(max_deg: float, fraction: float = DEFAULT_FRACTION) -> ViewFunction:
    """The central window of the source (``rotatable_window``: smaller where the source is too
    elongated for it to turn by ``max_deg``) rotated by an angle drawn per view, uniformly in
    ``+- max_deg`` degrees."""

    def make(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        window = rotatable_window(source.shape, max_deg, fraction)
        return rotated_view(source, window, float(rng.uniform(-max_deg, max_deg)))

    return make


def on_central_window(
    change: Callable[[np.ndarray], np.ndarray], fraction: float = DEFAULT_FRACTION
) -> ViewFunction:
    """A photometric change applied to the central window."""

    def make(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return change(training_view(source, fraction))

    return make


def blurred_window(sigma: float, fraction: float = DEFAULT_FRACTION) -> ViewFunction:
    """The central window of the blurred source: blurring before cropping lets the window's
    border pixels mix with their real neighbours instead of replicated edge pixels."""

    def make(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return training_view(gaussian_blur(source, sigma), fraction)

    return make


def standard_perturbations(fraction: float = DEFAULT_FRACTION) -> tuple[Perturbation, ...]:
    """The benchmark's variations, in report order, for windows of ``fraction`` of the
    source (``none`` first: the reference every other row is read against)."""
    return (
        Perturbation("none", "the central window, unchanged",
                     on_central_window(lambda view: view, fraction)),
        Perturbation("shift_4pct", "window displaced by up to +-4 % of each side, per view",
                     shift(0.04, fraction), random=True),
        Perturbation("rotate_3deg", "source rotated by up to +-3 degrees about the window "
                     "centre, per view", rotation(3.0, fraction), random=True),
        Perturbation("brightness_0.8", "pixel values x0.8",
                     on_central_window(lambda view: brightness(view, 0.8), fraction)),
        Perturbation("brightness_1.2", "pixel values x1.2, clipped at 255",
                     on_central_window(lambda view: brightness(view, 1.2), fraction)),
        Perturbation("contrast_0.8", "deviations from the view's mean x0.8",
                     on_central_window(lambda view: contrast(view, 0.8), fraction)),
        Perturbation("jpeg_70", "JPEG re-encoded at quality 70",
                     on_central_window(lambda view: jpeg(view, 70), fraction)),
        Perturbation("blur_1px", "Gaussian blur, sigma 1 px", blurred_window(1.0, fraction)),
    )


STANDARD_PERTURBATIONS = standard_perturbations()


def perturbation_rng(seed: int, name: str, stream: int = 0) -> np.random.Generator:
    """The generator of one perturbation's draws: keyed by its name (so adding or reordering
    perturbations leaves the others' views unchanged) and a stream (0: good, 1: defects)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), stream])


def perturbed_views(
    sources: Sequence[np.ndarray],
    perturbation: Perturbation,
    *,
    views_per_image: int = DEFAULT_VIEWS_PER_IMAGE,
    seed: int = 0,
    stream: int = 0,
) -> list[np.ndarray]:
    """Views of every source in order (``views_per_image`` each for a random perturbation,
    one otherwise), drawn from ``perturbation_rng(seed, perturbation.name, stream)``."""
    return list(iter_perturbed_views(sources, perturbation, views_per_image=views_per_image,
                                     seed=seed, stream=stream))


def iter_perturbed_views(
    sources: Iterable[np.ndarray],
    perturbation: Perturbation,
    *,
    views_per_image: int = DEFAULT_VIEWS_PER_IMAGE,
    seed: int = 0,
    stream: int = 0,
) -> Iterator[np.ndarray]:
    """``perturbed_views`` one view at a time: the same views, and only one source's views in
    memory at once (``sources`` may itself load each image when it is reached)."""
    rng = perturbation_rng(seed, perturbation.name, stream)
    for source in sources:
        yield from perturbation.views(source, rng, views_per_image)


# --------------------------------------------------------------------------- report


class Scorer(Protocol):
    """Anything with ``score(image (H, W, 3) uint8) -> float``, e.g. ``CompiledModel``."""

    def score(self, image: np.ndarray) -> float: ...


@dataclass(frozen=True)
class PerturbationResult:
    """One perturbation's row of the report. Decisions are ``score > threshold``, as the
    service makes them. Rates are NaN where there is nothing to count (no defect views:
    recall; one class missing: AUROC)."""

    name: str
    n_good_views: int
    n_defect_views: int
    false_reject_rate: float  # good views scored above the threshold / good views
    recall: float  # defect views scored above the threshold / defect views
    auroc: float  # image AUROC, defect views against good views
    good_scores: np.ndarray  # (n_good_views,) float64, in view order
    defect_scores: np.ndarray  # (n_defect_views,) float64, in view order

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN -> None; the scores are left out)."""
        return {
            "name": self.name,
            "n_good_views": self.n_good_views,
            "n_defect_views": self.n_defect_views,
            "false_reject_rate": _or_none(self.false_reject_rate),
            "recall": _or_none(self.recall),
            "auroc": _or_none(self.auroc),
        }


def perturbation_report(
    scorer: Scorer | Callable[[np.ndarray], float],
    good: Sequence[np.ndarray],
    defects: Sequence[np.ndarray] = (),
    *,
    threshold: float | None = None,
    perturbations: Sequence[Perturbation] = STANDARD_PERTURBATIONS,
    views_per_image: int = DEFAULT_VIEWS_PER_IMAGE,
    seed: int = 0,
) -> list[PerturbationResult]:
    """Score good and defect source images ``(H, W, 3)`` uint8 under each perturbation.

    ``scorer``: a ``score(image) -> float`` callable or an object with such a ``score``
    method (``CompiledModel``, whose own ``threshold`` is used when ``threshold`` is None).
    Good and defect views are drawn from separate streams of ``seed``, so the good rows do
    not depend on which defects are given. One result per perturbation, in order.
    """
    score = getattr(scorer, "score", scorer)
    if not callable(score):
        raise TypeError(f"scorer must be callable or have a score method, got {type(scorer)}")
    if threshold is None:
        threshold = getattr(scorer, "threshold", None)
        if threshold is None:
            raise ValueError("threshold is needed when the scorer does not carry one")
    if views_per_image < 1:
        raise ValueError(f"views per image must be >= 1, got {views_per_image}")
    names = [p.name for p in perturbations]
    if len(set(names)) != len(names):
        raise ValueError(f"perturbation names must be unique, got {names}")
    if len(good) == 0:
        raise ValueError("need at least one good image")

    results = []
    for perturbation in perturbations:
        good_scores, defect_scores = (
            np.array([float(score(view)) for view in iter_perturbed_views(
                sources, perturbation, views_per_image=views_per_image, seed=seed,
                stream=stream)], dtype=np.float64)
            for stream, sources in ((0, good), (1, defects))
        )
        results.append(PerturbationResult(
            name=perturbation.name,
            n_good_views=len(good_scores),
            n_defect_views=len(defect_scores),
            false_reject_rate=_rate_above(good_scores, threshold),
            recall=_rate_above(defect_scores, threshold),
            auroc=_auroc(good_scores, defect_scores),
            good_scores=good_scores,
            defect_scores=defect_scores,
        ))
    return results


@dataclass(frozen=True)
class PerturbationSummary:
    """One perturbation over several draws (fits on different k-image draws, or different
    seeds): the mean and the spread (population standard deviation) of each rate."""

    name: str
    n_draws: int
    n_good_views: int  # summed over the draws
    n_defect_views: int
    false_reject_rate: float
    false_reject_rate_std: float
    recall: float
    recall_std: float
    auroc: float
    auroc_std: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""
        return {key: _or_none(value) if isinstance(value, float) else value
                for key, value in self.__dict__.items()}


def mean_over_draws(draws: Sequence[Sequence[PerturbationResult]]) -> list[PerturbationSummary]:
    """Average the reports of several draws, row by row (each draw must report the same
    perturbations in the same order). A rate undefined in any draw stays NaN."""
    if len(draws) == 0:
        raise ValueError("need at least one draw to average")
    names = [row.name for row in draws[0]]
    for i, draw in enumerate(draws):
        if [row.name for row in draw] != names:
            raise ValueError(f"draw {i} reports {[row.name for row in draw]}, draw 0 {names}")
    summaries = []
    for rows in zip(*draws, strict=True):
        frr, recall, auroc = (np.array([getattr(row, field) for row in rows], dtype=np.float64)
                              for field in ("false_reject_rate", "recall", "auroc"))
        summaries.append(PerturbationSummary(
            name=rows[0].name,
            n_draws=len(rows),
            n_good_views=sum(row.n_good_views for row in rows),
            n_defect_views=sum(row.n_defect_views for row in rows),
            false_reject_rate=float(frr.mean()), false_reject_rate_std=float(frr.std()),
            recall=float(recall.mean()), recall_std=float(recall.std()),
            auroc=float(auroc.mean()), auroc_std=float(auroc.std()),
        ))
    return summaries


def _rate_above(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores > threshold)) if len(scores) else math.nan


def _auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Image AUROC of defect views (``positives``) against good ones (``negatives``)."""
    scores = np.concatenate([negatives, positives]).astype(np.float64)
    labels = np.r_[np.zeros(len(negatives), dtype=bool), np.ones(len(positives), dtype=bool)]
    return roc.auroc(scores, labels)


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value
