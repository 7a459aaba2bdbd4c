"""The graphs: the extractor's resize (aspect kept, or not for ``square``; patch grid as
planned) and the scoring graph's nearest-neighbour stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto, helper

from app.detector import graph
from app.detector.backbones import get_backbone
from app.detector.config import DetectorConfig
from app.detector.engine import Detector, resize_plan
from app.detector.graph import ResizePlan
from app.detector.runtime import RuntimeOptions

SPEC = get_backbone("efficientnet_lite0")
MULTIPLE = SPEC.size_multiple  # 16
STRIDE = SPEC.patch_stride  # 8
CONFIG = DetectorConfig(backbone=SPEC.name, resolution=64)
MIN_STEPS = 4  # sides are never below 4 multiples (64 px): reflect padding and blur need room


def _expected_grid(height: int, width: int, plan: ResizePlan) -> tuple[int, int]:
    """Reference in plain Python of the documented resize rule."""
    if plan.policy == "square":
        side = max(MIN_STEPS, round(plan.resolution / MULTIPLE)) * MULTIPLE
        return side // STRIDE, side // STRIDE
    if plan.policy == "shorter_side":
        scale = plan.resolution / min(height, width)
    else:
        assert plan.reference_side
        scale = plan.resolution / plan.reference_side
    scale = min(scale, plan.resolution * plan.max_aspect / max(height, width))
    sides = [max(MIN_STEPS, round(s * scale / MULTIPLE)) * MULTIPLE for s in (height, width)]
    return sides[0] // STRIDE, sides[1] // STRIDE


def _grid(detector: Detector, plan: ResizePlan, height: int, width: int) -> tuple[int, int]:
    image = np.random.default_rng(height * width).integers(
        0, 256, (height, width, 3), dtype=np.uint8
    )
    feats = detector.extractor(CONFIG, plan)(image)
    assert feats.patches.shape == (feats.grid[0] * feats.grid[1], SPEC.feature_dim)
    assert feats.patches.dtype == np.float32
    assert np.isfinite(feats.patches).all()
    return feats.grid


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [
        (64, 64, (8, 8)),
        (64, 128, (8, 16)),  # aspect 2 kept
        (100, 300, (8, 24)),  # 64 x 192
        (300, 100, (24, 8)),  # portrait
        (97, 131, (8, 10)),  # 64 x 86.4 -> 64 x 80
        (60, 500, (8, 32)),  # aspect 8 > max_aspect 4: longer side capped at 256 px
        (32, 32, (8, 8)),  # upscaled
    ],
)
def test_shorter_side_policy_keeps_the_aspect_ratio(
    detector: Detector, height: int, width: int, grid: tuple[int, int]
) -> None:
    plan = ResizePlan(policy="shorter_side", resolution=64, max_aspect=4.0)
    assert _expected_grid(height, width, plan) == grid
    assert _grid(detector, plan, height, width) == grid


def test_max_aspect_caps_the_longer_side(detector: Detector) -> None:
    plan = ResizePlan(policy="shorter_side", resolution=128, max_aspect=2.0)
    # 128 x 512: the longer side is capped at 256 px, so the shorter one shrinks to 64.
    assert _expected_grid(128, 512, plan) == (8, 32)
    assert _grid(detector, plan, 128, 512) == (8, 32)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (20, 300), (64, 2000)])
def test_sides_never_shrink_below_the_floor(detector: Detector, height: int, width: int) -> None:
    plan = ResizePlan(policy="shorter_side", resolution=64, max_aspect=4.0)
    grid = _grid(detector, plan, height, width)
    assert min(grid) >= MIN_STEPS * MULTIPLE // STRIDE
    assert grid == _expected_grid(height, width, plan)


@pytest.mark.parametrize("border", [1, 2])
def test_mirrored_border_does_not_change_the_grid(detector: Detector, border: int) -> None:
    plain = ResizePlan(policy="shorter_side", resolution=64, max_aspect=4.0)
    padded = ResizePlan(policy="shorter_side", resolution=64, max_aspect=4.0, border=border)
    assert _grid(detector, padded, 100, 300) == _grid(detector, plain, 100, 300) == (8, 24)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (100, 300), (300, 100), (40, 200)])
def test_square_policy_ignores_the_aspect_ratio(
    detector: Detector, height: int, width: int
) -> None:
    plan = ResizePlan(policy="square", resolution=64, max_aspect=4.0)
    assert _grid(detector, plan, height, width) == (8, 8)


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [
        (96, 96, (8, 8)),  # the reference size -> the resolution
        (144, 96, (12, 8)),  # a larger crop keeps the pixel scale: more patches
        (192, 240, (16, 20)),
        (48, 96, (8, 8)),  # 32 x 64, raised to the 64 px floor
        (120, 480, (8, 32)),  # capped at 4 x 64 = 256 px along the longer side
    ],
)
def test_fixed_scale_policy_keeps_the_pixel_scale(
    detector: Detector, height: int, width: int, grid: tuple[int, int]
) -> None:
    plan = ResizePlan(policy="fixed_scale", resolution=64, max_aspect=4.0, reference_side=96.0)
    assert _expected_grid(height, width, plan) == grid
    assert _grid(detector, plan, height, width) == grid


def test_resize_plan_uses_the_median_shorter_side() -> None:
    images = [np.zeros((h, w, 3), np.uint8) for h, w in [(80, 200), (120, 100), (300, 90)]]
    plan = resize_plan(CONFIG, images)
    assert plan.policy == CONFIG.resize == "fixed_scale"
    assert plan.reference_side == 90.0  # shorter sides 80, 100, 90
    assert plan.resolution == 64
    other = resize_plan(DetectorConfig(resolution=64, resize="shorter_side"), images)
    assert other.reference_side is None


def test_fixed_scale_plan_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="reference"):
        ResizePlan(policy="fixed_scale", resolution=64, max_aspect=4.0)
    with pytest.raises(ValueError, match="policy"):
        ResizePlan(policy="stretch", resolution=64, max_aspect=4.0)


# --- nearest-neighbour stage: 8-bit shortlist, exact float32 re-rank -----------------------


def _nearest_stage(bank: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The scoring graph's nearest-distance stage alone, as an onnxruntime session."""
    g = graph._Graph()
    out = graph._nearest_distances(g, "x", bank.astype(np.float32))
    g.nodes.append(helper.make_node("Identity", [out], ["distances"]))
    model = helper.make_model(
        helper.make_graph(
            g.nodes,
            "nearest",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bank.shape[1]])],
            [helper.make_tensor_value_info("distances", TensorProto.FLOAT, ["N"])],
            initializer=g.initializers,
        ),
        opset_imports=[helper.make_opsetid("", graph.OPSET)],
    )
    session = RuntimeOptions(threads=1).session(model.SerializeToString())
    return lambda x: session.run(["distances"], {"x": x.astype(np.float32)})[0]


