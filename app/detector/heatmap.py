"""Heatmap overlays with a colour scale fixed by the model's threshold.

The same colour means the same score on every image of a variant: the scale runs from 0 to
twice the threshold (the threshold sits at the middle, yellow-orange), never per-image
min-max, so a good part stays calm and a defect stands out.
"""

from __future__ import annotations

import numpy as np

from app.detector.imaging import encode_png

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


def render_heatmap_png(image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> bytes:
    """PNG bytes of ``overlay``."""
    return encode_png(overlay(image, anomaly_map, threshold))
