"""Perturbed views (app/detector/views.py) on generated images: geometry that never invents
content, photometric changes that do what they say, seeded draws, and the report on a toy
scorer and on a real tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from app.detector.config import DetectorConfig
from app.detector.engine import Detector
from app.detector.runtime import CompiledModel
from app.detector.views import (
    STANDARD_PERTURBATIONS,
    Perturbation,
    Window,
    _auroc,
    brightness,
    central_window,
    contrast,
    gaussian_blur,
    jpeg,
    max_rotation_deg,
    mean_over_draws,
    perturbation_report,
    perturbed_views,
    rotatable_window,
    rotated_view,
    rotation,
    shift,
    standard_perturbations,
    training_view,
)
from tests.detector.conftest import make_defect, make_good

BY_NAME = {p.name: p for p in STANDARD_PERTURBATIONS}


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random pixels: every window of it is unique, so a crop's position can be recovered."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _offset_of(view: np.ndarray, source: np.ndarray, window: Window, reach: int) -> tuple[int, int]:
    """The ``(dy, dx)`` within ``+-reach`` at which ``view`` is exactly a crop of ``source``."""
    found = [
        (dy, dx)
        for dy in range(-reach, reach + 1)
        for dx in range(-reach, reach + 1)
        if Window(window.top + dy, window.left + dx, window.height, window.width).fits(source.shape)
        and np.array_equal(view, Window(window.top + dy, window.left + dx, window.height,
                                        window.width).crop(source))
    ]
    assert len(found) == 1, f"view is not one crop of the source (matches: {found})"
    return found[0]


# --- geometry -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(96, 96, 3), (97, 131, 3), (40, 200, 3), (8, 8, 3)])
def test_central_window_is_centred_and_inside(shape: tuple[int, int, int]) -> None:
    window = central_window(shape, 0.9)
    assert window.fits(shape)
    assert (window.height, window.width) == (round(0.9 * shape[0]), round(0.9 * shape[1]))
    up, down, left, right = window.room(shape)
    assert abs(up - down) <= 1 and abs(left - right) <= 1
    assert central_window(shape, 1.0) == Window(0, 0, shape[0], shape[1])


def test_window_refuses_to_leave_the_source() -> None:
    source = _noise(50, 60)
    window = central_window(source.shape, 0.9)  # 45 x 54 at (2, 3): room 2/3 rows, 3/3 cols
    assert window.room(source.shape) == (2, 3, 3, 3)
    assert window.shifted(3, -3, source.shape).fits(source.shape)
    with pytest.raises(ValueError, match="out of the 60 x 50 source"):
        window.shifted(-3, 0, source.shape)
    with pytest.raises(ValueError, match="does not lie inside"):
        Window(0, 10, 50, 55).crop(source)
    with pytest.raises(ValueError, match="fraction"):
        central_window(source.shape, 0.0)


def test_shifted_view_is_an_exact_crop_with_bounded_per_image_offsets() -> None:
    source = _noise(100, 150)
    window = central_window(source.shape)  # 90 x 135
    max_dy, max_dx = math.floor(0.04 * 90), math.floor(0.04 * 135)  # 3, 5
    views = perturbed_views([source], BY_NAME["shift_4pct"], views_per_image=40, seed=3)
    offsets = [_offset_of(view, source, window, reach=8) for view in views]
    dys, dxs = zip(*offsets, strict=True)
    assert max(map(abs, dys)) <= max_dy and max(map(abs, dxs)) <= max_dx
    # Drawn per view, both senses, on each axis independently, reaching the bound.
    assert len(set(offsets)) > 10
    assert min(dys) == -max_dy and max(dys) == max_dy
    assert min(dxs) < 0 < max(dxs)


def test_shift_refuses_a_window_without_room() -> None:
    with pytest.raises(ValueError, match="smaller window fraction"):
        shift(0.04, fraction=0.96)(_noise(100, 100), np.random.default_rng(0))


def test_max_rotation_keeps_the_rotated_corners_inside() -> None:
    for shape in [(96, 96, 3), (90, 160, 3), (160, 90, 3)]:
        window = central_window(shape)
        limit = max_rotation_deg(window, shape)
        assert 3.0 < limit < 45.0
        cx, cy = window.centre
        for angle, inside in ((limit, True), (limit + 0.05, False)):
            t = math.radians(angle)
            corners = [
                (cx + x * math.cos(t) - y * math.sin(t), cy + x * math.sin(t) + y * math.cos(t))
                for x in (-window.width / 2, window.width / 2)
                for y in (-window.height / 2, window.height / 2)
            ]
            fits = all(-1e-9 <= x <= shape[1] + 1e-9 and -1e-9 <= y <= shape[0] + 1e-9
                       for x, y in corners)
            assert fits is inside, (shape, angle)
    # The whole source has no room to turn at all.
    assert max_rotation_deg(Window(0, 0, 50, 50), (50, 50, 3)) == 0.0


def test_rotated_view_never_shows_fill() -> None:
    # Pillow fills what lies outside the source with black: a constant grey source must give
    # a constant grey view at the largest angle allowed, in either sense.
    grey = np.full((96, 120, 3), 200, dtype=np.uint8)
    window = central_window(grey.shape)
    limit = max_rotation_deg(window, grey.shape)
    for angle in (limit, -limit):
        assert rotated_view(grey, window, angle).min() == 200
    with pytest.raises(ValueError, match="needs content outside the source"):
        rotated_view(grey, window, limit + 0.1)
    with pytest.raises(ValueError, match="outside"):
        rotation(40.0)(grey, np.random.default_rng(0))


def test_an_elongated_source_turns_in_the_largest_window_that_can() -> None:
    """bsdata's photos are 1130 x 460: their 90 % window can turn 2.62 degrees, not 3."""
    shape = (460, 1130, 3)
    assert max_rotation_deg(central_window(shape), shape) < 3.0
    window = rotatable_window(shape, 3.0)
    assert 3.0 <= max_rotation_deg(window, shape) < 3.05  # as large as it can be
    assert 0.88 * 460 <= window.height < 0.9 * 460
    grey = np.full(shape, 200, dtype=np.uint8)
    views = [rotation(3.0)(grey, np.random.default_rng(seed)) for seed in range(4)]
    assert all(v.shape == (window.height, window.width, 3) and v.min() == 200 for v in views)
    # Where the 90 % window can turn, it is the one used.
    assert rotatable_window((96, 96, 3), 3.0) == central_window((96, 96, 3))


