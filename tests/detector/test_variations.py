"""Allowed-variation views (app/detector/variations.py), edge weighting, and how both enter a
fitted model: the bank, the calibration and the shipped graph."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest

from app.detector.backbones import get_backbone
from app.detector.config import DetectorConfig
from app.detector.engine import Detector, bank_from_model, edge_band, plan_from_model
from app.detector.graph import ResizePlan
from app.detector.memory import edge_weights, image_score
from app.detector.variations import (
    MIN_WINDOW_SIDE,
    SHIFT,
    VIEW_FRACTION,
    jpeg_copies,
    variation_views,
    variation_window,
)
from app.detector.views import max_rotation_deg

# --- the views ---------------------------------------------------------------------------


def test_windows_lie_inside_the_source_displaced_by_at_most_the_allowed_shift() -> None:
    rng = np.random.default_rng(0)
    shape = (460, 1130, 3)
    centres = []
    for _ in range(200):
        window = variation_window(shape, rng)
        assert window.fits(shape)
        assert (window.height, window.width) == (round(VIEW_FRACTION * 460),
                                                  round(VIEW_FRACTION * 1130))
        cx, cy = window.centre
        assert abs(cy - 230) <= SHIFT * 460 + 1 and abs(cx - 565) <= SHIFT * 1130 + 1
        centres.append((cx, cy))
    # The offsets really vary, in both directions on both axes.
    xs, ys = np.array(centres).T
    assert xs.min() < 565 - 20 < 565 + 20 < xs.max()
    assert ys.min() < 230 - 8 < 230 + 8 < ys.max()


def test_a_view_shows_only_source_pixels() -> None:
    """A bright frame around a dark source would show in a view padded, mirrored or turned
    past the source's reach; photometric changes alone cannot make a dark pixel white."""
    source = np.full((200, 240, 3), 40, dtype=np.uint8)
    for view in variation_views(source, 30, seed=1):
        assert view.shape == (round(VIEW_FRACTION * 200), round(VIEW_FRACTION * 240), 3)
        assert view.max() <= 40 * 1.2 + 12  # brightness x1.2 and JPEG ringing at most


def test_rotation_never_exceeds_what_the_window_can_turn() -> None:
    rng = np.random.default_rng(2)
    shape = (512, 512, 3)
    for _ in range(50):
        window = variation_window(shape, rng)
        assert max_rotation_deg(window, shape) > 0  # room to turn a little, everywhere