def _brute_force(x: np.ndarray, bank: np.ndarray) -> np.ndarray:
    diff = x.astype(np.float64)[:, None, :] - bank.astype(np.float64)[None, :, :]
    return np.sqrt((diff**2).sum(-1)).min(axis=1)


@pytest.mark.parametrize("chunk", [graph.BANK_CHUNK, 50])
def test_nearest_stage_is_exact_on_feature_like_data(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph, "BANK_CHUNK", chunk)
    rng = np.random.default_rng(3)
    bank = np.maximum(rng.normal(0.5, 1.0, (300, 48)), 0.0)  # sparse, non-negative
    x = np.maximum(rng.normal(0.5, 1.0, (200, 48)), 0.0)
    got, exact = _nearest_stage(bank)(x), _brute_force(x, bank)
    # Exact but for near ties that 8-bit products cannot order (here 1 patch of 200, whose
    # two nearest rows are 0.05 % apart and share a group): never below the true distance,
    # and then off by a fraction of a percent.
    assert np.mean(np.isclose(got, exact, rtol=1e-5)) >= 0.99
    assert np.all(got >= exact * (1 - 1e-6))
    np.testing.assert_allclose(got, exact, rtol=5e-3)


@pytest.mark.parametrize(("rows", "chunk"), [(1, 4096), (3, 4096), (4, 4096), (42, 40)])
def test_nearest_stage_is_exact_for_chunks_of_a_few_rows(
    rows: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny banks, and the 2-row tail of a 42-row bank in chunks of 40: every row of such a
    # chunk is shortlisted, so the answer is exact whatever the 8-bit product ranks.
    monkeypatch.setattr(graph, "BANK_CHUNK", chunk)
    rng = np.random.default_rng(8)
    bank = rng.normal(0.0, 1.0, (rows, 24))
    bank[-2:] += 40.0  # the tail far from the bank's mean
    x = np.concatenate([bank + rng.normal(0.0, 0.1, bank.shape), rng.normal(0.0, 1.0, (20, 24))])
    np.testing.assert_allclose(_nearest_stage(bank)(x), _brute_force(x, bank), rtol=1e-5)


def test_nearest_stage_near_ties_stay_within_quantisation_error() -> None:
    # 40 rows closer to each other than one 8-bit step, far from the origin: the integer
    # shortlist cannot order them. The answer is still the exact distance to a real bank row
    # (never below the true nearest), off by far less than the features' own scale.
    rng = np.random.default_rng(4)
    centre = rng.uniform(50.0, 60.0, 32)
    bank = centre + rng.normal(0.0, 1e-3, (40, 32))
    x = bank[:10] + rng.normal(0.0, 1e-5, (10, 32))
    got, exact = _nearest_stage(bank)(x), _brute_force(x, bank)
    assert np.all(got >= exact - 1e-4)
    assert np.all(got - exact < 1e-4 * np.linalg.norm(x, axis=1))


def test_nearest_stage_separates_rows_one_step_apart() -> None:
    # Neighbours a few quantisation steps apart are ranked exactly.
    rng = np.random.default_rng(6)
    bank = rng.uniform(0.0, 6.0, (500, 64))
    x = bank[rng.integers(0, 500, 50)] + rng.normal(0.0, 0.05, (50, 64))
    np.testing.assert_allclose(_nearest_stage(bank)(x), _brute_force(x, bank), rtol=1e-5)


def test_quantized_bank_stays_within_seven_bits() -> None:
    rng = np.random.default_rng(5)
    bank = rng.normal(0.0, 10.0, (64, 16)).astype(np.float32)
    bank[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = graph.quantize_bank(bank)
    assert q.dtype == np.int8 and np.abs(q).max() == graph.SHORTLIST_LEVELS
    assert np.all(np.isfinite(scale)) and np.all(scale > 0)
    np.testing.assert_allclose(q * scale[:, None], bank, atol=float(scale.max()) / 2 + 1e-6)


# --- anomaly map: the chain as two small matrix products -----------------------------------


def _map_session(build: Callable[[graph._Graph], str]) -> Callable[..., np.ndarray]:
    """A graph from ``scores (h, w)``, ``processed_hw (2,)``, ``image_hw (2,)`` to ``map``."""
    g = graph._Graph()
    g.nodes.append(helper.make_node("Identity", [build(g)], ["map"]))
    model = helper.make_model(
        helper.make_graph(
            g.nodes,
            "map",
            [
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["h", "w"]),
                helper.make_tensor_value_info("processed_hw", TensorProto.INT64, [2]),
                helper.make_tensor_value_info("image_hw", TensorProto.INT64, [2]),
            ],
            [helper.make_tensor_value_info("map", TensorProto.FLOAT, None)],
            initializer=g.initializers,
        ),
        opset_imports=[helper.make_opsetid("", graph.OPSET)],
    )
    session = RuntimeOptions(threads=1).session(model.SerializeToString())

    def run(scores: np.ndarray, processed: tuple[int, int], image: tuple[int, int]) -> np.ndarray:
        feed = {
            "scores": scores,
            "processed_hw": graph._i64(list(processed)),
            "image_hw": graph._i64(list(image)),
        }
        return session.run(["map"], feed)[0]

    return run


def _direct_chain(sigma: float) -> Callable[[graph._Graph], str]:
    """The map chain written out on the full 2-D map: resize, edge pad, Gaussian rows then
    columns, resize (what ``graph.anomaly_map`` factorises)."""

    def build(g: graph._Graph) -> str:
        n_c = g.const("n_c", np.array([1, 1], np.int64))
        grid = g.op("Shape", ["scores"])
        x = g.op("Reshape", ["scores", g.op("Concat", [n_c, grid], axis=0)])
        sizes = g.op("Concat", [n_c, "processed_hw"], axis=0)
        x = g.op("Resize", [x, "", "", sizes], mode="linear",
                 coordinate_transformation_mode="half_pixel")
        kernel = graph._gaussian_kernel(sigma)
        r = len(kernel) // 2
        x = g.op("Pad", [x, g.const("pads", np.array([0, 0, r, r, 0, 0, r, r], np.int64))],
                 mode="edge")
        x = g.op("Conv", [x, g.const("kv", kernel.reshape(1, 1, -1, 1))])
        x = g.op("Conv", [x, g.const("kh", kernel.reshape(1, 1, 1, -1))])
        sizes = g.op("Concat", [n_c, "image_hw"], axis=0)
        x = g.op("Resize", [x, "", "", sizes], mode="linear",
                 coordinate_transformation_mode="half_pixel")
        return g.op("Reshape", [x, "image_hw"])

    return build


@pytest.mark.parametrize(
    ("grid", "processed", "image"),
    [
        ((8, 8), (64, 64), (512, 512)),  # upsampled to the image
        ((12, 20), (96, 160), (90, 150)),  # the image smaller than the processed size
        ((24, 24), (336, 336), (123, 286)),  # squashed, as the square policy does
        ((4, 5), (64, 80), (64, 80)),  # smaller than the blur kernel
    ],
)
def test_factored_map_equals_the_direct_chain(
    grid: tuple[int, int], processed: tuple[int, int], image: tuple[int, int]
) -> None:
    scores = np.random.default_rng(7).gamma(2.0, 1.0, grid).astype(np.float32)
    sigma = 4.0
    factored = _map_session(
        lambda g: graph.anomaly_map(g, "scores", "processed_hw", "image_hw", sigma)
    )(scores, processed, image)
    direct = _map_session(_direct_chain(sigma))(scores, processed, image)
    assert factored.shape == direct.shape == image
    np.testing.assert_allclose(factored, direct, rtol=1e-5, atol=1e-5 * scores.max())


def test_map_without_blur_is_the_bilinear_upsample() -> None:
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = _map_session(lambda g: graph.anomaly_map(g, "scores", "processed_hw", "image_hw", 0.0))(
        scores, (3, 4), (3, 4)
    )
    np.testing.assert_allclose(got, scores, atol=1e-6)  # same size everywhere: unchanged


# --- light: levels matched to the training images' ------------------------------------------

LIT = ResizePlan(policy="shorter_side", resolution=64, max_aspect=4.0, light_mean=120.0,
                 light_std=40.0)


def _levels(image: np.ndarray, detector: Detector, plan: ResizePlan) -> np.ndarray:
    """What the backbone sees for ``image`` under ``plan``, back in grey levels."""
    pixels = detector.extractor(CONFIG, plan).backbone_input(image)
    return pixels * np.float32(SPEC.std[0]) + np.float32(SPEC.mean[0])


def test_light_normalise_undoes_brightness_and_contrast(detector: Detector) -> None:
    image = np.random.default_rng(5).integers(40, 200, (80, 120, 3)).astype(np.uint8)
    relit = np.round(0.7 * image.astype(np.float64) + 30).astype(np.uint8)  # dimmer, flatter
    seen, seen_relit = _levels(image, detector, LIT), _levels(relit, detector, LIT)
    # One gain and offset: the relit image reaches the backbone as the original did (up to
    # the relit image's rounding, half a level in 0.7 of the range).
    assert np.abs(seen - seen_relit).max() < 1.0
    plain = ResizePlan(policy="shorter_side", resolution=64, max_aspect=4.0)
    assert np.abs(_levels(image, detector, plain) - _levels(relit, detector, plain)).max() > 20
    # The resize keeps the mean: the image arrives at the plan's level.
    assert seen.mean() == pytest.approx(120.0, abs=0.5)


def test_light_normalise_raises_contrast_at_most_four_times(detector: Detector) -> None:
    flat = np.full((64, 64, 3), 100, np.uint8)
    flat[::2, ::2] = 102  # std about 0.87 levels: matching 40 would take a gain of 46
    seen = _levels(flat, detector, LIT)
    assert np.ptp(seen) <= 4 * 2 + 1e-3


def test_resize_plan_takes_the_training_images_light() -> None:
    images = [np.full((64, 64, 3), level, np.uint8) for level in (60, 100)]
    images[1][:32] = 140  # levels 100 and 140: mean 120, std 20
    plan = resize_plan(replace(CONFIG, light="normalise"), images)
    assert plan.light_mean == pytest.approx((60 + 120) / 2)
    assert plan.light_std == pytest.approx((0.0 + 20.0) / 2)
    flat = resize_plan(replace(CONFIG, light="normalise"), images[:1])
    assert flat.light_std == 1.0  # never below a grey level
    assert resize_plan(CONFIG, images).light_mean is None
    contrast = resize_plan(replace(CONFIG, light="contrast"), images)
    assert (contrast.light_mean, contrast.light_std) == (None, pytest.approx(10.0))
    with pytest.raises(ValueError, match="std with the mean"):
        ResizePlan(policy="square", resolution=64, max_aspect=4.0, light_mean=100.0)


def test_light_contrast_undoes_a_flatter_light_and_keeps_the_level(detector: Detector) -> None:
    contrast_only = replace(LIT, light_mean=None)
    image = np.random.default_rng(6).integers(40, 200, (80, 120, 3)).astype(np.uint8)
    mean = image.mean()
    flatter = np.round(0.7 * (image.astype(np.float64) - mean) + mean).astype(np.uint8)
    seen = _levels(image, detector, contrast_only)
    assert np.abs(seen - _levels(flatter, detector, contrast_only)).max() < 1.0
    brighter = image + np.uint8(30)  # 70..229: no level saturates
    assert (_levels(brighter, detector, contrast_only) - seen).mean() == pytest.approx(30, abs=0.5)
    assert seen.mean() == pytest.approx(mean, abs=0.5)  # its own level, not the plan's
