"""Heatmap overlays with a colour scale fixed by the model's threshold.

The same colour means the same score on every image of a variant: the scale runs from 0 to
twice the threshold (the threshold sits at the middle, yellow-orange), never per-image
min-max, so a good part stays calm and a defect stands out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.detector.imaging import encode_png
from app.detector.regions import DefectRegion

# Colour stops of the scale, as (position in [0, 1], RGB): blue -> cyan -> green -> yellow
# -> red -> dark red. Position 0.5 is the threshold.
_STOPS = np.array([0.0, 0.25, 0.4, 0.5, 0.75, 1.0])
_COLOURS = np.array(
    [[20, 40, 160], [0, 170, 220], [40, 200, 90], [255, 210, 0], [240, 40, 20], [140, 0, 0]],
    dtype=np.float64,
)


def colour_lut(size: int = 256) -> np.ndarray:
    """The colour scale as a ``(size, 3)`` uint8 lookup table."""
    pos = np.linspace(0.0, 1.0, size)
    lut = np.stack([np.interp(pos, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=1)
    return lut.round().astype(np.uint8)


_LUT = colour_lut()


def scale_position(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """Scores ``(H, W)`` -> positions on the fixed scale, 0.5 at the threshold, clipped."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    return np.clip(anomaly_map / (2.0 * threshold), 0.0, 1.0)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """Blend the coloured map over the image ``(H, W, 3)`` uint8; returns the same shape.

    Opacity grows with the score: well below the threshold the part shows through nearly
    untouched, above it the colour dominates.
    """
    if image.shape[:2] != anomaly_map.shape:
        raise ValueError(f"map {anomaly_map.shape} does not match image {image.shape[:2]}")
    pos = scale_position(anomaly_map.astype(np.float32), threshold)
    colours = _LUT[(pos * 255).astype(np.uint8)].astype(np.float32)
    alpha = (0.15 + 0.6 * np.clip((pos - 0.2) / 0.3, 0.0, 1.0))[..., None]
    blended = image.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return blended.round().astype(np.uint8)


# Region outlines: white, framed by black, visible on any colour of the scale and any part.
_OUTLINE = np.array([255, 255, 255], dtype=np.uint8)
_FRAME = np.array([0, 0, 0], dtype=np.uint8)


def outline_regions(image: np.ndarray, regions: Sequence[DefectRegion]) -> np.ndarray:
    """A copy of ``image (H, W, 3)`` with each region's box drawn: a white line (about 1/250
    of the shorter side, at least 1 px) with a black edge on both sides of it."""
    out = image.copy()
    height, width = out.shape[:2]
    line = max(1, round(min(height, width) / 250))
    for colour, grow in ((_FRAME, line), (_OUTLINE, 0)):
        for r in regions:
            x0, y0 = max(0, r.x - grow), max(0, r.y - grow)
            x1 = min(width, r.x + r.width + grow)
            y1 = min(height, r.y + r.height + grow)
            thick = line + 2 * grow
            out[y0:y1, x0:min(x1, x0 + thick)] = colour
            out[y0:y1, max(x0, x1 - thick):x1] = colour
            out[y0:min(y1, y0 + thick), x0:x1] = colour
            out[max(y0, y1 - thick):y1, x0:x1] = colour
    return out


def render_heatmap_png(image: np.ndarray, anomaly_map: np.ndarray, threshold: float,
                       regions: Sequence[DefectRegion] = ()) -> bytes:
    """PNG bytes of ``overlay``, with the defect regions outlined."""
    return encode_png(outline_regions(overlay(image, anomaly_map, threshold), regions))
