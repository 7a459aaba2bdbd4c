"""The allowed variations of a good part, drawn from a training image.

A line shows a good part a few pixels away from its usual place, turned a little, under
another light and through the camera's JPEG encoder. A memory bank fitted on the photos alone
has seen none of that, so a good part that lands 4 % off rejects (measured in BENCHMARKS.md,
"Baseline"). Fitting also on *variation views* of each training image puts those appearances
into the bank, and scoring held-out variation views tells the calibration how far they go.

A variation view never invents content: it is a window of the source image (``VIEW_FRACTION``
of each side, displaced by up to ``SHIFT`` of each side and turned by up to ``ROTATION_DEG``
about its centre, as far as the source's own pixels reach), then re-lit, its contrast lowered
and, for about half of the views, JPEG re-encoded. Under the default ``fixed_scale`` resize a
window keeps the source's pixel scale, so parts look as large as in the full photo.

Numpy and Pillow only (detector core).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from app.detector.views import (
    Window,
    brightness,
    contrast,
    jpeg,
    max_rotation_deg,
    rotated_view,
)

VIEW_FRACTION = 0.88  # window side / source side: room for the shift and the rotation
SHIFT = 0.04  # largest displacement of the window's centre, as a fraction of each side
ROTATION_DEG = 3.0
BRIGHTNESS = (0.8, 1.2)  # pixel values times a factor drawn uniformly in this range
CONTRAST = (0.8, 1.0)
JPEG_QUALITY = (60, 95)  # quality drawn uniformly, for JPEG_SHARE of the views
JPEG_SHARE = 0.5
MIN_WINDOW_SIDE = 32  # sources smaller than this (px, after VIEW_FRACTION) get no windows


def variation_window(source_shape: tuple[int, ...], rng: np.random.Generator) -> Window:
    """A window of ``VIEW_FRACTION`` of the source, its centre displaced uniformly by up to
    ``SHIFT`` of each side (never beyond the source)."""
    height, width = int(source_shape[0]), int(source_shape[1])
    h, w = max(1, round(VIEW_FRACTION * height)), max(1, round(VIEW_FRACTION * width))
    top0, left0 = (height - h) // 2, (width - w) // 2
    max_dy = min(round(SHIFT * height), top0, height - h - top0)
    max_dx = min(round(SHIFT * width), left0, width - w - left0)
    dy = int(rng.integers(-max_dy, max_dy + 1))
    dx = int(rng.integers(-max_dx, max_dx + 1))
    return Window(top0 + dy, left0 + dx, h, w)


def variation_view(source: np.ndarray, rng: np.random.Generator, *,
                   displaced: bool = True) -> np.ndarray:
    """One random allowed-variation view of ``source (H, W, 3)`` uint8 (see the module);
    without ``displaced``, the whole source, re-lit and re-encoded only."""
    if not displaced or min(source.shape[:2]) * VIEW_FRACTION < MIN_WINDOW_SIDE:
        view = np.ascontiguousarray(source)  # (or too small to displace): photometric only
    else:
        window = variation_window(source.shape, rng)
        limit = min(ROTATION_DEG, max_rotation_deg(window, source.shape))
        angle = float(rng.uniform(-limit, limit))
        view = rotated_view(source, window, angle)
    view = brightness(view, float(rng.uniform(*BRIGHTNESS)))
    view = contrast(view, float(rng.uniform(*CONTRAST)))
    if rng.random() < JPEG_SHARE:
        view = jpeg(view, _jpeg_quality(rng))
    return view


def _jpeg_quality(rng: np.random.Generator) -> int:
    """A JPEG quality drawn uniformly from ``JPEG_QUALITY`` (both ends included)."""
    return int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))


def jpeg_copies(source: np.ndarray, count: int, *, seed: int, stream: int = 0,
                light: float = 0.0) -> Iterator[np.ndarray]:
    """``count`` copies of ``source`` re-encoded as JPEG at qualities drawn uniformly from
    ``JPEG_QUALITY`` (as a camera or gateway may send a good part), reproducible from
    ``(seed, stream)`` and apart from the variation views' draws.

    ``light`` > 0 re-lights each copy first, its pixel values times a factor drawn uniformly
    from ``1 - light`` to ``1 + light``: a brighter light saturates highlights (oil, metal) into
    shapes no photo shows, and a copy that has seen them keeps them from looking like defects.
    """
    if count < 0:
        raise ValueError(f"copy count must be >= 0, got {count}")
    if not 0 <= light < 1:
        raise ValueError(f"copy light must be in [0, 1), got {light}")
    rng = np.random.default_rng([seed, stream, 1])
    for _ in range(count):
        quality = _jpeg_quality(rng)  # first, so light 0 draws what it always drew
        relit = brightness(source, float(rng.uniform(1 - light, 1 + light))) if light else source
        yield jpeg(relit, quality)


def variation_views(
    source: np.ndarray, count: int, *, seed: int, stream: int = 0, displaced: bool = True
) -> Iterator[np.ndarray]:
    """``count`` allowed-variation views of ``source``, reproducible from ``(seed, stream)``
    (``displaced``: as ``variation_view``).

    Streams keep independent sets apart: the views fitted into the bank (stream 0 and up, one
    per training image) and the views held out to calibrate a one-image model.
    """
    if count < 0:
        raise ValueError(f"view count must be >= 0, got {count}")
    rng = np.random.default_rng([seed, stream])
    for _ in range(count):
        yield variation_view(source, rng, displaced=displaced)