def test_rotated_view_at_zero_is_the_central_window_and_turns_about_its_centre() -> None:
    source = make_good(0, 96, 96)
    window = central_window(source.shape)
    assert np.array_equal(rotated_view(source, window, 0.0), window.crop(source))
    turned = rotated_view(source, window, 3.0)
    assert turned.shape == (86, 86, 3) and not np.array_equal(turned, window.crop(source))
    # The same as rotating the whole source about the window's centre, then cropping.
    whole = Image.fromarray(source).rotate(3.0, resample=Image.Resampling.BICUBIC,
                                           center=window.centre)
    assert np.array_equal(turned, window.crop(np.asarray(whole)))
    # Anticlockwise: a bright dot right of the centre moves up.
    dot = np.zeros((96, 96, 3), dtype=np.uint8)
    dot[47:49, 77:79] = 255
    row, _ = np.unravel_index(np.argmax(rotated_view(dot, window, 5.0)[..., 0]), (86, 86))
    assert row + window.top < 47


# --- photometric --------------------------------------------------------------------------


def test_brightness_scales_the_mean_and_clips() -> None:
    view = np.random.default_rng(1).integers(50, 150, (40, 40, 3), dtype=np.uint8)
    for factor in (0.8, 1.2):
        out = brightness(view, factor)
        assert out.dtype == np.uint8 and out.shape == view.shape
        assert abs(out.mean() - factor * view.mean()) < 0.5
        assert np.abs(out.astype(float) - factor * view).max() <= 0.5 + 1e-6
    assert brightness(np.full((8, 8, 3), 250, np.uint8), 1.2).max() == 255
    with pytest.raises(ValueError, match="positive"):
        brightness(view, 0.0)


