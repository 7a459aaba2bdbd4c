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
# Below this resultant length of the photos' doubled directions the part counts as placed
# at varying angles: no more aligned than two parts 60 degrees apart (|cos 120 deg| = 0.5).
ALIGNED_RESULTANT = 0.5
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


def direction_resultant(images: Sequence[np.ndarray]) -> float | None:
    """How aligned the photos' directions are: the length of the coherence-weighted mean of
    their doubled direction angles (1: every part lies the same way; near 0: any way).
    None with fewer than two photos or none with a direction (nothing to compare)."""
    if len(images) < 2:
        return None
    directions = [dominant_direction(image) for image in images]
    weight = sum(coherence for _, coherence in directions)
    if weight <= 0.0:
        return None
    mean = sum(coherence * complex(math.cos(2 * angle), math.sin(2 * angle))
               for angle, coherence in directions) / weight
    return abs(mean)


def placed_at_varying_angles(images: Sequence[np.ndarray]) -> bool:
    """Whether the training images show the part at varying angles (``augment`` auto)."""
    resultant = direction_resultant(images)
    return resultant is not None and resultant < ALIGNED_RESULTANT
