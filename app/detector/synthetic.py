"""Synthetic defects: local changes of the kinds real defects make, pasted into good images.

Defective parts are rare, so a new model usually has none to be tried on. These stand in
for them: each is a good image with one local change and the mask of exactly the pixels it
changed, so a model's separation of defects it never saw can be estimated from good images
alone. The kinds follow what the literature pastes and what lines see:

- ``cutpaste``: a patch cut from elsewhere in the same or another good image, its light
  jittered, pasted in an irregular shape (CutPaste, Li et al., CVPR 2021);
- ``noise``: a noise texture blended in an irregular shape drawn from thresholded smooth
  noise (the Perlin-noise masks of DRAEM, Zavrtanik et al., ICCV 2021);
- ``scratch``: a thin curved line in the part's own darker or brighter tone;
- ``blob``: an irregular stain in that tone, with a soft edge;
- ``missing``: a region filled from its surroundings, its structure gone (missing material).

A defect's size is its extent in pixels of the image (the longer side of its shape's box),
from a few pixels up to a tenth of the image's shorter side by default (``defect_sizes``).
Everything is drawn from a seeded ``numpy`` generator: the same seed gives the same defects.
Numpy and ``scipy.ndimage`` only (detector core).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy import ndimage

DefectKind = Literal["cutpaste", "noise", "scratch", "blob", "missing"]
KINDS: tuple[DefectKind, ...] = get_args(DefectKind)

SMALLEST_PX = 4  # smallest extent drawn by defect_sizes
LARGEST_FRACTION = 0.1  # largest extent, as a fraction of the image's shorter side
ATTEMPTS = 8  # placements tried before a defect that changes too little is given up


@dataclass(frozen=True)
class SyntheticDefect:
    """A good image with one synthetic defect, and the pixels that defect changed."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool: exactly the pixels that differ from the good image
    kind: DefectKind
    size_px: int  # extent asked for: the longer side of the shape's bounding box at most


def defect_sizes(shape: tuple[int, ...], n: int, rng: np.random.Generator, *,
                 smallest: int = SMALLEST_PX,
                 largest_fraction: float = LARGEST_FRACTION) -> list[int]:
    """``n`` extents in pixels, log-uniform between ``smallest`` and ``largest_fraction`` of
    the shorter side of an image of ``shape`` (so small defects are as common as large)."""
    largest = max(smallest, int(largest_fraction * min(shape[:2])))
    logs = rng.uniform(math.log(smallest), math.log(largest + 1), size=n)
    return [int(min(largest, max(smallest, math.floor(math.exp(v))))) for v in logs]


