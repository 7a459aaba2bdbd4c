"""Parts placed at any angle: turned views, and the decision from the photos themselves."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from app.detector.config import DetectorConfig
from app.detector.engine import ONE_ANGLE_WARNING, Detector, augment
from app.detector.orientation import (
    DIRECTED_COHERENCE,
    direction_spread,
    dominant_direction,
    placed_at_varying_angles,
    turn,
)
from app.detector.runtime import METADATA_PREFIX

SIDE = 64


def _bar(degrees: float, seed: int = 0, side: int = SIDE) -> np.ndarray:
    """A dark bar (40 x 10 px) on a noisy grey tray, its long side at ``degrees``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) - (side - 1) / 2
    theta = math.radians(degrees)
    along = xx * math.cos(theta) - yy * math.sin(theta)  # image y points down
    across = xx * math.sin(theta) + yy * math.cos(theta)
    grey = np.where((np.abs(along) < 20) & (np.abs(across) < 5), 40.0, 170.0)
    grey = grey + rng.normal(0.0, 4.0, grey.shape)
    return np.clip(np.repeat(grey[..., None], 3, axis=2), 0, 255).astype(np.uint8)


def _direction(image: np.ndarray) -> float:
    return math.degrees(dominant_direction(image)[0])


def _degrees_apart(a: float, b: float) -> float:
    """Distance of two directions modulo 180 degrees."""
    d = (a - b) % 180
    return min(d, 180 - d)


def test_a_quarter_turn_of_an_image_and_of_a_grid_is_rot90() -> None:
    image = np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    assert np.array_equal(turn(image, 90), np.rot90(image))
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 1:3] = True
    assert np.array_equal(turn(mask, 90), np.rot90(mask))
    assert turn(image, 360) is image