def test_contrast_keeps_each_channels_mean_and_scales_the_spread() -> None:
    view = make_good(2, 64, 64)
    out = contrast(view, 0.8)
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out.mean(axis=(0, 1)), view.mean(axis=(0, 1)), atol=0.5)
    np.testing.assert_allclose(out.std(axis=(0, 1)), 0.8 * view.std(axis=(0, 1)), rtol=0.02)


def test_jpeg_differs_but_stays_close() -> None:
    view = make_good(3, 64, 64)
    out = jpeg(view, 70)
    assert out.shape == view.shape and out.dtype == np.uint8
    error = np.abs(out.astype(float) - view)
    assert error.max() > 0
    assert error.mean() < 8.0
    assert abs(out.mean() - view.mean()) < 2.0
    assert np.array_equal(out, jpeg(view, 70))  # deterministic
    with pytest.raises(ValueError, match="quality"):
        jpeg(view, 0)


def test_blur_removes_high_frequencies_and_keeps_the_mean() -> None:
    image = _noise(64, 64).astype(np.uint8)

    def laplacian_energy(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
        return float(np.mean(lap ** 2))

    out = gaussian_blur(image, 1.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert laplacian_energy(out) < 0.1 * laplacian_energy(image)
    assert abs(out.mean() - image.mean()) < 1.0
    assert np.array_equal(gaussian_blur(image, 0.0), image)
    # The benchmark blurs the source, then crops: border pixels mix with real neighbours.
    view = BY_NAME["blur_1px"].make(image, np.random.default_rng(0))
    assert np.array_equal(view, training_view(gaussian_blur(image, 1.0)))


# --- perturbations and draws --------------------------------------------------------------


def test_standard_perturbations_are_named_windows() -> None:
    assert [p.name for p in STANDARD_PERTURBATIONS] == [
        "none", "shift_4pct", "rotate_3deg", "brightness_0.8", "brightness_1.2",
        "contrast_0.8", "jpeg_70", "blur_1px",
    ]
    assert {p.name for p in STANDARD_PERTURBATIONS if p.random} == {"shift_4pct", "rotate_3deg"}
    source = make_good(4, 80, 100)
    rng = np.random.default_rng(0)
    for perturbation in STANDARD_PERTURBATIONS:
        view = perturbation.make(source, rng)
        assert view.shape == (72, 90, 3) and view.dtype == np.uint8, perturbation.name
    assert np.array_equal(BY_NAME["none"].make(source, rng), training_view(source))
    assert standard_perturbations(0.8)[0].make(source, rng).shape == (64, 80, 3)


def test_seeds_reproduce_views_and_differ_between_seeds() -> None:
    sources = [make_good(s, 64, 64) for s in range(2)]
    for name in ("shift_4pct", "rotate_3deg"):
        first = perturbed_views(sources, BY_NAME[name], views_per_image=3, seed=7)
        again = perturbed_views(sources, BY_NAME[name], views_per_image=3, seed=7)
        other = perturbed_views(sources, BY_NAME[name], views_per_image=3, seed=8)
        defects = perturbed_views(sources, BY_NAME[name], views_per_image=3, seed=7, stream=1)
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
        assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
        assert any(not np.array_equal(a, b) for a, b in zip(first, defects, strict=True))
        # Several views of one image differ (offsets and angles are drawn per view).
        assert len({view.tobytes() for view in first[:3]}) > 1


def test_views_per_image() -> None:
    sources = [make_good(s, 48, 48) for s in range(3)]
    assert len(perturbed_views(sources, BY_NAME["rotate_3deg"], views_per_image=4)) == 12
    # A deterministic perturbation gives one view per image: more would be copies.
    assert len(perturbed_views(sources, BY_NAME["jpeg_70"], views_per_image=4)) == 3
    with pytest.raises(ValueError, match="views per image"):
        perturbed_views(sources, BY_NAME["shift_4pct"], views_per_image=0)


# --- report -------------------------------------------------------------------------------


def _flat(value: int) -> np.ndarray:
    return np.full((40, 40, 3), value, dtype=np.uint8)


def _mean_brightness(view: np.ndarray) -> float:
    return float(view.mean())


GOOD_VALUES = (100, 110, 120, 130, 155)
DEFECT_VALUES = (155, 160)


def test_report_on_a_toy_scorer() -> None:
    """score = mean brightness of the view, threshold 125, flat images: every number is known."""
    report = perturbation_report(
        _mean_brightness, [_flat(v) for v in GOOD_VALUES], [_flat(v) for v in DEFECT_VALUES],
        threshold=125.0, views_per_image=5, seed=0,
    )
    rows = {row.name: row for row in report}
    assert list(rows) == [p.name for p in STANDARD_PERTURBATIONS]
    # Flat images: position, rotation, contrast, JPEG and blur leave the mean where it is
    # (goods 130 and 155 are rejected).
    # AUROC: the defect at 155 ties the good 155 (half a pair), beats the other four.
    expected = {
        "none": (2 / 5, 1.0, 9.5 / 10),
        "shift_4pct": (2 / 5, 1.0, 9.5 / 10),
        "rotate_3deg": (2 / 5, 1.0, 9.5 / 10),
        # x0.8: goods 80, 88, 96, 104, 124 (all accepted), defects 124, 128.
        "brightness_0.8": (0.0, 0.5, 9.5 / 10),
        # x1.2: goods 120, 132, 144, 156, 186 (four rejected), defects 186, 192.
        "brightness_1.2": (4 / 5, 1.0, 9.5 / 10),
        "contrast_0.8": (2 / 5, 1.0, 9.5 / 10),
        "jpeg_70": (2 / 5, 1.0, 9.5 / 10),
        "blur_1px": (2 / 5, 1.0, 9.5 / 10),
    }
    for name, (frr, recall, auroc) in expected.items():
        row = rows[name]
        assert (row.false_reject_rate, row.recall, row.auroc) == pytest.approx(
            (frr, recall, auroc)), name
        views = 5 if name in ("shift_4pct", "rotate_3deg") else 1
        assert (row.n_good_views, row.n_defect_views) == (5 * views, 2 * views), name
        assert row.good_scores.shape == (row.n_good_views,)
    assert rows["brightness_0.8"].to_dict() == {
        "name": "brightness_0.8", "n_good_views": 5, "n_defect_views": 2,
        "false_reject_rate": 0.0, "recall": 0.5, "auroc": pytest.approx(0.95),
    }


def test_report_rows_do_not_depend_on_the_other_perturbations() -> None:
    good = [make_good(s, 48, 48) for s in range(2)]
    full = perturbation_report(_mean_brightness, good, threshold=130.0, views_per_image=3, seed=5)
    alone = perturbation_report(_mean_brightness, good, threshold=130.0, views_per_image=3,
                                seed=5, perturbations=[BY_NAME["rotate_3deg"]])
    assert np.array_equal(alone[0].good_scores, full[2].good_scores)
    # No defects: recall and AUROC are undefined, reported as None.
    assert full[0].to_dict()["recall"] is None and full[0].to_dict()["auroc"] is None


def test_report_validates_its_arguments() -> None:
    good = [_flat(100)]
    with pytest.raises(ValueError, match="threshold"):
        perturbation_report(_mean_brightness, good)
    with pytest.raises(ValueError, match="views per image"):
        perturbation_report(_mean_brightness, good, threshold=1.0, views_per_image=0)
    twice = [BY_NAME["none"], Perturbation("none", "again", BY_NAME["none"].make)]
    with pytest.raises(ValueError, match="unique"):
        perturbation_report(_mean_brightness, good, threshold=1.0, perturbations=twice)
    with pytest.raises(ValueError, match="good image"):
        perturbation_report(_mean_brightness, [], threshold=1.0)


def test_mean_over_draws() -> None:
    good, defects = [_flat(v) for v in GOOD_VALUES], [_flat(v) for v in DEFECT_VALUES]
    draws = [perturbation_report(_mean_brightness, good, defects, threshold=threshold,
                                 perturbations=STANDARD_PERTURBATIONS[:2], views_per_image=2)
             for threshold in (125.0, 140.0)]  # FRR 2/5 then 1/5; recall 1 both times
    none, shifted = mean_over_draws(draws)
    assert (none.name, none.n_draws, none.n_good_views, none.n_defect_views) == ("none", 2, 10, 4)
    assert (none.false_reject_rate, none.false_reject_rate_std) == pytest.approx((0.3, 0.1))
    assert (none.recall, none.recall_std, none.auroc) == pytest.approx((1.0, 0.0, 0.95))
    assert shifted.n_good_views == 20
    assert mean_over_draws(draws[:1])[0].to_dict()["false_reject_rate"] == pytest.approx(0.4)
    no_defects = perturbation_report(_mean_brightness, good, threshold=125.0,
                                     perturbations=STANDARD_PERTURBATIONS[:2])
    assert mean_over_draws([no_defects])[0].to_dict()["recall"] is None
    with pytest.raises(ValueError, match="reports"):
        mean_over_draws([draws[0], draws[0][::-1]])


def test_auroc_is_exact_mann_whitney() -> None:
    rng = np.random.default_rng(0)
    negatives = rng.integers(0, 10, 30).astype(float)  # many ties
    positives = rng.integers(3, 13, 20).astype(float)
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    assert _auroc(negatives, positives) == pytest.approx(float(np.mean(pairs)), abs=1e-12)
    assert _auroc(np.array([1.0]), np.array([2.0])) == 1.0
    assert _auroc(np.array([2.0]), np.array([1.0])) == 0.0
    assert math.isnan(_auroc(np.array([]), np.array([1.0])))


# --- a real model -------------------------------------------------------------------------


def test_report_of_a_fitted_model(detector: Detector) -> None:
    """Fitted on central windows of three good images, scored on held-out good and defect
    sources: one row per perturbation, counts and rates in range, defects found unperturbed."""
    train = [training_view(make_good(seed)) for seed in range(3)]
    fitted = detector.fit(train, DetectorConfig(resolution=64), seed=0)
    model = CompiledModel(fitted.onnx_bytes, detector.options)
    good = [make_good(seed) for seed in (10, 11)]
    defects = [make_defect(seed, radius=8).image for seed in (10, 11)]
    report = perturbation_report(model, good, defects, views_per_image=2, seed=0)
    assert [row.name for row in report] == [p.name for p in STANDARD_PERTURBATIONS]
    for row in report:
        views = 2 if row.name in ("shift_4pct", "rotate_3deg") else 1
        assert (row.n_good_views, row.n_defect_views) == (2 * views, 2 * views)
        assert 0.0 <= row.false_reject_rate <= 1.0 and 0.0 <= row.recall <= 1.0
        assert 0.0 <= row.auroc <= 1.0
        assert np.isfinite(row.good_scores).all() and np.isfinite(row.defect_scores).all()
    none = report[0]
    assert none.auroc == 1.0 and none.recall == 1.0
    # The model's own threshold was used: the rates are the scores' own comparisons.
    assert none.false_reject_rate == float(np.mean(none.good_scores > model.threshold))
