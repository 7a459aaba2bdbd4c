"""The region figures of an evaluation: ground-truth components, found share, minimum area."""

from __future__ import annotations

import numpy as np
import pytest

from app.evaluation.regions import RegionTally, ground_truth_boxes


def test_ground_truth_boxes_are_the_mask_components() -> None:
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:9] = True
    mask[10:18, 20:22] = True
    mask[5, 9] = True  # touches the first at a corner: the same defect
    assert sorted(ground_truth_boxes(mask)) == [(3, 2, 7, 4), (20, 10, 2, 8)]
    assert ground_truth_boxes(np.zeros((4, 4), bool)) == []


def test_a_region_over_the_defect_finds_it_and_one_elsewhere_does_not() -> None:
    tally = RegionTally(threshold=1.0, candidates=(0.0,))
    grid = np.zeros((10, 10), np.float32)
    grid[2:4, 2:4] = 5.0  # cells of 10 px: the region covers about (20, 20)-(40, 40)
    mask = np.zeros((100, 100), bool)
    mask[20:40, 20:40] = True
    tally.add(5.0, grid, (100, 100), True, mask)
    elsewhere = np.zeros((100, 100), bool)
    elsewhere[70:90, 70:90] = True
    tally.add(5.0, grid, (100, 100), True, elsewhere)
    tally.add(0.5, np.zeros((10, 10), np.float32), (100, 100), False, np.zeros((100, 100), bool))
    assert tally.ground_truth == 2
    assert tally.found_share() == {"0": 0.5}
    by_area = {t["min_area_px"]: t for t in tally.min_area_rates()["0"]}
    assert by_area[0]["recall"] == 1.0 and by_area[0]["false_reject_rate"] == 0.0
    assert by_area[4096]["recall"] == 0.0  # the region covers about 600 px
    assert by_area[256]["recall"] == pytest.approx(1.0)


def test_without_masks_nothing_is_found_but_areas_count() -> None:
    tally = RegionTally(threshold=1.0)
    grid = np.zeros((4, 4), np.float32)
    grid[1, 1] = 3.0
    tally.add(3.0, grid, (40, 40), True)
    assert tally.ground_truth == 0
    assert set(tally.found_share().values()) == {None}
    assert tally.min_area_rates()["0"][0]["false_reject_rate"] is None
