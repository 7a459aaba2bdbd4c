"""ONNX graphs of the detector, built with ``onnx.helper``.

Two graphs share one front end, so the engine's own path and the shipped model cannot drift:

``build_feature_extractor``
    ``image`` uint8 ``(H, W, 3)`` RGB  ->  ``patches`` float32 ``(N, C)``, ``grid`` int64 ``(2,)``
    (and ``backbone_input``, what the backbone sees: calibration data for 8-bit backbones)
    resize (aspect kept, antialiased) -> (light matched to the training images' level and
    contrast) -> normalise -> backbone -> 3x3 local average per layer
    -> upsample coarser layers to the finest grid -> concatenate (PatchCore section 3.1).

``build_scoring_model``
    the extractor plus the memory bank as constants:
    ``image``  ->  ``score`` float32 ``(1,)``, ``patch_scores`` float32 ``(h, w)``,
    ``roi_scores`` float32 ``(R,)``, ``anomaly_map`` float32 ``(H, W)``
    Nearest neighbours: ``|y|^2 - 2 x.y`` in 8-bit integers over chunks of the bank (no
    ``N x M x C`` broadcast) shortlists a few rows per patch; the exact float32 ``|x - y|``
    over the shortlist gives the distance: the exact distance to a real bank row, never below
    the true nearest one, and equal to it unless quantisation pushes a near-tie out of the
    shortlist. The anomaly map (upsample, blur, resize: all linear and separable) is two
    small matrix products with the patch-score grid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.detector.backbones import BackboneSpec
from app.detector.layout import (
    IGNORE_TENSOR,
    LAYOUT_METADATA,
    ROIS_TENSOR,
    TRAINED_IGNORE_METADATA,
    Layout,
)

OPSET = 18
BACKBONE_PREFIX = "backbone/"
BANK_CHUNK = 4096
# Power iterations for the first principal component of an image's patches (_foreground).
POWER_STEPS = 24

# Bank rows per chunk that the 8-bit product shortlists for the exact float32 distance: the
# nearest row of each of the SHORTLIST nearest groups of GROUP rows.
SHORTLIST = 4
GROUP = 8
SHORTLIST_LEVELS = 63


class _Graph:
    """Small builder: unique names, constants, nodes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def op_n(self, op_type: str, inputs: list[str], n: int, **attrs: Any) -> list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs


