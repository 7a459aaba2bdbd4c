"""Parts placed at any angle: whether the training images show it, and turned views of them.

A part that lies at every angle on the line (a screw dropped on a tray) shows a handful of
angles in a handful of photos, and a patch memory of those angles calls every other angle
a defect. Turned copies of the training images fill the bank with the angles between. That
is only right where turning is an allowed variation, which the training images themselves
say: their dominant directions differ from photo to photo. A part that always lies the same
way keeps its photos as they are (a turned part is a defect there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

# augment turns: the photo and its turns by these angles (counter-clockwise, degrees)
TURN_ANGLES = tuple(range(45, 360, 45))
# A photo has a direction to compare from this structure-tensor coherence on: a round part or
# an even texture has none (MVTec bottle's photos 0.01-0.06; screws 0.16-0.46).
DIRECTED_COHERENCE = 0.1
# Photos with a direction spread over more than one turn step show the part at varying
# angles; a part placed the same way within +-22 degrees is never turned (candidate C19,
# BENCHMARKS.md "Presets").
VARYING_SPREAD_DEGREES = 45.0
# One photo in ten may have its direction misread (magnetic tile: 7 of its 698 crops with a
# direction read across the grain): the spread leaves that many out.
MISREAD_SHARE = 0.1
ORIENTATION_SIDE = 128  # photos are judged at this size (grey): the part's outline, not its grain


def turn(array: np.ndarray, degrees: float) -> np.ndarray:
    """``array`` turned counter-clockwise by ``degrees`` about its centre, on its first two
    axes, same shape: an image (bilinear, corners filled by mirroring) or a boolean grid
    (nearest), so that an image and its patch-grid masks turn alike."""
    if degrees % 360 == 0:
        return array
    if array.dtype == bool:
        turned = ndimage.rotate(array.astype(np.uint8), degrees, axes=(1, 0), reshape=False,
                                order=0, mode="nearest")
        return turned.astype(bool)
    turned = ndimage.rotate(array.astype(np.float32), degrees, axes=(1, 0), reshape=False,
                            order=1, mode="mirror")
    return np.clip(np.rint(turned), 0, 255).astype(array.dtype)


def dominant_direction(image: np.ndarray) -> tuple[float, float]:
    """(direction in radians modulo pi, coherence in [0, 1]) of the image's structure
    tensor summed over the whole image: an elongated part has a direction (coherence near
    1), a round part or an even texture has none (near 0)."""
    grey = Image.fromarray(np.ascontiguousarray(image)).convert("L")
    grey = grey.resize((ORIENTATION_SIDE, ORIENTATION_SIDE), Image.Resampling.BILINEAR)
    g = np.asarray(grey, dtype=np.float64) / 255.0
    gx, gy = ndimage.sobel(g, axis=1), ndimage.sobel(g, axis=0)
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    total = jxx + jyy
    if total <= 0.0:  # a flat image: no direction
        return 0.0, 0.0
    return 0.5 * math.atan2(2.0 * jxy, jxx - jyy), math.hypot(jxx - jyy, 2.0 * jxy) / total


def has_direction(image: np.ndarray) -> bool:
    """Whether the photo's part (or texture) has a direction to compare with other photos'."""
    return _direction_degrees(image) is not None


def direction_spread(images: Sequence[np.ndarray]) -> float | None:
    """The smallest arc, in degrees of direction (modulo 180), that holds the directions of
    all but one in ten (``MISREAD_SHARE``, rounded down) of the photos that have one
    (``has_direction``); None with fewer than two such photos (nothing to compare). Two
    photos: the angle between them."""
    directions = sorted(d % 180.0 for d in map(_direction_degrees, images) if d is not None)
    n = len(directions)
    if n < 2:
        return None
    held = n - int(MISREAD_SHARE * n)  # at least 2 for n >= 2
    # Each run of `held` neighbours around the circle, from directions[i] onwards.
    return min(directions[(i + held - 1) % n] + (180.0 if i + held - 1 >= n else 0.0)
               - directions[i] for i in range(n))


def _direction_degrees(image: np.ndarray) -> float | None:
    """The photo's dominant direction in degrees, None below ``DIRECTED_COHERENCE``."""
    angle, coherence = dominant_direction(image)
    return math.degrees(angle) if coherence >= DIRECTED_COHERENCE else None


def placed_at_varying_angles(images: Sequence[np.ndarray]) -> bool:
    """Whether the training images show the part at varying angles (``augment`` auto): the
    directions of the photos that have one spread over more than ``VARYING_SPREAD_DEGREES``,
    one in ten left out. Up to nine photos nothing is left out, so there one photo whose
    direction is misread turns a fixed part (magnetic tile: about one crop in a hundred)."""
    spread = direction_spread(images)
    return spread is not None and spread > VARYING_SPREAD_DEGREES
