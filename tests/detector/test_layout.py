"""Regions of interest and ignore masks: validation, the masks the graph computes, verdicts
per region, the bank at training, and a new layout on an existing file."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.detector.config import DetectorConfig
from app.detector.engine import Detector, bank_from_model, plan_from_model
from app.detector.graph import with_layout
from app.detector.layout import MAX_IGNORE_MASKS, Layout, Rect, RegionOfInterest
from app.detector.runtime import CompiledModel
from app.detector.verdict import OUTPUTS, read_verdict
from app.errors import InvalidInputError
from tests.detector.conftest import make_good

SIZE = 192
NOISE = 12.0
# The generated parts' defects (strength, distance to the ignored rectangle) were sized for
# Lite0's response and receptive field: these test the layout, not the backbone.
BACKBONE = "efficientnet_lite0"
CONFIG = DetectorConfig(backbone=BACKBONE, resolution=128)


def _part(seed: int) -> np.ndarray:
    return make_good(seed, SIZE, SIZE, noise=NOISE)


def _with_blob(seed: int, centre: tuple[int, int], radius: int = 16,
               delta: int = 40) -> np.ndarray:
    image = _part(seed).astype(np.int16)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius * radius] += delta
    return np.clip(image, 0, 255).astype(np.uint8)


# Three windows side by side in the top half; the blob goes into J3's (centre x 0.8).
LAYOUT = Layout.from_dict({
    "regions_of_interest": [
        {"name": "J1", "x": 0.0, "y": 0.0, "width": 0.3, "height": 0.5},
        {"name": "J2", "x": 0.3, "y": 0.0, "width": 0.2, "height": 0.5},
        {"name": "J3", "x": 0.6, "y": 0.0, "width": 0.4, "height": 0.5},
    ],
    "ignore": [{"x": 0.0, "y": 0.6, "width": 0.5, "height": 0.4}],
})
IN_J3 = (48, 154)  # (row, column) px
BELOW_ROIS = (150, 144)  # outside every region of interest, not ignored
IN_IGNORED = (155, 48)


def _assert_same_scores(graph: np.ndarray, engine: np.ndarray) -> None:
    """The same cells masked, and the graph's distances those of its shortlist: never below
    the exact nearest one, and equal to it for most cells (graph.py, near ties)."""
    np.testing.assert_array_equal(graph == 0, engine == 0)
    assert (graph >= engine * (1 - 1e-4) - 1e-6).all()  # float32 distances in the graph
    assert np.mean(np.isclose(graph, engine, rtol=1e-4)) > 0.9


@pytest.fixture(scope="module")
def train() -> list[np.ndarray]:
    return [_part(s) for s in range(4)]


@pytest.fixture(scope="module")
def plain(detector: Detector, train: list[np.ndarray]) -> bytes:
    return detector.fit(train, CONFIG).onnx_bytes


@pytest.fixture(scope="module")
def laid_out(detector: Detector, train: list[np.ndarray]) -> bytes:
    return detector.fit(train, CONFIG, layout=LAYOUT).onnx_bytes


@pytest.mark.parametrize(("layout", "message"), [
    ({"ignore": [{"x": 0.8, "y": 0, "width": 0.3, "height": 0.5}]}, "inside the frame"),
    ({"ignore": [{"x": -0.1, "y": 0, "width": 0.3, "height": 0.5}]}, "inside the frame"),
    ({"ignore": [{"x": 0.1, "y": 0, "width": 0, "height": 0.5}]}, "greater than 0"),
    ({"ignore": [{"x": 0.1, "y": 0, "width": 0.2}]}, "needs ['height']"),
    ({"ignore": [{"x": "a", "y": 0, "width": 0.2, "height": 0.1}]}, "finite numbers"),
    ({"ignore": [{"x": float("nan"), "y": 0, "width": 0.2, "height": 0.1}]}, "finite numbers"),
    ({"ignore": [{"x": 0, "y": 0, "width": 10**400, "height": 0.1}]}, "finite numbers"),
    ({"regions_of_interest": [{"name": "a", "x": 0, "y": 0, "width": 1, "height": 1,
                               "min_defect_area_px": 10**9}]}, "within 0..100000000"),
    ({"regions_of_interest": [{"name": "a b", "x": 0, "y": 0, "width": 1, "height": 1}]},
     "must match"),
    ({"regions_of_interest": [{"name": "a", "x": 0, "y": 0, "width": 1, "height": 1}] * 2},
     "unique"),
    ({"regions_of_interest": [{"name": "a", "x": 0, "y": 0, "width": 1, "height": 1,
                               "min_defect_area_px": -1}]}, "min_defect_area_px"),
    ({"ignore": [{"x": 0, "y": 0, "width": 0.1, "height": 0.1}] * (MAX_IGNORE_MASKS + 1)},
     "at most"),
    ({"masks": []}, "unknown layout fields"),
])
def test_bad_layouts_are_refused_naming_the_problem(layout: dict[str, Any],
                                                    message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Layout.from_dict(layout)


def test_layout_round_trips() -> None:
    assert Layout.from_json(LAYOUT.to_json()) == LAYOUT
    assert Layout.from_dict(None) == Layout() and Layout().is_empty


def test_cells_belong_to_a_rectangle_by_their_centre() -> None:
    layout = Layout((RegionOfInterest("a", Rect(0.25, 0.0, 0.5, 0.5)),),
                    (Rect(0.5, 0.0, 0.5, 1.0),))
    per_roi, judged = layout.cell_masks((4, 4))
    expected = np.zeros((4, 4))
    expected[0:2, 1] = 1  # column 2 (centre 0.625) is in the ROI but ignored
    np.testing.assert_array_equal(judged, expected)
    assert per_roi.shape == (1, 4, 4)


def test_the_graph_masks_as_the_engine_does(detector: Detector, laid_out: bytes) -> None:
    image = _with_blob(5, IN_J3)
    graph = CompiledModel(laid_out).outputs(image, with_map=False).patch_scores
    engine = detector.patch_scores(image, bank_from_model(laid_out), CONFIG,
                                   plan_from_model(laid_out), layout=LAYOUT)
    _assert_same_scores(graph.ravel(), engine.patches)
    _, judged = LAYOUT.cell_masks(graph.shape)
    assert (graph[judged == 0] == 0).all() and (graph[judged == 1] > 0).all()


def test_a_defect_in_an_ignore_mask_leaves_the_part_good(plain: bytes, laid_out: bytes) -> None:
    image = _with_blob(6, IN_IGNORED)
    assert CompiledModel(plain).inspect(image).is_anomalous
    verdict = CompiledModel(laid_out).inspect(image)
    assert not verdict.is_anomalous and verdict.regions == ()


def test_a_defect_outside_every_region_of_interest_is_not_reported(plain: bytes,
                                                                   laid_out: bytes) -> None:
    image = _with_blob(7, BELOW_ROIS)
    assert CompiledModel(plain).inspect(image).is_anomalous
    verdict = CompiledModel(laid_out).inspect(image)
    assert not verdict.is_anomalous and verdict.regions == ()
    assert [r.is_anomalous for r in verdict.regions_of_interest] == [False, False, False]


def test_a_defect_in_j3_flips_only_j3(laid_out: bytes) -> None:
    good = CompiledModel(laid_out).inspect(_part(8))
    assert not good.is_anomalous and [r.name for r in good.regions_of_interest] == \
        ["J1", "J2", "J3"]
    verdict = CompiledModel(laid_out).inspect(_with_blob(8, IN_J3))
    assert verdict.is_anomalous
    assert {r.name: r.is_anomalous for r in verdict.regions_of_interest} == \
        {"J1": False, "J2": False, "J3": True}
    j3 = verdict.regions_of_interest[2]
    assert j3.score == pytest.approx(verdict.score)  # the image score is its worst region's
    assert verdict.regions and {r.region_of_interest for r in verdict.regions} == {"J3"}
    for region in verdict.regions:  # boxes stay inside J3's window
        assert region.x >= int(0.6 * SIZE) - 1 and region.y + region.height <= SIZE // 2 + 1


def test_a_region_of_interest_has_its_own_minimum_area(detector: Detector,
                                                       train: list[np.ndarray]) -> None:
    layout = Layout.from_dict({"regions_of_interest": [
        {"name": "tolerant", "x": 0, "y": 0, "width": 0.5, "height": 1,
         "min_defect_area_px": 20000},
        {"name": "strict", "x": 0.5, "y": 0, "width": 0.5, "height": 1},
    ]})
    model = CompiledModel(detector.fit(train, CONFIG, layout=layout).onnx_bytes)
    left = model.inspect(_with_blob(9, (96, 48)))
    right = model.inspect(_with_blob(9, (96, 144)))
    assert left.regions_of_interest[0].score > left.threshold
    assert not left.is_anomalous and not left.regions_of_interest[0].is_anomalous
    assert right.is_anomalous and right.regions_of_interest[1].is_anomalous


def test_ignored_patches_stay_out_of_the_bank(detector: Detector, train: list[np.ndarray],
                                              plain: bytes) -> None:
    """Banks this small keep every patch: the difference is the ignored cells exactly."""
    half = Layout(ignore=(Rect(0.0, 0.0, 1.0, 0.5),))
    fitted = detector.fit(train, CONFIG, layout=half)
    assert fitted.bank_size == len(bank_from_model(plain)) // 2


def test_the_downloaded_file_gives_the_same_verdict(laid_out: bytes) -> None:
    image = _with_blob(10, IN_J3)
    meta = {p.key: p.value for p in onnx.load_from_string(laid_out).metadata_props}
    session = ort.InferenceSession(laid_out, providers=["CPUExecutionProvider"])
    outputs = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"image": image}), strict=True))
    from_file = read_verdict(meta, image.shape[:2], outputs)
    api = CompiledModel(laid_out).inspect(image)
    assert from_file.score == pytest.approx(api.score, rel=1e-6)
    assert from_file.is_anomalous == api.is_anomalous
    assert [(r.name, r.is_anomalous) for r in from_file.regions_of_interest] == \
        [(r.name, r.is_anomalous) for r in api.regions_of_interest]
    assert [r.bbox for r in from_file.regions] == [r.bbox for r in api.regions]


def test_a_new_layout_on_an_existing_file_keeps_bank_and_threshold(plain: bytes) -> None:
    model = onnx.load_from_string(plain)
    with_layout(model, LAYOUT)
    relaid = model.SerializeToString()
    assert bank_from_model(relaid).tobytes() == bank_from_model(plain).tobytes()
    before, after = CompiledModel(plain), CompiledModel(relaid)
    assert after.threshold == before.threshold
    image = _with_blob(11, IN_J3)
    verdict = after.inspect(image)
    assert {r.name: r.is_anomalous for r in verdict.regions_of_interest} == \
        {"J1": False, "J2": False, "J3": True}
    assert not after.inspect(_with_blob(11, IN_IGNORED)).is_anomalous
    # And back: the empty layout scores like the original file.
    with_layout(model, Layout())
    again = CompiledModel(model.SerializeToString())
    assert again.score(image) == before.score(image)


def test_a_file_without_layout_constants_is_refused() -> None:
    model = onnx.ModelProto()
    with pytest.raises(ValueError, match="no layout constants"):
        with_layout(model, LAYOUT)


def test_top_fraction_scores_each_region_over_its_own_cells(detector: Detector,
                                                            train: list[np.ndarray]) -> None:
    config = DetectorConfig(backbone=BACKBONE, resolution=128, score_top_fraction=0.1)
    fitted = detector.fit(train, config, layout=LAYOUT)
    model = CompiledModel(fitted.onnx_bytes)
    image = _with_blob(12, IN_J3)
    out = model.outputs(image, with_map=False)
    grid = out.patch_scores
    per_roi, judged = LAYOUT.cell_masks(grid.shape)
    for i, mask in enumerate(per_roi):
        values = np.sort(grid[mask == 1])[::-1]
        k = max(1, int(np.ceil(0.1 * len(values))))
        assert out.values["roi_scores"][i] == pytest.approx(values[:k].mean(), rel=1e-5)
    everything = np.sort(grid[judged == 1])[::-1]
    k = max(1, int(np.ceil(0.1 * len(everything))))
    assert out.score == pytest.approx(everything[:k].mean(), rel=1e-5)
    engine = detector.patch_scores(image, bank_from_model(fitted.onnx_bytes), config,
                                   plan_from_model(fitted.onnx_bytes), layout=LAYOUT)
    _assert_same_scores(grid.ravel(), engine.patches)


def test_regions_stay_in_the_cells_of_their_region_of_interest(laid_out: bytes) -> None:
    """A defect in J3 next to J2's edge lights J2's neighbouring cells through interpolation
    only: J2 reports nothing unless its own cells are above the threshold."""
    model = CompiledModel(laid_out)
    verdict = model.inspect(_with_blob(14, (48, 120), radius=12))
    grid = model.outputs(_with_blob(14, (48, 120), radius=12), with_map=False).patch_scores
    per_roi, _ = LAYOUT.cell_masks(grid.shape)
    for roi, cells, roi_verdict in zip(LAYOUT.regions_of_interest, per_roi,
                                       verdict.regions_of_interest, strict=True):
        own = [r for r in verdict.regions if r.region_of_interest == roi.name]
        assert bool(own) == bool((grid[cells == 1] > model.threshold).any()), roi.name
        assert roi_verdict.is_anomalous == bool(own), roi.name
        rows, cols = np.nonzero(cells)
        cell_h, cell_w = SIZE / grid.shape[0], SIZE / grid.shape[1]
        for region in own:  # boxes within the region's own cells
            assert region.x >= cols.min() * cell_w - 1
            assert region.x + region.width <= (cols.max() + 1) * cell_w + 1
            assert region.y + region.height <= (rows.max() + 1) * cell_h + 1


def test_a_layout_may_not_unmask_what_the_bank_never_saw(detector: Detector,
                                                        train: list[np.ndarray]) -> None:
    masked = Layout(ignore=(Rect(0.0, 0.0, 0.5, 0.5),))
    model = onnx.load_from_string(detector.fit(train, CONFIG, layout=masked).onnx_bytes)
    for narrower in (Layout(), Layout(ignore=(Rect(0.0, 0.0, 0.25, 0.5),))):
        with pytest.raises(ValueError, match="does not cover"):
            with_layout(model, narrower)
    wider = Layout(ignore=(Rect(0.0, 0.0, 0.6, 0.6),),
                   regions_of_interest=(RegionOfInterest("a", Rect(0, 0, 1, 1)),))
    with_layout(model, wider, {"nominal.model_version": "7"})
    props = {p.key: p.value for p in model.metadata_props}
    assert props["nominal.model_version"] == "7"
    assert Layout.from_json(props["nominal.layout"]) == wider


def test_mirrored_training_views_leave_out_the_mirrored_mask(detector: Detector) -> None:
    """Every training part carries a light square in its left third, under the mask. With
    flip views the bank must not learn the mirrored square either, so the same square on
    the right of a new part is a defect."""
    def marked(seed: int, column: int) -> np.ndarray:
        """Grey with noise (its mirror image looks alike) and the square at ``column``."""
        rng = np.random.default_rng(seed)
        image = np.clip(rng.normal(128, 12, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        image[80:112, column:column + 32] = (250, 250, 250)
        return image

    layout = Layout(ignore=(Rect(0.0, 0.0, 0.34, 1.0),))
    fitted = detector.fit([marked(s, 16) for s in range(4)],
                          DetectorConfig(backbone=BACKBONE, resolution=128, augment="flip"),
                          layout=layout)
    model = CompiledModel(fitted.onnx_bytes)
    assert not model.inspect(marked(30, 16)).is_anomalous  # under the mask
    assert model.inspect(marked(30, SIZE - 48)).is_anomalous  # mirrored place: never learnt