def _i64(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _f32(values: float | list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


@dataclass(frozen=True)
class ResizePlan:
    """How an image of any size becomes the network input; every policy keeps one pixel scale
    per image (no crop), and sides are rounded to the backbone's size multiple.

    - ``fixed_scale``: every image is scaled by ``resolution / reference_side``, where the
      reference is the median shorter side of the training images. A part keeps the same
      pixel scale whatever the crop size (fixed cameras, crops of a larger surface).
    - ``shorter_side``: the shorter side becomes ``resolution``, aspect kept.
    - ``square``: both sides become ``resolution`` (aspect lost; the classic PatchCore input).

    The longer side is capped at ``max_aspect * resolution`` so one long image cannot blow up
    the patch count.

    With ``light_mean`` and ``light_std`` (grey levels, the training images' mean level and
    contrast), every image's levels are first moved by one gain and offset, the same for its
    three channels, to that mean and standard deviation (``_normalise_light``): a part under
    a brighter or flatter light looks to the backbone as under the training light. With
    ``light_std`` alone, only the contrast is matched, about the image's own mean level. Like
    the reference side, they are constants of the model taken from its training images.
    """

    policy: str
    resolution: int
    max_aspect: float
    reference_side: float | None = None
    border: int = 0  # mirrored margin, in units of the backbone's size multiple
    light_mean: float | None = None
    light_std: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {self.policy!r}")
        if self.policy == "fixed_scale" and not self.reference_side:
            raise ValueError("fixed_scale needs the reference side of the training images")
        if self.light_mean is not None and self.light_std is None:
            raise ValueError("light normalisation needs the std with the mean")
        if self.light_std is not None and not self.light_std > 0:
            raise ValueError(f"light_std must be positive, got {self.light_std}")

    @property
    def normalises_light(self) -> bool:
        return self.light_std is not None

    def describe_light(self) -> str:
        if self.light_std is None:
            return "as photographed"
        if self.light_mean is None:
            return (f"contrast moved by one gain about the image's own mean level to standard "
                    f"deviation {self.light_std:.2f} (the training images'; gain at most "
                    f"{MAX_LIGHT_GAIN:g})")
        return (f"levels moved by one gain and offset to mean {self.light_mean:.2f} and "
                f"standard deviation {self.light_std:.2f} (the training images'; gain at most "
                f"{MAX_LIGHT_GAIN:g})")

    def describe(self, multiple: int) -> str:
        if self.policy == "square":
            head = f"both sides to {self.resolution} px (aspect not kept)"
        elif self.policy == "shorter_side":
            head = f"shorter side to {self.resolution} px, aspect kept"
        else:
            head = (
                f"scaled by {self.resolution} / {self.reference_side:g} (aspect and pixel "
                "scale kept)"
            )
        return (
            f"{head}; longer side at most {self.max_aspect:g} x {self.resolution} px; sides "
            f"rounded to multiples of {multiple}; bilinear, antialiased"
        )


RESIZE_POLICIES = ("fixed_scale", "shorter_side", "square")
# An image's contrast is raised at most this many times (a near-uniform frame, a covered lens:
# its noise would otherwise become structure).
MAX_LIGHT_GAIN = 4.0


def light_statistics(image: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation of ``image``'s grey levels over all pixels and
    channels: what ``_normalise_light`` matches to the model's reference (training time)."""
    values = np.asarray(image, dtype=np.float64)
    return float(values.mean()), float(values.std())


def _normalise_light(g: _Graph, full: str, resized: str, plan: ResizePlan) -> str:
    """``resized`` moved by one gain and offset so that the image's levels (``full``, the
    image before resizing, as ``light_statistics`` measures them) get the plan's standard
    deviation and mean (without ``light_mean``: the image's own mean); the resize is linear,
    so the statistics carry over."""
    assert plan.light_std is not None
    mean = g.op("ReduceMean", [full], keepdims=1)
    deviation = g.op("Sub", [full, mean])
    std = g.op("Sqrt", [g.op("ReduceMean", [g.op("Mul", [deviation, deviation])], keepdims=1)])
    std = g.op("Max", [std, g.const("light_floor", _f32(plan.light_std / MAX_LIGHT_GAIN))])
    gain = g.op("Div", [g.const("light_std", _f32(plan.light_std)), std])
    target = mean if plan.light_mean is None else g.const("light_mean", _f32(plan.light_mean))
    offset = g.op("Sub", [target, g.op("Mul", [mean, gain])])
    return g.op("Add", [g.op("Mul", [resized, gain]), offset], hint="lit")


def _target_size(g: _Graph, hw: str, plan: ResizePlan, multiple: int) -> str:
    """int64 ``(2,)`` processed size of an image of size ``hw`` under ``plan``."""
    mult = g.const("multiple", _f32(float(multiple)))
    if plan.policy == "square":
        side = max(4, round(plan.resolution / multiple)) * multiple
        return g.const("square", _i64([side, side]))
    hw_f = g.op("Cast", [hw], to=TensorProto.FLOAT)
    long = g.op("ReduceMax", [hw_f], keepdims=0)
    if plan.policy == "shorter_side":
        short = g.op("ReduceMin", [hw_f], keepdims=0)
        scale = g.op("Div", [g.const("res", _f32(float(plan.resolution))), short])
    else:
        scale = g.const("scale", _f32(plan.resolution / float(plan.reference_side or 1.0)))
    max_long = g.const("max_long", _f32(float(plan.resolution) * plan.max_aspect))
    scale = g.op("Min", [scale, g.op("Div", [max_long, long])])
    steps = g.op("Round", [g.op("Div", [g.op("Mul", [hw_f, scale]), mult])])
    # At least 4 steps a side: reflect padding and the blur need a few pixels to work with.
    steps = g.op("Max", [steps, g.const("min_steps", _f32(4.0))])
    return g.op("Cast", [g.op("Mul", [steps, mult])], to=TensorProto.INT64)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """1-D Gaussian, radius ``int(4 sigma + 0.5)`` as in PatchCore's reference code."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _merge_backbone(g: _Graph, backbone: onnx.ModelProto, pixels: str) -> None:
    """Append the backbone's nodes, prefixed, reading its ``pixels`` input from ``pixels``."""
    prefixed = onnx.compose.add_prefix(backbone, BACKBONE_PREFIX)
    g.nodes.append(helper.make_node("Identity", [pixels], [BACKBONE_PREFIX + "pixels"]))
    g.nodes.extend(prefixed.graph.node)
    g.initializers.extend(prefixed.graph.initializer)


def _front_end(
    g: _Graph,
    spec: BackboneSpec,
    backbone: onnx.ModelProto,
    plan: ResizePlan,
    unit_length: bool = False,
) -> tuple[str, str, str, str]:
    """Builds image -> patch features (each scaled to unit length if ``unit_length``: the
    cosine distance). Returns names of
    ``patches (N, C)``, ``grid (2,)``, ``image_hw (2,)``, ``processed_hw (2,)``."""
    shape = g.op("Shape", ["image"])
    image_hw = g.op("Slice", [shape, g.const("s0", _i64([0])), g.const("s2", _i64([2]))])
    processed_hw = _target_size(g, image_hw, plan, spec.size_multiple)

    chw = g.op("Transpose", ["image"], perm=[2, 0, 1])
    nchw = g.op("Unsqueeze", [chw, g.const("ax0", _i64([0]))])
    nchw = g.op("Cast", [nchw], to=TensorProto.FLOAT)
    sizes = g.op("Concat", [g.const("n_c", _i64([1, 3])), processed_hw], axis=0)
    resized = g.op(
        "Resize",
        [nchw, "", "", sizes],
        mode="linear",
        antialias=1,
        coordinate_transformation_mode="half_pixel",
    )
    if plan.normalises_light:
        resized = _normalise_light(g, nchw, resized, plan)
    # One value for every channel (Lite0): scalars. In 8-bit models onnxruntime moves the
    # backbone's layout change in front of these ops, and a per-channel constant then
    # broadcasts over a last axis of 3 (measured ~9x slower than a scalar).
    shared = len(set(spec.mean)) == 1 and len(set(spec.std)) == 1
    constant_shape: tuple[int, ...] = () if shared else (1, 3, 1, 1)
    channels = 1 if shared else 3
    mean = g.const("mean", _f32(list(spec.mean))[:channels].reshape(constant_shape))
    inv_std = g.const("inv_std", (1.0 / _f32(list(spec.std)))[:channels].reshape(constant_shape))
    pixels = g.op("Mul", [g.op("Sub", [resized, mean]), inv_std], hint="pixels")
    pad = plan.border * spec.size_multiple
    if pad:
        # Mirrored context around the image: border patches then see plausible content
        # instead of the backbone's zero padding, and match the bank like inner patches.
        pads = g.const("pads", _i64([0, 0, pad, pad, 0, 0, pad, pad]))
        pixels = g.op("Pad", [pixels, pads], mode="reflect")
    _merge_backbone(g, backbone, pixels)

    finest = min(spec.layers, key=lambda layer: layer.stride)
    finest_map = _aggregate(g, spec, BACKBONE_PREFIX + finest.output)
    grid = g.op(
        "Slice", [g.op("Shape", [finest_map]), g.const("s2", _i64([2])), g.const("s4", _i64([4]))]
    )
    maps = []
    for layer in spec.layers:
        fmap = (
            finest_map if layer is finest else _aggregate(g, spec, BACKBONE_PREFIX + layer.output)
        )
        if layer.stride != finest.stride:
            size = g.op(
                "Concat",
                [
                    g.op(
                        "Slice",
                        [g.op("Shape", [fmap]), g.const("s0", _i64([0])), g.const("s2", _i64([2]))],
                    ),
                    grid,
                ],
                axis=0,
            )
            fmap = g.op(
                "Resize",
                [fmap, "", "", size],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            )
        maps.append(fmap)
    features = maps[0] if len(maps) == 1 else g.op("Concat", maps, axis=1)
    if pad:
        cells = pad // finest.stride
        features = g.op(
            "Slice",
            [
                features,
                g.const("crop0", _i64([cells, cells])),
                g.const("crop1", _i64([-cells, -cells])),
                g.const("axes", _i64([2, 3])),
            ],
        )
        grid = g.op(
            "Slice", [g.op("Shape", [features]), g.const("s2", _i64([2])), g.const("s4", _i64([4]))]
        )
    nhwc = g.op("Transpose", [features], perm=[0, 2, 3, 1])
    patches = g.op("Reshape", [nhwc, g.const("flat", _i64([-1, spec.feature_dim]))])
    if unit_length:
        norms = g.op("ReduceL2", [patches, g.const("ax1", _i64([1]))], keepdims=1)
        patches = g.op("Div", [patches, g.op("Max", [norms, g.const("tiny", _f32(1e-12))])])
    return patches, grid, image_hw, processed_hw


def _aggregate(g: _Graph, spec: BackboneSpec, fmap: str) -> str:
    """Local neighbourhood average (PatchCore's p x p aggregation, edges not zero-weighted)."""
    p = spec.neighbourhood
    if p <= 1:
        return fmap
    return g.op(
        "AveragePool",
        [fmap],
        kernel_shape=[p, p],
        strides=[1, 1],
        pads=[p // 2] * 4,
        count_include_pad=0,
    )


def _opsets(backbone: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    versions = {imp.domain: imp.version for imp in backbone.opset_import}
    versions[""] = max(versions.get("", OPSET), OPSET)
    return [helper.make_opsetid(domain, version) for domain, version in versions.items()]


def _model(
    g: _Graph,
    backbone: onnx.ModelProto,
    outputs: list[onnx.ValueInfoProto],
    metadata: Mapping[str, str],
    name: str,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["H", "W", 3])],
        outputs,
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=_opsets(backbone), producer_name="nominal")
    model.ir_version = max(backbone.ir_version, 8)
    helper.set_model_props(model, dict(metadata))
    return model


def build_feature_extractor(
    spec: BackboneSpec, backbone: onnx.ModelProto, plan: ResizePlan, *,
    unit_length: bool = False, foreground: bool = False,
) -> onnx.ModelProto:
    """``image`` uint8 ``(H, W, 3)`` -> ``patches`` float32 ``(N, C)``, ``grid`` int64 ``(2,)``,
    ``backbone_input`` float32 ``(1, 3, h, w)``, and with ``foreground`` the ``(h, w)``
    foreground of ``_foreground``."""
    g = _Graph()
    patches, grid, _, _ = _front_end(g, spec, backbone, plan, unit_length)
    g.nodes.append(helper.make_node("Identity", [patches], ["patches"]))
    g.nodes.append(helper.make_node("Identity", [grid], ["grid"]))
    extra = []
    if foreground:
        g.nodes.append(helper.make_node(
            "Identity", [_foreground(g, patches, grid, spec.feature_dim)], ["foreground"]))
        extra = [helper.make_tensor_value_info("foreground", TensorProto.FLOAT, ["h", "w"])]
    # What the backbone sees (resized, normalised, padded): calibration data for int8.
    g.nodes.append(helper.make_node("Identity", [BACKBONE_PREFIX + "pixels"], ["backbone_input"]))
    outputs = [
        helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["N", spec.feature_dim]),
        helper.make_tensor_value_info("grid", TensorProto.INT64, [2]),
        helper.make_tensor_value_info(
            "backbone_input", TensorProto.FLOAT, [1, 3, "height", "width"]
        ),
        *extra,
    ]
    return _model(g, backbone, outputs, {"backbone": spec.name}, "nominal_features")


def build_scoring_model(
    spec: BackboneSpec,
    backbone: onnx.ModelProto,
    plan: ResizePlan,
    bank: np.ndarray,
    blur_sigma: float,
    metadata: Mapping[str, str],
    *,
    top_fraction: float = 0.0,
    edge_band: int = 0,
    edge_weight: float = 1.0,
    layout: Layout | None = None,
    unit_length: bool = False,
    mask_background: bool = False,
) -> onnx.ModelProto:
    """The single-file model an integrator runs: memory bank ``(M, C)`` inside.

    ``mask_background``: the cells off the image's own foreground (``_foreground``) are not
    judged, like cells a layout ignores.

    Patch scores fewer than ``edge_band`` cells from the frame's edge are multiplied by
    ``edge_weight`` (``memory.edge_weights``), and those the ``layout`` does not judge set to
    0, before the image score, the regions' scores and the map.

    ``image`` uint8 ``(H, W, 3)`` -> ``score`` float32 ``(1,)``, ``patch_scores`` float32
    ``(h, w)`` (the judged patch grid the score and ``regions.defect_regions`` read),
    ``roi_scores`` float32 ``(R,)`` (each region of interest's score), ``anomaly_map``
    float32 ``(H, W)``.
    """
    if bank.ndim != 2 or bank.shape[1] != spec.feature_dim or len(bank) == 0:
        raise ValueError(f"bank must be (M, {spec.feature_dim}), got {bank.shape}")
    g = _Graph()
    patches, grid, image_hw, processed_hw = _front_end(g, spec, backbone, plan, unit_length)
    patch_scores = _nearest_distances(g, patches, bank.astype(np.float32))

    score_grid = g.op("Reshape", [patch_scores, grid])  # (h, w)
    if edge_band > 0 and edge_weight != 1.0:
        score_grid = _weigh_edges(g, score_grid, grid, edge_band, edge_weight)
    per_roi, judged = _layout_masks(g, grid, layout or Layout())
    if mask_background:
        foreground = _foreground(g, patches, grid, spec.feature_dim)
        per_roi = g.op("Mul", [per_roi, foreground])
        judged = g.op("Mul", [judged, foreground])
    score_grid = g.op("Mul", [score_grid, judged])  # ignored and unwatched cells score 0
    # The image score over the judged cells, each region of interest's over its own: one rule.
    _rule_scores(g, g.op("Reshape", [score_grid, g.const("one_row", _i64([1, -1]))]),
                 g.op("Reshape", [g.op("ReduceSum", [judged], keepdims=0),
                                  g.const("one_one", _i64([1, 1]))]),
                 top_fraction, "score")
    roi_values = g.op("Mul", [g.op("Unsqueeze", [score_grid, g.const("ax0", _i64([0]))]),
                              per_roi])
    _rule_scores(g, g.op("Reshape", [roi_values, g.const("by_roi", _i64([0, -1]))]),
                 g.op("ReduceSum", [per_roi, g.const("ax12", _i64([1, 2]))], keepdims=0),
                 top_fraction, "roi_scores")
    g.nodes.append(helper.make_node("Identity", [score_grid], ["patch_scores"]))
    g.nodes.append(
        helper.make_node(
            "Identity",
            [anomaly_map(g, score_grid, processed_hw, image_hw, blur_sigma)],
            ["anomaly_map"],
        )
    )
    outputs = [
        helper.make_tensor_value_info("score", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("patch_scores", TensorProto.FLOAT, ["h", "w"]),
        helper.make_tensor_value_info("roi_scores", TensorProto.FLOAT, ["R"]),
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["H", "W"]),
    ]
    return _model(g, backbone, outputs, metadata, "nominal_detector")


def _layout_masks(g: _Graph, grid: str, layout: Layout) -> tuple[str, str]:
    """``(per region of interest (R, h, w), judged (h, w))`` float 0/1 masks of the patch
    grid from the layout's constants (``layout.Layout.cell_masks`` in numpy): a cell counts
    where its centre lies in a rectangle. The constants have fixed names, so ``with_layout``
    can replace them."""
    g.initializers.append(numpy_helper.from_array(layout.roi_tensor(), ROIS_TENSOR))
    g.initializers.append(numpy_helper.from_array(layout.ignore_tensor(), IGNORE_TENSOR))
    rows, cols = _split(g, grid)

    def centres(n: str) -> str:  # (n,) float: cell centres in relative units
        count = g.op("Squeeze", [n, g.const("ax0", _i64([0]))])
        index = g.op("Range", [g.const("zero_i", np.asarray(0, dtype=np.int64)), count,
                               g.const("one_i", np.asarray(1, dtype=np.int64))])
        index = g.op("Cast", [index], to=TensorProto.FLOAT)
        return g.op("Div", [g.op("Add", [index, g.const("half", _f32(0.5))]),
                            g.op("Cast", [n], to=TensorProto.FLOAT)])

    row_centres, col_centres = centres(rows), centres(cols)

    def inside(rects: str) -> str:  # (K, h, w) float
        def column(i: int) -> str:  # (K, 1)
            return g.op("Slice", [rects, g.const("c0", _i64([i])), g.const("c1", _i64([i + 1])),
                                  g.const("ax1", _i64([1]))])

        def within(centre: str, low: int, high: int) -> str:  # (K, n) bool
            line = g.op("Unsqueeze", [centre, g.const("ax0", _i64([0]))])
            return g.op("And", [g.op("GreaterOrEqual", [line, column(low)]),
                                g.op("Less", [line, column(high)])])

        in_rows = g.op("Unsqueeze", [within(row_centres, 1, 3), g.const("ax2", _i64([2]))])
        in_cols = g.op("Unsqueeze", [within(col_centres, 0, 2), g.const("ax1", _i64([1]))])
        return g.op("Cast", [g.op("And", [in_rows, in_cols])], to=TensorProto.FLOAT)

    ax0 = g.const("ax0", _i64([0]))
    ignored = g.op("ReduceMax", [inside(IGNORE_TENSOR), ax0], keepdims=0)  # (h, w)
    kept = g.op("Sub", [g.const("one_f", _f32(1.0)), ignored])
    per_roi = g.op("Mul", [inside(ROIS_TENSOR), kept])  # (R, h, w)
    judged = g.op("ReduceMax", [per_roi, ax0], keepdims=0)  # (h, w)
    return per_roi, judged


def _rule_scores(g: _Graph, values: str, judged: str, top_fraction: float,
                 output: str) -> None:
    """``output (R,)`` from ``values (R, N)`` (0 where not judged) and each row's number of
    judged cells ``judged (R,)``: the max, or the mean of the top ``ceil(fraction * judged)``
    (``memory.image_score``'s rule, in float32 as it counts). Sorted once, the running sum is
    read at each row's own count."""
    if top_fraction <= 0:
        g.nodes.append(helper.make_node("ReduceMax", [values, g.const("ax1", _i64([1]))],
                                        [output], keepdims=0))
        return
    count = g.op("Reshape", [judged, g.const("r1", _i64([-1, 1]))])  # (R, 1)
    k = g.op("Ceil", [g.op("Mul", [count, g.const("fraction", _f32(top_fraction))])])
    k = g.op("Max", [k, g.const("one", _f32(1.0))])
    n = g.op("Slice", [g.op("Shape", [values]), g.const("s1", _i64([1])),
                       g.const("s2", _i64([2]))])
    ordered, _ = g.op_n("TopK", [values, n], 2, axis=1, largest=1, sorted=1)
    running = g.op("CumSum", [ordered, g.const("axis1", np.asarray(1, dtype=np.int64))])
    at_k = g.op("Sub", [g.op("Cast", [k], to=TensorProto.INT64), g.const("one_i", _i64([1]))])
    total = g.op("GatherElements", [running, at_k], axis=1)  # (R, 1)
    g.nodes.append(helper.make_node("Reshape", [g.op("Div", [total, k]),
                                                g.const("flat", _i64([-1]))], [output]))


def with_layout(model: onnx.ModelProto, layout: Layout,
                metadata: Mapping[str, str] | None = None) -> None:
    """Give a scoring model another layout, in place: its layout constants, its
    ``nominal.layout`` metadata and ``metadata``; bank, threshold and everything else stay.
    ``ValueError`` for a file built without the layout constants, or a layout that would judge
    an area the bank was fitted without (the file's ``nominal.trained_ignore``)."""
    props = {p.key: p.value for p in model.metadata_props}
    trained = Layout.from_dict({"ignore": json.loads(props.get(TRAINED_IGNORE_METADATA, "[]"))})
    if not layout.ignores_all_of(trained.ignore):
        raise ValueError("the model was trained with ignore masks that this layout does not "
                         "cover: its memory bank has never seen those areas, so it would "
                         "reject every part there; keep them masked, or train a new model")
    replaced = 0
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name in (ROIS_TENSOR, IGNORE_TENSOR):
            value = layout.roi_tensor() if tensor.name == ROIS_TENSOR else layout.ignore_tensor()
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, tensor.name))
            replaced += 1
    if replaced != 2:
        raise ValueError("the model file has no layout constants (it predates regions of "
                         "interest and ignore masks)")
    props[LAYOUT_METADATA] = layout.to_json()
    props.update(metadata or {})
    del model.metadata_props[:]
    helper.set_model_props(model, props)