def synthesize(image: np.ndarray, kind: DefectKind, size_px: int, rng: np.random.Generator,
               *, donor: np.ndarray | None = None, strength: float = 1.0,
               within: np.ndarray | None = None) -> SyntheticDefect | None:
    """``image`` (``(H, W, 3)`` uint8) with one defect of ``kind`` about ``size_px`` across at a
    random place; ``donor``: where ``cutpaste`` cuts from (default: ``image`` itself);
    ``strength`` in (0, 1]: the share of the change applied (0.5: half the contrast);
    ``within``: ``(H, W)`` bool, where the defect's centre may fall (the area a model judges).
    None when no placement in ``ATTEMPTS`` changes at least a quarter of the shape (a stain in
    the image's own colour on a flat image, say), or ``within`` is empty."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    height, width = image.shape[:2]
    size = int(max(2, min(size_px, height, width)))
    centres = None if within is None else np.argwhere(within)
    if centres is not None and len(centres) == 0:
        return None
    for _ in range(ATTEMPTS):
        if centres is None:
            top = int(rng.integers(0, height - size + 1))
            left = int(rng.integers(0, width - size + 1))
        else:
            cy, cx = centres[int(rng.integers(0, len(centres)))]
            top = int(np.clip(cy - size // 2, 0, height - size))
            left = int(np.clip(cx - size // 2, 0, width - size))
        window = (slice(top, top + size), slice(left, left + size))
        shape = _scratch(size, rng) if kind == "scratch" else _irregular_shape(size, rng)
        patch = image[window].astype(np.float32)
        changed = _DRAW[kind](patch, shape, rng, image if donor is None else donor)
        changed = patch + strength * (changed - patch)
        new = np.where(shape[..., None], np.clip(np.rint(changed), 0, 255),
                       patch).astype(np.uint8)
        local = np.any(new != image[window], axis=2)  # compared in the window only
        if local.sum() >= max(1, shape.sum() // 4):
            out = image.copy()
            out[window] = new
            mask = np.zeros((height, width), bool)
            mask[window] = local
            return SyntheticDefect(image=out, mask=mask, kind=kind, size_px=size)
    return None


def synthetic_defects(images: Sequence[np.ndarray], per_image: int, seed: int, *,
                      kinds: Sequence[DefectKind] = KINDS,
                      sizes: Sequence[int] | None = None) -> list[SyntheticDefect]:
    """``per_image`` defects in each of ``images``, kinds taken in turn and sizes from
    ``defect_sizes`` (or ``sizes``, in turn); ``cutpaste`` cuts from the next image. Defects
    that could not be made (``synthesize`` gave None) are left out."""
    rng = np.random.default_rng(seed)
    made: list[SyntheticDefect] = []
    turn = 0
    for i, image in enumerate(images):
        drawn = list(sizes) if sizes is not None else defect_sizes(image.shape, per_image, rng)
        donor = images[(i + 1) % len(images)]
        for j in range(per_image):
            kind = kinds[turn % len(kinds)]
            turn += 1
            defect = synthesize(image, kind, drawn[j % len(drawn)], rng, donor=donor)
            if defect is not None:
                made.append(defect)
    return made


# ---------------------------------------------------------------------------- shapes


def smooth_noise(height: int, width: int, cells: float, rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise in about [-1, 1], ``cells`` lattice cells across the shorter
    side: smooth blobs of about ``min(height, width) / cells`` pixels."""
    step = max(min(height, width) / max(cells, 1e-6), 1.0)
    gh, gw = int(height / step) + 2, int(width / step) + 2
    angles = rng.uniform(0, 2 * math.pi, size=(gh, gw))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.arange(height) / step
    x = np.arange(width) / step
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[(y0 + dy)[:, None], (x0 + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return (top * (1 - uy) + bottom * uy) * math.sqrt(2)


def _irregular_shape(size: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular filled shape in a ``size x size`` box: a turned ellipse whose outline is
    pushed in and out by smooth noise (never empty)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = (size - 1) / 2
    angle = rng.uniform(0, math.pi)
    a = size / 2
    b = a * rng.uniform(0.35, 1.0)
    u = (xx - centre) * math.cos(angle) + (yy - centre) * math.sin(angle)
    v = -(xx - centre) * math.sin(angle) + (yy - centre) * math.cos(angle)
    radius = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    wobble = 0.35 * smooth_noise(size, size, 3.0, rng)
    shape = radius + wobble < 0.9
    if not shape.any():
        shape[size // 2, size // 2] = True
    return shape


def _scratch(size: int, rng: np.random.Generator) -> np.ndarray:
    """A thin, slightly curved line about ``size`` long in a ``size x size`` box."""
    width = max(1.0, size / 24)
    angle = rng.uniform(0, math.pi)
    bend = rng.uniform(-0.4, 0.4)
    t = np.linspace(-0.5, 0.5, max(2, 2 * size))
    centre = (size - 1) / 2
    length = size - 1 - width
    ys = centre + length * (t * math.sin(angle) + bend * (t * t - 0.25) * math.cos(angle))
    xs = centre + length * (t * math.cos(angle) - bend * (t * t - 0.25) * math.sin(angle))
    yy, xx = np.mgrid[0:size, 0:size]
    shape = np.zeros((size, size), bool)
    for y, x in zip(ys, xs, strict=True):
        shape |= (yy - y) ** 2 + (xx - x) ** 2 <= (width / 2) ** 2 + 0.25
    return shape


# ---------------------------------------------------------------------------- kinds
# Each gets the window's pixels (float32), the shape, the generator and the donor image, and
# returns the window's new pixels (only those under the shape are used).


def _tone(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The part's own darker or brighter tone, whichever lies farther from this window (so a
    mark always shows): a low or high percentile of the window's colours."""
    flat = patch.reshape(-1, 3)
    luminance = flat.mean(axis=1)
    dark = flat[luminance <= np.percentile(luminance, 5)].mean(axis=0) * rng.uniform(0.3, 0.7)
    bright = flat[luminance >= np.percentile(luminance, 95)].mean(axis=0)
    bright = bright + (255 - bright) * rng.uniform(0.4, 0.8)
    mean = flat.mean(axis=0)
    far_dark = float(np.abs(mean - dark).sum()) >= float(np.abs(mean - bright).sum())
    pick_dark = far_dark if rng.random() < 0.75 else not far_dark
    return (dark if pick_dark else bright).astype(np.float32)


def _cutpaste(patch: np.ndarray, shape: np.ndarray, rng: np.random.Generator,
              donor: np.ndarray) -> np.ndarray:
    size = shape.shape[0]
    dh, dw = donor.shape[:2]
    size = min(size, dh, dw)
    top = int(rng.integers(0, dh - size + 1))
    left = int(rng.integers(0, dw - size + 1))
    cut = donor[top:top + size, left:left + size].astype(np.float32)
    if rng.random() < 0.5:
        cut = cut[:, ::-1]
    out = patch.copy()
    out[:size, :size] = cut * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20, size=3)
    return out


def _noise(patch: np.ndarray, shape: np.ndarray, rng: np.random.Generator,
           donor: np.ndarray) -> np.ndarray:
    size = shape.shape[0]
    texture = smooth_noise(size, size, rng.uniform(2.0, 6.0), rng)[..., None]
    colour = rng.uniform(0, 255, size=3)
    texture = np.clip(colour + 110 * texture * rng.uniform(0.5, 1.5, size=3), 0, 255)
    opacity = rng.uniform(0.5, 1.0)
    return (1 - opacity) * patch + opacity * texture


def _scratch_mark(patch: np.ndarray, shape: np.ndarray, rng: np.random.Generator,
                  donor: np.ndarray) -> np.ndarray:
    return np.broadcast_to(_tone(patch, rng), patch.shape).copy()


def _blob(patch: np.ndarray, shape: np.ndarray, rng: np.random.Generator,
          donor: np.ndarray) -> np.ndarray:
    # Soft edge: full strength inside, fading over the outer ring of the shape.
    inside = _distance_inside(shape)
    alpha = np.clip(inside / max(1.0, shape.shape[0] / 6), 0.35, 1.0)[..., None]
    return (1 - alpha) * patch + alpha * _tone(patch, rng)


def _missing(patch: np.ndarray, shape: np.ndarray, rng: np.random.Generator,
             donor: np.ndarray) -> np.ndarray:
    # Filled from its surroundings: a wide average of the pixels around the shape (normalised
    # convolution), so the region keeps the part's colour and loses its structure.
    keep = (~shape).astype(np.float32)
    if keep.sum() == 0:
        return np.broadcast_to(patch.reshape(-1, 3).mean(axis=0), patch.shape).copy()
    sigma = max(1.0, shape.shape[0] / 3)
    weight = _blur(keep, sigma)
    filled = np.stack([_blur(patch[..., c] * keep, sigma) for c in range(3)], axis=-1)
    return filled / np.maximum(weight, 1e-6)[..., None]


_DRAW = {"cutpaste": _cutpaste, "noise": _noise, "scratch": _scratch_mark, "blob": _blob,
         "missing": _missing}


def _distance_inside(shape: np.ndarray) -> np.ndarray:
    """Chessboard distance of each shape pixel to the nearest pixel outside (0 outside),
    counting the pixel itself (1 next to the outline)."""
    padded = np.pad(shape, 1, constant_values=False)
    distance = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
    return distance.astype(np.float32)


def _blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with edge replication."""
    return ndimage.gaussian_filter(values.astype(np.float32), sigma, mode="nearest")