def test_turns_keep_shape_and_type_and_fill_the_corners_from_the_image() -> None:
    image = _bar(0)
    turned = turn(image, 45)
    assert turned.shape == image.shape and turned.dtype == np.uint8
    # The corners come from the tray, mirrored: no black wedges.
    assert turned[0, 0].min() > 120 and turned[-1, -1].min() > 120
    # The bar now lies along the diagonal: the centre stays dark.
    assert turned[SIDE // 2, SIDE // 2].max() < 80


def test_turns_are_the_photo_and_seven_turns_without_mirrors() -> None:
    image = _bar(10)
    views = augment(image, "turns")
    assert len(views) == 8 and np.array_equal(views[0], image)
    # View n lies as the bar drawn n x 45 degrees on (counter-clockwise) does.
    for n, view in enumerate(views):
        assert _degrees_apart(_direction(view), _direction(_bar(10 + 45 * n))) < 6, n


def test_an_elongated_part_has_a_direction_and_a_flat_image_none() -> None:
    angle, coherence = dominant_direction(_bar(30))
    # Gradients cross the bar: the tensor's direction is the bar's normal, 90 - 30 degrees
    # in image coordinates (y down).
    assert _degrees_apart(math.degrees(angle), 60) < 5
    assert coherence > 0.3
    assert dominant_direction(np.full((32, 32, 3), 90, dtype=np.uint8)) == (0.0, 0.0)


def _disc(seed: int, side: int = SIDE) -> np.ndarray:
    """A round dark part on a noisy tray: no direction of its own."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) - (side - 1) / 2
    grey = np.where(np.hypot(xx, yy) < side / 3, 60.0, 170.0) + rng.normal(0.0, 4.0, (side, side))
    return np.clip(np.repeat(grey[..., None], 3, axis=2), 0, 255).astype(np.uint8)


def test_varying_angles_are_told_from_one_angle() -> None:
    any_angle = [_bar(a, seed=i) for i, a in enumerate((0, 50, 100, 140, 20, 75))]
    one_angle = [_bar(30 + i, seed=i) for i in range(6)]
    assert placed_at_varying_angles(any_angle)
    assert not placed_at_varying_angles(one_angle)
    gap = direction_spread(one_angle)
    assert gap is not None and gap < 10
    # One photo shows one angle: nothing to compare, never turned.
    assert direction_spread(any_angle[:1]) is None
    assert not placed_at_varying_angles(any_angle[:1])


@pytest.mark.parametrize(("angles", "turns"), [((0, 50), True), ((10, 30), False),
                                                ((5, 10, 15, 80), True), ((0, 20, 40), False),
                                                ((-10, 10), False)])
def test_two_photos_more_than_a_turn_step_apart_are_enough(
    angles: tuple[int, ...], turns: bool
) -> None:
    """A handful of photos decides: below ten the spread of all of them counts, not their
    mean direction; directions are lines (-10 and 10 degrees lie 20 apart, either side of
    the wrap)."""
    assert placed_at_varying_angles([_bar(a, seed=i) for i, a in enumerate(angles)]) is turns


def test_one_photo_in_ten_read_across_does_not_turn_a_part_placed_one_way() -> None:
    one_way = [_bar(30 + i % 3, seed=i) for i in range(18)]
    across = [_bar(120, seed=20), _bar(115, seed=21)]
    assert placed_at_varying_angles([*one_way[:8], across[0]])  # nine photos: none left out
    assert not placed_at_varying_angles([*one_way[:9], across[0]])  # one in ten left out
    assert placed_at_varying_angles([*one_way[:9], *across])  # two among eleven: one too many
    assert placed_at_varying_angles([*one_way[:17], *across])  # two among nineteen (1.9)
    assert not placed_at_varying_angles([*one_way, *across])  # two among twenty
    spread = direction_spread([*one_way[:9], across[0]])
    assert spread is not None and spread < 10


def test_photos_without_a_direction_never_turn_the_part() -> None:
    discs = [_disc(seed) for seed in range(6)]
    assert max(dominant_direction(d)[1] for d in discs) < DIRECTED_COHERENCE
    assert direction_spread(discs) is None
    assert not placed_at_varying_angles(discs)
    # One directed photo among them has nothing to be compared with.
    assert not placed_at_varying_angles([*discs, _bar(70)])


@pytest.mark.parametrize(("angles", "used", "views"),
                         [((0, 60, 120, 30), "turns", 8), ((30, 31, 29, 30), "none", 1)])
def test_augment_auto_turns_only_parts_at_varying_angles(
    detector: Detector, angles: tuple[int, ...], used: str, views: int
) -> None:
    """The model records what auto chose, in its configuration and in the ONNX file."""
    images = [_bar(a, seed=i) for i, a in enumerate(angles)]
    fitted = detector.fit(images, DetectorConfig(resolution=64, augment="auto", jpeg_views=0))
    assert fitted.config.augment == used
    assert fitted.bank_size == views * len(images) * 64  # below 2048 patches all are kept
    metadata = {p.key: p.value for p in onnx.load_from_string(fitted.onnx_bytes).metadata_props}
    assert json.loads(metadata[METADATA_PREFIX + "config"])["augment"] == used


@pytest.mark.parametrize(("photos", "warned"), [
    ([_bar(30)], True),  # one angle seen, nothing to compare it with
    ([_disc(0)], False),  # no direction: turning it changes nothing
    ([_bar(30), _bar(32, seed=1)], False),  # two photos: auto decided
])
def test_one_photo_of_a_part_with_a_direction_says_auto_cannot_tell(
    detector: Detector, photos: list[np.ndarray], warned: bool
) -> None:
    fitted = detector.fit(photos, DetectorConfig(resolution=64, augment="auto", jpeg_views=0))
    assert (ONE_ANGLE_WARNING in fitted.quality.warnings) is warned
    metadata = {p.key: p.value for p in onnx.load_from_string(fitted.onnx_bytes).metadata_props}
    assert (ONE_ANGLE_WARNING in metadata[METADATA_PREFIX + "quality"]) is warned


def test_a_part_turned_on_purpose_is_not_warned_about(detector: Detector) -> None:
    fitted = detector.fit([_bar(30)], DetectorConfig(resolution=64, augment="turns",
                                                     jpeg_views=0))
    assert ONE_ANGLE_WARNING not in fitted.quality.warnings