def _edge_distance(g: _Graph, grid: str) -> str:
    """``(h, w)`` int64: each cell's distance in cells to the nearest edge of the grid."""

    def to_edge(side: str) -> str:  # (n,) int64: each index's distance to the nearer end
        n = g.op("Squeeze", [side, g.const("ax0", _i64([0]))])
        one = g.const("one_i", np.asarray(1, dtype=np.int64))
        index = g.op("Range", [g.const("zero_i", np.asarray(0, dtype=np.int64)), n, one])
        last = g.op("Sub", [n, one])
        return g.op("Min", [index, g.op("Sub", [last, index])])

    rows, cols = _split(g, grid)
    return g.op("Min", [
        g.op("Unsqueeze", [to_edge(rows), g.const("ax1", _i64([1]))]),
        g.op("Unsqueeze", [to_edge(cols), g.const("ax0", _i64([0]))]),
    ])


def _foreground(g: _Graph, patches: str, grid: str, dim: int) -> str:
    """``(h, w)`` float, 1 on the image's foreground and 0 on its background: the side of each
    patch on the first principal component of the image's own patch features (AnomalyDINO,
    Damm et al. 2025), the side the border cells mostly lie on being background, grown by one
    cell. The component comes from ``POWER_STEPS`` power iterations on the patches' Gram
    matrix, from a fixed start, so the feature extractor and the model agree exactly."""
    centred = g.op("Sub", [patches, g.op("ReduceMean", [patches, g.const("ax0", _i64([0]))],
                                         keepdims=1)])  # (N, C)
    gram = g.op("MatMul", [centred, g.op("Transpose", [centred], perm=[1, 0])])  # (N, N)
    start = np.random.default_rng(0).standard_normal((dim, 1)).astype(np.float32)
    u = g.op("MatMul", [centred, g.const("pc_start", start)])  # (N, 1)
    tiny = g.const("tiny_pc", _f32(1e-20))
    for _ in range(POWER_STEPS):
        u = g.op("MatMul", [gram, u])
        u = g.op("Div", [u, g.op("Max", [g.op("ReduceL2", [u], keepdims=1), tiny])])
    side = g.op("Reshape", [u, grid])  # (h, w)
    border = g.op("Cast", [g.op("Equal", [_edge_distance(g, grid),
                                          g.const("zero_e", np.asarray(0, dtype=np.int64))])],
                  to=TensorProto.FLOAT)
    on_border = g.op("ReduceSum", [g.op("Mul", [side, border])], keepdims=0)
    sign = g.op("Where", [g.op("Greater", [on_border, g.const("zero_f", _f32(0.0))]),
                          g.const("minus_one", _f32(-1.0)), g.const("one_f", _f32(1.0))])
    inside = g.op("Cast", [g.op("Greater", [g.op("Mul", [side, sign]),
                                            g.const("zero_f", _f32(0.0))])], to=TensorProto.FLOAT)
    four_d = g.op("Unsqueeze", [inside, g.const("ax01", _i64([0, 1]))])
    grown = g.op("MaxPool", [four_d], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    return g.op("Squeeze", [grown, g.const("ax01", _i64([0, 1]))])


def _weigh_edges(g: _Graph, score_grid: str, grid: str, band: int, weight: float) -> str:
    """``score_grid (h, w)`` with the cells fewer than ``band`` from an edge times ``weight``."""
    distance = _edge_distance(g, grid)
    near = g.op("Less", [distance, g.const("band", np.asarray(band, dtype=np.int64))])
    factor = g.op("Where", [near, g.const("edge_weight", _f32(weight)),
                            g.const("one_f", _f32(1.0))])
    return g.op("Mul", [score_grid, factor])


def quantize_bank(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 rows for the shortlist product: ``(q (M, C) int8, scale (M,))``.

    Seven bits (|q| <= 63), not eight: on CPUs without VNNI, onnxruntime multiplies uint8 by
    int8 with ``vpmaddubsw``, whose int16 pair sums saturate above 255 * 63 * 2.
    """
    scale = np.abs(chunk).max(axis=1).astype(np.float64) / SHORTLIST_LEVELS
    scale[scale == 0] = 1.0
    q = np.clip(np.round(chunk / scale[:, None]), -SHORTLIST_LEVELS, SHORTLIST_LEVELS)
    return q.astype(np.int8), scale.astype(np.float32)


def _nearest_distances(g: _Graph, patches: str, bank: np.ndarray) -> str:
    """``patches (N, C)`` -> distance of each to its nearest bank row, ``(N,)``.

    Two stages. A shortlist: ``|y|^2 - 2 x.y`` in 8-bit integers (``DynamicQuantizeLinear``
    + ``MatMulInteger``, measured 2.8x faster than the float32 product that dominated the
    scoring cost) keeps ``SHORTLIST`` rows per bank chunk: the nearest row of each of the
    ``SHORTLIST`` groups (of ``GROUP`` rows) whose nearest rows are nearest. A ``ReduceMin``
    per group and a ``TopK`` over the groups cost a fraction of a ``TopK`` over every row.
    Then the exact float32 ``|x - y|`` over the shortlist picks the nearest. The result is
    always the exact distance to a real bank row; it can exceed the true nearest
    distance only when quantisation error ranks other rows above the true neighbour (more
    than ``SHORTLIST - 1`` of them, or one in its own group), i.e. among near ties anyway
    (tests/detector/test_graph.py). Chunks of up to ``SHORTLIST * GROUP`` rows shortlist
    their ``SHORTLIST`` nearest rows directly. On the bottle and magnetic tile test splits
    the image scores equal the exact float32 search to 7e-5 (bench/README.md).
    """
    # Distances do not change when both sides move by the bank's mean; the 8-bit steps then
    # resolve the differences between rows instead of the offset they all share.
    centre = bank.astype(np.float64).mean(axis=0)
    centred = g.op("Sub", [patches, g.const("bank_mean", centre.astype(np.float32))])
    x_q, x_scale, x_zero = g.op_n("DynamicQuantizeLinear", [centred], 3)
    candidates: list[str] = []
    for start in range(0, len(bank), BANK_CHUNK):
        chunk = bank[start : start + BANK_CHUNK] - centre
        # Small chunks (a tail, or a tiny bank) shortlist rows directly: grouping them would
        # leave fewer than SHORTLIST candidates.
        grouped = len(chunk) > SHORTLIST * GROUP
        groups = math.ceil(len(chunk) / GROUP)
        padding = groups * GROUP - len(chunk) if grouped else 0
        q, scale = quantize_bank(chunk)
        q = np.concatenate([q, np.zeros((padding, q.shape[1]), np.int8)])
        scale = np.concatenate([scale, np.ones(padding, np.float32)])
        y_sq = np.sum(chunk.astype(np.float64) ** 2, axis=1).astype(np.float32)
        # Padding rows (the last ones) sit infinitely far away: never a group's nearest, as
        # group j's first row, j < groups <= len(chunk), is always a real one.
        y_sq = np.concatenate([y_sq, np.full(padding, np.inf, np.float32)])
        dots = g.op("MatMulInteger", [x_q, g.const("bank_q", np.ascontiguousarray(q.T)), x_zero])
        neg2_scale = g.op("Mul", [x_scale, g.const("bank_scale", -2.0 * scale)])
        # |y|^2 - 2 x.y: the |x|^2 term is constant per row and does not move the ranking.
        partial = g.op(
            "Add",
            [
                g.op("Mul", [g.op("Cast", [dots], to=TensorProto.FLOAT), neg2_scale]),
                g.const("bank_sq", y_sq),
            ],
        )  # (N, rows + padding)
        local = (
            _group_shortlist(g, partial, groups)
            if grouped
            else g.op_n(
                "TopK",
                [partial, g.const("shortlist", _i64([min(SHORTLIST, len(chunk))]))],
                2,
                axis=1,
                largest=0,
                sorted=0,
            )[1]
        )
        candidates.append(g.op("Add", [local, g.const("offset", _i64([start]))]))
    shortlist = candidates[0] if len(candidates) == 1 else g.op("Concat", candidates, axis=1)
    nearest = g.op("Gather", [g.const("bank", bank), shortlist], axis=0)  # (N, S, C)
    diff = g.op("Sub", [g.op("Unsqueeze", [patches, g.const("ax1", _i64([1]))]), nearest])
    sq = g.op("ReduceSum", [g.op("Mul", [diff, diff]), g.const("ax2", _i64([2]))], keepdims=0)
    nearest_sq = g.op("ReduceMin", [sq, g.const("ax1", _i64([1]))], keepdims=0)
    return g.op("Sqrt", [nearest_sq])


def _group_shortlist(g: _Graph, partial: str, groups: int) -> str:
    """Rows ``(N, SHORTLIST)`` of ``partial (N, GROUP * groups)`` to re-rank exactly.

    Group j holds rows j, j + groups, j + 2 * groups, ...: the per-group minimum is then an
    element-wise minimum of GROUP contiguous slices (measured faster than a minimum over
    GROUP neighbouring rows). The nearest row of each of the SHORTLIST groups with the
    nearest minima is kept.
    """
    by_member = g.op("Reshape", [partial, g.const("by_member", _i64([0, GROUP, groups]))])
    group_min = g.op("ReduceMin", [by_member, g.const("ax1", _i64([1]))], keepdims=0)
    keep = min(SHORTLIST, groups)
    _, best = g.op_n(
        "TopK", [group_min, g.const("shortlist", _i64([keep]))], 2, axis=1, largest=0, sorted=0
    )  # (N, keep) group numbers
    member_offsets = groups * np.arange(GROUP, dtype=np.int64).reshape(1, 1, GROUP)
    member_rows = g.op(
        "Add",
        [g.op("Unsqueeze", [best, g.const("ax2", _i64([2]))]), g.const("members", member_offsets)],
    )  # (N, keep, GROUP) rows of the chosen groups
    values = g.op(
        "GatherElements",
        [partial, g.op("Reshape", [member_rows, g.const("flat", _i64([0, -1]))])],
        axis=1,
    )
    nearest_member = g.op(
        "ArgMin",
        [g.op("Reshape", [values, g.const("by_group", _i64([0, keep, GROUP]))])],
        axis=2,
        keepdims=1,
    )  # (N, keep, 1)
    rows = g.op("GatherElements", [member_rows, nearest_member], axis=2)
    return g.op("Squeeze", [rows, g.const("ax2", _i64([2]))])


def anomaly_map(g: _Graph, score_grid: str, processed_hw: str, image_hw: str, sigma: float) -> str:
    """Patch scores ``(h, w)`` -> map ``(H, W)`` at the image's size.

    The map is the patch grid upsampled (bilinear) to the processed size, blurred there
    (Gaussian, ``sigma`` in processed pixels, edges extended), then resized to the image.
    Every step is linear and acts on rows and columns separately, so the whole chain is
    ``A_rows @ scores @ A_cols.T``: each factor is the chain applied to the identity of one
    grid axis (an ``(h, 1, 1, h)`` tensor, a few kilobytes), and the map costs two small
    matrix products instead of a resize, two convolutions and a resize over the full-size
    map (measured: bench/README.md).
    """
    grid_h, grid_w = _split(g, g.op("Shape", [score_grid]))
    processed_h, processed_w = _split(g, processed_hw)
    image_h, image_w = _split(g, image_hw)
    rows = _axis_operator(g, grid_h, processed_h, image_h, sigma)  # (h, 1, 1, H)
    cols = _axis_operator(g, grid_w, processed_w, image_w, sigma)  # (w, 1, 1, W)
    flat = g.const("flat2", _i64([0, -1]))
    rows_t = g.op("Transpose", [g.op("Reshape", [rows, flat])], perm=[1, 0])  # (H, h)
    cols = g.op("Reshape", [cols, flat])  # (w, W)
    return g.op("MatMul", [g.op("MatMul", [rows_t, score_grid]), cols])


def _split(g: _Graph, hw: str) -> tuple[str, str]:
    """A height-width pair ``(2,)`` int64 as two ``(1,)`` tensors."""
    first = g.op("Slice", [hw, g.const("s0", _i64([0])), g.const("s1", _i64([1]))])
    second = g.op("Slice", [hw, g.const("s1", _i64([1])), g.const("s2", _i64([2]))])
    return first, second


def _axis_operator(g: _Graph, n: str, processed: str, final: str, sigma: float) -> str:
    """The map chain along one axis, applied to each of the ``n`` unit vectors at once.

    The identity ``(n, n)`` becomes ``n`` images of one pixel row, ``(n, 1, 1, n)`` (batch =
    which unit vector); the chain (resize to ``processed``, edge-padded Gaussian, resize to
    ``final``) runs along the row, giving ``(n, 1, 1, final)``: row ``i`` is where the score
    of grid cell ``i`` lands along this axis.
    """
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    square = g.op("ConstantOfShape", [g.op("Concat", [n, n], axis=0)], value=zero)
    one_one = g.const("one_one", _i64([1, 1]))
    units = g.op("Reshape", [g.op("EyeLike", [square]), g.op("Concat", [n, one_one, n], axis=0)])
    line = g.op(
        "Resize",
        [units, "", "", g.op("Concat", [n, one_one, processed], axis=0)],
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    if sigma > 0:
        kernel = _gaussian_kernel(sigma)
        radius = len(kernel) // 2
        # Edge padding: valid for any map size (reflect needs radius < side).
        pads = g.const("pads", _i64([0, 0, 0, radius, 0, 0, 0, radius]))
        line = g.op("Pad", [line, pads], mode="edge")
        line = g.op("Conv", [line, g.const("kernel", kernel.reshape(1, 1, 1, -1))])
    return g.op(
        "Resize",
        [line, "", "", g.op("Concat", [n, one_one, final], axis=0)],
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