def test_views_are_reproducible_and_streams_differ() -> None:
    source = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    first = list(variation_views(source, 3, seed=5))
    again = list(variation_views(source, 3, seed=5))
    other = list(variation_views(source, 3, seed=5, stream=1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert list(variation_views(source, 0, seed=5)) == []
    with pytest.raises(ValueError):
        list(variation_views(source, -1, seed=5))


def test_a_source_too_small_to_displace_keeps_its_frame() -> None:
    side = int(MIN_WINDOW_SIDE / VIEW_FRACTION) - 1
    source = np.full((side, side, 3), 100, dtype=np.uint8)
    (view,) = variation_views(source, 1, seed=0)
    assert view.shape == source.shape


def test_views_not_displaced_keep_the_frame_and_only_change_levels() -> None:
    # A smooth gradient: JPEG and light move levels a little, never the content.
    ramp = np.linspace(40, 200, 128)
    source = np.stack([np.tile(ramp, (96, 1))] * 3, axis=-1).astype(np.uint8)
    views = list(variation_views(source, 6, seed=2, displaced=False))
    assert all(view.shape == source.shape for view in views)
    for view in views:
        # Brightness x0.8-1.2 and contrast x0.8-1 keep the ramp's order along every row.
        grey = view.astype(np.float64).mean(axis=(0, 2))
        assert np.corrcoef(grey, ramp)[0, 1] > 0.999
    assert any(not np.array_equal(view, source) for view in views)


# --- edge weights ------------------------------------------------------------------------


def test_edge_weights_mark_the_band_next_to_every_edge() -> None:
    weights = edge_weights((5, 6), band=2, weight=0.5).reshape(5, 6)
    expected = np.full((5, 6), 0.5, dtype=np.float32)
    expected[2, 2:4] = 1.0  # the only cells two or more from every edge
    np.testing.assert_array_equal(weights, expected)
    np.testing.assert_array_equal(edge_weights((3, 3), band=0, weight=0.0), np.ones(9))


@pytest.mark.parametrize(("backbone", "border", "finest", "coarsest"), [
    ("efficientnet_lite0", 1, 3, 4),  # two margin cells of the stride-8 grid, then 1 or 2
    ("efficientnet_lite2", 1, 3, 4),
    ("efficientnet_lite2", 2, 5, 6),
    ("efficientnet_lite2", 0, 0, 0),  # no margin, no band
    ("vit_small_l8", 1, 1, 1),  # one layer and no neighbourhood: the margin's own cell
])
def test_the_edge_band_is_the_margins_reach(
    backbone: str, border: int, finest: int, coarsest: int,
) -> None:
    spec = get_backbone(backbone)
    plan = ResizePlan("square", 224, 4.0, border=border)
    assert (edge_band(spec, plan, "finest"), edge_band(spec, plan, "coarsest")) == \
        (finest, coarsest)


# --- in a fitted model -------------------------------------------------------------------


def _onnx_score(onnx_bytes: bytes, image: np.ndarray) -> float:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    score, _ = session.run(["score", "anomaly_map"], {"image": image})
    return float(score[0])


@pytest.mark.parametrize("edge_weight", [0.0, 0.5, 1.0])
def test_the_graph_weighs_edge_patches_as_the_engine_does(
    detector: Detector, train_images: list[np.ndarray],
    good_image: Callable[..., np.ndarray], edge_weight: float,
) -> None:
    config = DetectorConfig(resolution=64, edge_weight=edge_weight, edge_reach="finest")
    model = detector.fit(train_images, config)
    image = good_image(31, 80, 112)
    engine = detector.patch_scores(image, bank_from_model(model.onnx_bytes), config,
                                   plan_from_model(model.onnx_bytes))
    h, w = engine.grid
    grid = engine.patches.reshape(h, w)
    # The finest layer's reach (fast's): the margin's 16 px cover two cells of the stride-8
    # grid, and its 3 x 3 patch neighbourhood carries them one cell further.
    plain = detector.patch_scores(image, bank_from_model(model.onnx_bytes),
                                  DetectorConfig(resolution=64, edge_weight=1.0),
                                  plan_from_model(model.onnx_bytes)).patches.reshape(h, w)
    np.testing.assert_allclose(grid[3:-3, 3:-3], plain[3:-3, 3:-3])
    np.testing.assert_allclose(grid[:3], edge_weight * plain[:3], rtol=1e-6)
    np.testing.assert_allclose(grid[:, -3:], edge_weight * plain[:, -3:], rtol=1e-6)
    onnx_score = _onnx_score(model.onnx_bytes, image)
    assert onnx_score == pytest.approx(image_score(engine.patches, 0.0), rel=1e-4)


def test_the_margins_reach_counts_the_coarse_layers_neighbourhood(
    detector: Detector, train_images: list[np.ndarray], good_image: Callable[..., np.ndarray],
) -> None:
    """Lite2's margin: two cells of its stride-8 grid, and the 3 x 3 neighbourhood of its
    stride-16 layer carries it two more (the default reach)."""
    config = DetectorConfig(resolution=96)
    assert config.edge_reach == "coarsest"
    model = detector.fit(train_images, config)
    image = good_image(31, 80, 112)
    bank, plan = bank_from_model(model.onnx_bytes), plan_from_model(model.onnx_bytes)
    engine = detector.patch_scores(image, bank, config, plan)
    h, w = engine.grid
    grid = engine.patches.reshape(h, w)
    plain = detector.patch_scores(image, bank, DetectorConfig(resolution=96, edge_weight=1.0),
                                  plan).patches.reshape(h, w)
    assert min(h, w) > 8  # an inner part outside the band
    np.testing.assert_allclose(grid[4:-4, 4:-4], plain[4:-4, 4:-4])
    np.testing.assert_allclose(grid[:4], 0.5 * plain[:4], rtol=1e-6)
    np.testing.assert_allclose(grid[:, -4:], 0.5 * plain[:, -4:], rtol=1e-6)
    props = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"]) \
        .get_modelmeta().custom_metadata_map
    outputs = json.loads(props["nominal.preprocessing"])["outputs"]
    assert "fewer than 4 cells from an edge" in outputs
    onnx_score = _onnx_score(model.onnx_bytes, image)
    assert onnx_score == pytest.approx(image_score(engine.patches, 0.0), rel=1e-4)


def test_jpeg_copies_are_reencoded_reproducibly() -> None:
    source = np.random.default_rng(4).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    first = list(jpeg_copies(source, 3, seed=1))
    assert all(copy.shape == source.shape and not np.array_equal(copy, source)
               for copy in first)
    again = list(jpeg_copies(source, 3, seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert list(jpeg_copies(source, 0, seed=1)) == []


def test_relit_jpeg_copies_move_the_light_within_range_reproducibly() -> None:
    source = np.full((48, 64, 3), 100, dtype=np.uint8)
    plain = list(jpeg_copies(source, 4, seed=2))
    relit = list(jpeg_copies(source, 4, seed=2, light=0.2))
    assert [int(np.median(c)) for c in plain] == [100] * 4  # light 0: as photographed
    levels = [float(np.median(c)) for c in relit]
    assert all(79 <= level <= 121 for level in levels) and len(set(levels)) > 1
    again = list(jpeg_copies(source, 4, seed=2, light=0.2))
    assert all(np.array_equal(a, b) for a, b in zip(relit, again, strict=True))
    with pytest.raises(ValueError, match="light"):
        list(jpeg_copies(source, 1, seed=2, light=1.0))


def test_relit_copies_leave_the_bank_size_and_the_threshold_rule_alone(
    detector: Detector, train_images: list[np.ndarray],
) -> None:
    plain = detector.fit(train_images,
                         DetectorConfig(resolution=64, jpeg_views=1, jpeg_copy_light=0.0))
    relit = detector.fit(train_images,
                         DetectorConfig(resolution=64, jpeg_views=1, jpeg_copy_light=0.2))
    assert relit.bank_size == plain.bank_size  # the copies change, not their number
    assert not np.array_equal(bank_from_model(relit.onnx_bytes),
                              bank_from_model(plain.onnx_bytes))
    assert relit.config.jpeg_copy_light == 0.2
    assert relit.calibration.n_parts == plain.calibration.n_parts


def test_jpeg_copies_fill_the_bank_only(
    detector: Detector, train_images: list[np.ndarray],
) -> None:
    plain = detector.fit(train_images, DetectorConfig(resolution=64, jpeg_views=0))
    copied = detector.fit(train_images, DetectorConfig(resolution=64, jpeg_views=1))
    assert copied.bank_size == 2 * plain.bank_size  # every patch is kept at this size
    # Not judged: the calibration holds out the photos alone (each without its own copy).
    assert copied.calibration.n_parts == 3 and len(copied.calibration.good_scores) == 3
    assert copied.quality.n_good == plain.quality.n_good
    # A held-out photo's own copy leaves the bank with it (it would match almost exactly).
    assert min(copied.calibration.good_scores) > 0.5 * min(plain.calibration.good_scores)


def test_variation_views_fill_the_bank_and_calibrate_leave_one_out(
    detector: Detector, train_images: list[np.ndarray],
) -> None:
    plain = detector.fit(train_images, DetectorConfig(resolution=64))
    varied = detector.fit(train_images, DetectorConfig(resolution=64, variation_views=2))
    assert varied.bank_size > plain.bank_size  # every patch is kept at this size
    # Each held-out image is judged on its photo and its two views: 3 parts, 9 scores.
    assert varied.calibration.method == "leave-one-out"
    assert varied.calibration.n_parts == 3 and len(varied.calibration.good_scores) == 9
    assert plain.calibration.n_parts == 3 and len(plain.calibration.good_scores) == 3
    assert max(varied.calibration.good_scores) <= varied.threshold


def test_one_image_is_calibrated_on_its_held_out_views(
    detector: Detector, train_images: list[np.ndarray],
) -> None:
    model = detector.fit(train_images[:1], DetectorConfig(resolution=64, variation_views=2))
    calibration = model.calibration
    assert calibration.method == "region-holdout+views"
    assert calibration.n_parts == 1 and len(calibration.good_scores) == 1 + 8
    # None of the image's own allowed variations is rejected.
    assert max(calibration.good_scores) <= model.threshold


def test_threshold_views_only_calibrate(
    detector: Detector, train_images: list[np.ndarray],
    good_image: Callable[..., np.ndarray],
) -> None:
    plain = detector.fit(train_images, DetectorConfig(resolution=64))
    held = detector.fit(train_images, DetectorConfig(resolution=64, threshold_views=2))
    # The same bank, so the same score for any image; only the threshold sees the views.
    np.testing.assert_array_equal(bank_from_model(held.onnx_bytes),
                                  bank_from_model(plain.onnx_bytes))
    image = good_image(31, 80, 112)
    assert _onnx_score(held.onnx_bytes, image) == _onnx_score(plain.onnx_bytes, image)
    assert held.calibration.n_parts == 3 and len(held.calibration.good_scores) == 9
    assert set(plain.calibration.good_scores) <= set(held.calibration.good_scores)
    assert max(held.calibration.good_scores) <= held.threshold
    # The report compares its synthetic defects with the photos' scores, as without views.
    assert held.quality.expected_image_auroc == plain.quality.expected_image_auroc
    assert held.quality.n_good == plain.quality.n_good == 3


def test_bank_views_are_the_same_with_threshold_views_added(
    detector: Detector, train_images: list[np.ndarray],
) -> None:
    banked = detector.fit(train_images, DetectorConfig(resolution=64, variation_views=1))
    both = detector.fit(train_images,
                        DetectorConfig(resolution=64, variation_views=1, threshold_views=1))
    np.testing.assert_array_equal(bank_from_model(both.onnx_bytes),
                                  bank_from_model(banked.onnx_bytes))
    assert len(both.calibration.good_scores) == 9 and len(banked.calibration.good_scores) == 6


def test_one_image_with_threshold_views_is_calibrated_on_fresh_views(
    detector: Detector, train_images: list[np.ndarray],
) -> None:
    model = detector.fit(train_images[:1], DetectorConfig(resolution=64, threshold_views=2))
    assert model.calibration.method == "region-holdout+views"
    assert len(model.calibration.good_scores) == 1 + 8
