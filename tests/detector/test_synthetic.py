"""Synthetic defects on generated images: each changes only what its mask says, about the
size asked for, in its own way, and the same seed makes the same defects."""

from __future__ import annotations

import numpy as np
import pytest

from app.detector.synthetic import (
    KINDS,
    SMALLEST_PX,
    defect_sizes,
    smooth_noise,
    synthesize,
    synthetic_defects,
)
from tests.detector.conftest import make_good


def _box(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [4, 9, 24])
def test_a_defect_changes_exactly_its_mask_within_its_size(kind: str, size: int) -> None:
    good = make_good(0, 64, 80)
    defect = synthesize(good, kind, size, np.random.default_rng(size), donor=make_good(1, 64, 80))
    assert defect is not None and defect.kind == kind and defect.size_px == size
    assert defect.image.shape == good.shape and defect.image.dtype == np.uint8
    changed = np.any(defect.image != good, axis=2)
    assert defect.mask.any()
    np.testing.assert_array_equal(defect.mask, changed)  # covers what changed, nothing else
    assert max(_box(defect.mask)) <= size


def test_the_same_seed_makes_the_same_defects() -> None:
    images = [make_good(s, 48, 48) for s in range(3)]
    first = synthetic_defects(images, per_image=5, seed=7)
    again = synthetic_defects(images, per_image=5, seed=7)
    other = synthetic_defects(images, per_image=5, seed=8)
    assert len(first) == len(again) == 15
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
               for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a.mask, b.mask) for a, b in zip(first, other, strict=True))
    assert {d.kind for d in first} == set(KINDS)  # kinds in turn


def test_sizes_run_from_a_few_pixels_to_a_tenth_of_the_image() -> None:
    sizes = defect_sizes((460, 1130, 3), 400, np.random.default_rng(0))
    assert min(sizes) == SMALLEST_PX and max(sizes) <= 46
    assert np.median(sizes) < 20  # log-uniform: small ones as common as large ones
    assert defect_sizes((20, 20, 3), 5, np.random.default_rng(0)) == [SMALLEST_PX] * 5


def test_cutpaste_takes_its_patch_from_the_donor() -> None:
    good = np.full((40, 40, 3), 60, np.uint8)
    donor = np.zeros((40, 40, 3), np.uint8)
    donor[..., 2] = 250  # blue: nothing like the good image
    defect = synthesize(good, "cutpaste", 16, np.random.default_rng(3), donor=donor)
    assert defect is not None
    pasted = defect.image[defect.mask].astype(int)
    assert (pasted[:, 2] > pasted[:, 0] + 100).all()


@pytest.mark.parametrize("kind", ["scratch", "blob", "noise"])
def test_marks_show_on_a_flat_part(kind: str) -> None:
    """On an even surface a mark in the part's own tone still shows (the darker or brighter
    tone is the one farther from the surface)."""
    flat = np.full((32, 32, 3), 128, np.uint8)
    defect = synthesize(flat, kind, 12, np.random.default_rng(0))
    assert defect is not None
    assert np.abs(defect.image.astype(int) - 128)[defect.mask].max() > 30


def test_missing_material_on_a_flat_part_is_no_defect() -> None:
    """Filling a region from identical surroundings changes nothing: no defect, no mask."""
    flat = np.full((32, 32, 3), 90, np.uint8)
    assert synthesize(flat, "missing", 10, np.random.default_rng(0)) is None


def test_missing_material_removes_structure() -> None:
    stripes = np.zeros((48, 48, 3), np.uint8)
    stripes[:, ::4] = 255
    defect = synthesize(stripes, "missing", 20, np.random.default_rng(1))
    assert defect is not None
    inside = defect.image[defect.mask].astype(float)
    assert inside.std() < stripes.astype(float).std() / 2


def test_a_defect_larger_than_the_image_is_cut_to_it() -> None:
    small = make_good(0, 12, 20)
    defect = synthesize(small, "blob", 50, np.random.default_rng(0))
    assert defect is not None and defect.size_px == 12


def test_smooth_noise_is_smooth_and_bounded() -> None:
    noise = smooth_noise(64, 64, 4.0, np.random.default_rng(0))
    assert noise.shape == (64, 64) and np.abs(noise).max() <= 1.5
    assert np.abs(np.diff(noise, axis=1)).max() < 0.25  # no jumps between neighbours


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        synthesize(make_good(0), "dent", 8, np.random.default_rng(0))  # type: ignore[arg-type]


def test_strength_applies_that_share_of_the_change() -> None:
    flat = np.full((32, 32, 3), 100, np.uint8)
    full = synthesize(flat, "blob", 12, np.random.default_rng(0))
    half = synthesize(flat, "blob", 12, np.random.default_rng(0), strength=0.5)
    assert full is not None and half is not None
    np.testing.assert_array_equal(full.mask, half.mask)
    change = full.image.astype(float) - 100
    np.testing.assert_allclose(half.image.astype(float) - 100, change / 2, atol=1.0)
