"""Heatmap overlays: one fixed colour scale per model (0 .. 2 x threshold), never per image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.detector.heatmap import colour_lut, overlay, render_heatmap_png, scale_position

THRESHOLD = 3.0


def _gray(height: int = 40, width: int = 60, value: int = 128) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def _textured(height: int = 40, width: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, size=(height, width, 3), dtype=np.uint8)


def test_a_score_gets_the_same_colour_whatever_the_rest_of_the_map() -> None:
    image = _textured()
    score = 0.8 * THRESHOLD
    calm = np.full(image.shape[:2], 0.1 * THRESHOLD, dtype=np.float32)
    hot = np.linspace(0.0, 5.0 * THRESHOLD, image.size // 3, dtype=np.float32).reshape(
        image.shape[:2]
    )
    for anomaly_map in (calm, hot):
        anomaly_map[10, 20] = score
    a = overlay(image, calm, THRESHOLD)
    b = overlay(image, hot, THRESHOLD)
    np.testing.assert_array_equal(a[10, 20], b[10, 20])
    # And it is the colour of that score, not of the map's own range.
    assert not np.array_equal(a[10, 20], a[0, 0])


def test_no_per_image_min_max_stretch() -> None:
    """A map entirely below the threshold must not use the top of the scale."""
    image = _gray()
    low = np.tile(
        np.linspace(0.0, 0.3 * THRESHOLD, image.shape[1], dtype=np.float32), (image.shape[0], 1)
    )
    high = low * 10.0  # same shape of map, ten times the scores
    out_low = overlay(image, low, THRESHOLD).astype(int)
    out_high = overlay(image, high, THRESHOLD).astype(int)
    # The hottest pixel of the low map is far from the hottest pixel of the high map.
    assert np.abs(out_low[0, -1] - out_high[0, -1]).sum() > 100
    # A min-max stretch would make them identical.
    assert not np.array_equal(out_low, out_high)


def test_far_below_threshold_leaves_the_image_nearly_unchanged() -> None:
    image = _textured()
    anomaly_map = np.full(image.shape[:2], 0.05 * THRESHOLD, dtype=np.float32)
    out = overlay(image, anomaly_map, THRESHOLD)
    diff = np.abs(out.astype(int) - image.astype(int)).mean()
    assert diff < 20  # a light tint (alpha 0.15) at most


def test_twice_the_threshold_is_strongly_red() -> None:
    image = _gray()
    anomaly_map = np.full(image.shape[:2], 2.0 * THRESHOLD, dtype=np.float32)
    out = overlay(image, anomaly_map, THRESHOLD).astype(int)
    diff = np.abs(out - image.astype(int)).mean()
    assert diff > 60
    r, g, b = out[..., 0].mean(), out[..., 1].mean(), out[..., 2].mean()
    assert r > 2 * g and r > 2 * b


def test_calm_map_changes_much_less_than_a_hot_one() -> None:
    image = _textured()
    calm = np.full(image.shape[:2], 0.1 * THRESHOLD, dtype=np.float32)
    hot = np.full(image.shape[:2], 1.8 * THRESHOLD, dtype=np.float32)
    d_calm = np.abs(overlay(image, calm, THRESHOLD).astype(int) - image).mean()
    d_hot = np.abs(overlay(image, hot, THRESHOLD).astype(int) - image).mean()
    assert d_hot > 3 * d_calm


def test_opacity_and_scale_position_are_monotone() -> None:
    image = _gray(value=255)  # white: the overlay can only darken it
    scores = np.linspace(0.0, 3.0 * THRESHOLD, 60, dtype=np.float32)
    anomaly_map = np.tile(scores, (8, 1))
    out = overlay(image[:8, :60], anomaly_map, THRESHOLD).astype(int)
    darkening = 255 * 3 - out[0].sum(axis=1)
    pos = scale_position(scores, THRESHOLD)
    assert pos[0] == 0.0 and pos[-1] == 1.0
    assert np.all(np.diff(pos) >= 0)
    assert scale_position(np.array([THRESHOLD]), THRESHOLD)[0] == pytest.approx(0.5)
    # Below the threshold the image shows through more than above it.
    assert darkening[scores < 0.3 * THRESHOLD].max() < darkening[scores > THRESHOLD].min()


def test_lut_runs_blue_to_red() -> None:
    lut = colour_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0, 2] > lut[0, 0]  # blue at 0
    assert lut[-1, 0] > lut[-1, 1] and lut[-1, 0] > lut[-1, 2]  # red at the top


@pytest.mark.parametrize(("height", "width"), [(40, 60), (33, 17)])
def test_png_decodes_to_the_image_size(height: int, width: int) -> None:
    image = _textured(height, width)
    anomaly_map = np.random.default_rng(1).random((height, width)).astype(np.float32)
    data = render_heatmap_png(image, anomaly_map * 2 * THRESHOLD, THRESHOLD)
    assert data.startswith(b"\x89PNG")
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == (width, height)
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(
        np.asarray(decoded), overlay(image, anomaly_map * 2 * THRESHOLD, THRESHOLD)
    )


def test_shape_mismatch_raises() -> None:
    image = _gray(40, 60)
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((60, 40), dtype=np.float32), THRESHOLD)
    with pytest.raises(ValueError):
        render_heatmap_png(image, np.zeros((40, 59), dtype=np.float32), THRESHOLD)


@pytest.mark.parametrize("threshold", [0.0, -1.0])
def test_non_positive_threshold_raises(threshold: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        overlay(_gray(), np.zeros((40, 60), dtype=np.float32), threshold)
