"""Defect regions: the documented post-processing of the model's patch-score grid, and the
regions of real models on generated parts (boxes over the drawn defect, minimum area)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.detector.config import DetectorConfig
from app.detector.engine import Detector
from app.detector.heatmap import outline_regions
from app.detector.regions import DefectRegion, RegionRule, defect_regions, upsampled
from app.detector.runtime import CompiledModel
from tests.detector.conftest import make_good


def test_nothing_above_the_threshold_is_no_region() -> None:
    assert defect_regions(np.ones((4, 4)), 2.0, (40, 40)) == []


def test_two_groups_are_two_regions_highest_first() -> None:
    grid = np.zeros((8, 10), np.float32)
    grid[1:3, 1:3] = 3.0  # 2 x 2 cells
    grid[5, 6:9] = 5.0  # 1 x 3 cells
    low, high = sorted(defect_regions(grid, 1.0, (80, 100)), key=lambda r: r.max_score)
    assert [r.max_score for r in defect_regions(grid, 1.0, (80, 100))] == [5.0, 3.0]
    # Cells of 10 x 10 px; the box runs to where the interpolation between a member's centre
    # and its neighbour's crosses the threshold: within half a cell outside its cells.
    assert high.max_score == 5.0 and low.max_score == 3.0
    assert 55 <= high.x <= 60 and 90 <= high.x + high.width <= 95
    assert 45 <= high.y <= 50 and 60 <= high.y + high.height <= 65
    assert 5 <= low.x <= 10 and 30 <= low.x + low.width <= 35
    assert high.area_px <= high.width * high.height


def test_touching_corners_are_one_region() -> None:
    grid = np.zeros((6, 6), np.float32)
    for i in range(1, 5):
        grid[i, i] = 4.0  # a diagonal scratch
    (region,) = defect_regions(grid, 1.0, (60, 60))
    assert region.width > 30 and region.height > 30


def test_boxes_scale_with_the_image_not_the_grid() -> None:
    grid = np.zeros((4, 4), np.float32)
    grid[1, 2] = 9.0
    (small,) = defect_regions(grid, 1.0, (40, 40))
    (large,) = defect_regions(grid, 1.0, (400, 800))
    assert large.x == pytest.approx(20 * small.x, abs=20)
    assert large.y == pytest.approx(10 * small.y, abs=10)
    assert large.area_px == pytest.approx(200 * small.area_px, rel=0.02)


def test_peak_fraction_keeps_the_core_of_a_strong_defect() -> None:
    yy, xx = np.mgrid[0:20, 0:20]
    grid = (30.0 * np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 8.0) + 0.5).astype(np.float32)
    (halo,) = defect_regions(grid, 1.0, (200, 200))
    (core,) = defect_regions(grid, 1.0, (200, 200), peak_fraction=0.5)
    assert core.width < halo.width / 2
    assert core.max_score == halo.max_score == pytest.approx(30.5)
    # A weak defect (peak under twice the threshold) keeps every cell above the threshold.
    weak = (grid - 0.5) / 20.0 + 0.5
    assert (defect_regions(weak, 1.0, (200, 200), peak_fraction=0.5)
            == defect_regions(weak, 1.0, (200, 200)))


def test_min_area_and_max_regions() -> None:
    grid = np.zeros((10, 10), np.float32)
    grid[1, 1] = 2.0
    grid[5:8, 5:8] = 3.0
    grid[1, 8] = 4.0
    everything = defect_regions(grid, 1.0, (100, 100))
    assert len(everything) == 3
    (big,) = defect_regions(grid, 1.0, (100, 100), min_area_px=400)
    assert big.max_score == 3.0
    assert [r.max_score for r in defect_regions(grid, 1.0, (100, 100), max_regions=2)] == [4, 3]


def test_upsampling_keeps_every_cell_value() -> None:
    grid = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    fine = upsampled(grid)
    assert fine.shape == (25, 35)
    np.testing.assert_allclose(fine[2::5, 2::5], grid, rtol=1e-6)
    assert fine.max() == pytest.approx(grid.max())


def test_bad_grids_are_refused() -> None:
    with pytest.raises(ValueError, match="grid"):
        defect_regions(np.zeros(5), 1.0, (10, 10))
    with pytest.raises(ValueError, match="peak_fraction"):
        defect_regions(np.zeros((2, 2)), 1.0, (10, 10), peak_fraction=1.0)


def test_rule_round_trips_through_metadata() -> None:
    rule = RegionRule(peak_fraction=0.5, min_area_px=300)
    assert RegionRule.from_json(rule.to_json()) == rule
    assert json.loads(rule.to_json())["min_defect_area_px"] == 300
    assert RegionRule.from_json(None) == RegionRule()


def test_iou() -> None:
    region = DefectRegion(x=10, y=10, width=10, height=10, area_px=100, max_score=1.0, samples=1)
    assert region.iou((10, 10, 10, 10)) == 1.0
    assert region.iou((15, 10, 10, 10)) == pytest.approx(50 / 150)
    assert region.iou((40, 40, 5, 5)) == 0.0


SIZE = 192
RADIUS = 24
CENTRE = (SIZE // 2 - 7, SIZE // 2 + 5)
NOISE = 12.0  # good parts that differ a little, as real ones do
# The drawn defects' strengths were sized for Lite0's response (about twice the threshold):
# these test the regions, not the backbone.
BACKBONE = "efficientnet_lite0"


def _part(seed: int) -> np.ndarray:
    return make_good(seed, SIZE, SIZE, noise=NOISE)


def _with_disc(seed: int, radius: int, delta: int) -> np.ndarray:
    """A part with a disc ``delta`` grey levels lighter or darker around ``CENTRE``."""
    image = _part(seed).astype(np.int16)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image[(yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2 <= radius * radius] += delta
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_192(detector: Detector) -> CompiledModel:
    """A 16 x 16 patch grid (12 px cells) on 192 px parts."""
    fitted = detector.fit([_part(s) for s in range(4)],
                          DetectorConfig(backbone=BACKBONE, resolution=128))
    return CompiledModel(fitted.onnx_bytes)


def _truth_box(radius: int) -> tuple[int, int, int, int]:
    cy, cx = CENTRE
    return cx - radius, cy - radius, 2 * radius + 1, 2 * radius + 1


@pytest.mark.parametrize(("seed", "radius"), [(10, 24), (11, 24), (10, 30)])
def test_the_box_covers_the_drawn_defect(model_192: CompiledModel, seed: int,
                                         radius: int) -> None:
    """A defect scoring up to about twice the threshold; a far stronger one lights a halo
    around itself above the threshold (BENCHMARKS.md, "Defect regions"). 27 grey levels
    score 1.3-1.6x this model's threshold; the box's overlap is 0.64-0.86 from 26 to 28."""
    verdict = model_192.inspect(_with_disc(seed, radius, 27))
    assert verdict.is_anomalous and verdict.score < 2.5 * verdict.threshold
    top = verdict.regions[0]
    assert top.max_score == pytest.approx(verdict.score, rel=1e-6)
    assert top.iou(_truth_box(radius)) >= 0.5


def test_a_good_part_has_no_region(model_192: CompiledModel) -> None:
    verdict = model_192.inspect(_part(20))
    assert not verdict.is_anomalous and verdict.regions == ()


def test_min_defect_area_suppresses_a_smaller_defect_keeps_a_larger(
    detector: Detector, model_192: CompiledModel
) -> None:
    small, large = _with_disc(12, 6, 40), _with_disc(12, RADIUS, 30)
    small_area = model_192.inspect(small).regions[0].area_px
    large_area = model_192.inspect(large).regions[0].area_px
    assert model_192.inspect(small).is_anomalous and small_area < large_area
    minimum = (small_area + large_area) // 2
    sized = CompiledModel(detector.fit(
        [_part(s) for s in range(4)],
        DetectorConfig(backbone=BACKBONE, resolution=128, min_defect_area_px=minimum)).onnx_bytes)
    small_verdict, large_verdict = sized.inspect(small), sized.inspect(large)
    assert not small_verdict.is_anomalous and small_verdict.regions == ()
    assert small_verdict.score == model_192.inspect(small).score  # the score is unchanged
    assert large_verdict.is_anomalous and large_verdict.regions[0].area_px >= minimum


def test_the_downloaded_file_gives_the_api_regions(detector: Detector) -> None:
    """The README recipe: plain onnxruntime on the file, then RegionRule from its metadata."""
    fitted = detector.fit([_part(s) for s in range(4)],
                          DetectorConfig(backbone=BACKBONE, resolution=128, min_defect_area_px=50))
    image = _with_disc(13, RADIUS, 40)
    meta = {p.key: p.value for p in onnx.load_from_string(fitted.onnx_bytes).metadata_props}
    rule = RegionRule.from_json(meta.get("nominal.regions"))
    session = ort.InferenceSession(fitted.onnx_bytes, providers=["CPUExecutionProvider"])
    score, grid = session.run(["score", "patch_scores"], {"image": image})
    regions = rule.regions(grid, float(meta["nominal.threshold"]), image.shape[:2])
    verdict = CompiledModel(fitted.onnx_bytes).inspect(image)
    assert rule.min_area_px == 50
    assert float(score[0]) == pytest.approx(verdict.score, rel=1e-6)
    assert tuple(regions) == verdict.regions and regions


def test_outlines_are_drawn_on_the_box_edges() -> None:
    image = np.full((100, 100, 3), 128, np.uint8)
    region = DefectRegion(x=20, y=30, width=40, height=20, area_px=800, max_score=2.0, samples=8)
    out = outline_regions(image, [region])
    assert (out[30, 20:60] == 255).all() and (out[49, 20:60] == 255).all()  # white line
    assert (out[29, 20:60] == 0).all()  # framed by black outside
    assert (out[40, 40] == 128).all() and (out[5, 5] == 128).all()  # inside and outside kept
    assert (image == 128).all()  # a copy


def test_a_window_of_the_grid_is_labelled_as_the_whole_grid_would_be() -> None:
    """Regions come from the window around the cells above the threshold: the same regions
    as labelling every sample of the grid."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        grid = rng.random((12, 9)).astype(np.float32)
        whole = upsampled(grid)
        assert upsampled(grid, (2, 7, 1, 9)).tobytes() == whole[10:35, 5:45].tobytes()
        cells = rng.random(grid.shape) > 0.3
        keep = np.repeat(np.repeat(cells, 5, axis=0), 5, axis=1)
        for threshold in (0.9, 0.95):
            # Every sample above the threshold is counted once, in some region...
            regions = defect_regions(grid, threshold, (120, 90))
            assert sum(r.samples for r in regions) == int((whole > threshold).sum())
            # ... and with a mask, every one in the cells it allows (a neighbour outside
            # them may be what lifts a sample inside above the threshold).
            masked = defect_regions(grid, threshold, (120, 90), cells=cells)
            assert sum(r.samples for r in masked) == int(((whole > threshold) & keep).sum())
