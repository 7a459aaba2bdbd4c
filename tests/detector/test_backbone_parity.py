"""The EfficientNet-Lite0 and -Lite2 ONNX extractors against the reference PyTorch
implementation.

The ONNX graph is hand-built (BN folded, SAME_UPPER padding), so the only proof that it is the
same network is numerical parity with ``efficientnet_lite_pytorch`` on the same weights. Those
tests need torch and are skipped where it is absent; the contract-shape test runs everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from app.detector.backbones.base import BackboneSpec
from app.detector.backbones.efficientnet_lite import (
    EFFICIENTNET_LITE0,
    EFFICIENTNET_LITE2,
    efficientnet_lite0_weights_path,
    efficientnet_lite2_weights_path,
)

# Per network: the reference's name, its weights, and the reference block indices (in
# ``model._blocks``) of the last block of each tapped stage. Lite0: blocks 3-4 are the
# 40-channel stride-8 stage, blocks 8-10 the 112-channel stride-16 stage; Lite2: blocks 4-6
# the 48-channel stage, 11-14 the 120-channel one.
_NETWORKS: dict[str, tuple[BackboneSpec, str, Any, dict[str, int]]] = {
    "lite0": (EFFICIENTNET_LITE0, "efficientnet-lite0", efficientnet_lite0_weights_path,
              {"stage3": 4, "stage5": 10}),
    "lite2": (EFFICIENTNET_LITE2, "efficientnet-lite2", efficientnet_lite2_weights_path,
              {"stage3": 6, "stage5": 14}),
}
# Max abs difference allowed, relative to the reference output's max abs value. Measured
# differences are ~5e-5 on outputs of magnitude ~20-30 (~2e-6 relative); a wrong BN epsilon
# (1e-5 instead of 1e-3) gives ~1e-2 relative, so this keeps a wide margin on both sides.
_RELATIVE_TOLERANCE = 2e-4


@pytest.fixture(scope="module", params=list(_NETWORKS))
def network(request: pytest.FixtureRequest) -> tuple[ort.InferenceSession, str]:
    spec = _NETWORKS[request.param][0]
    model = spec.build()
    return (ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]),
            request.param)


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB image normalised as both specs say: ``(1, 3, H, W)`` float32."""
    assert EFFICIENTNET_LITE0.mean == EFFICIENTNET_LITE2.mean
    assert EFFICIENTNET_LITE0.std == EFFICIENTNET_LITE2.std
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(1, 3, height, width)).astype(np.float32)
    mean = np.asarray(EFFICIENTNET_LITE0.mean, np.float32)[None, :, None, None]
    std = np.asarray(EFFICIENTNET_LITE0.std, np.float32)[None, :, None, None]
    return (image - mean) / std


@pytest.mark.parametrize(("height", "width"), [(224, 224), (256, 256), (256, 512)])
def test_outputs_follow_the_contract(
    network: tuple[ort.InferenceSession, str], height: int, width: int
) -> None:
    session, name = network
    spec = _NETWORKS[name][0]
    names = [layer.output for layer in spec.layers]
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    assert [o.name for o in session.get_outputs()] == names
    outputs = session.run(names, {"pixels": _pixels(height, width)})
    for layer, value in zip(spec.layers, outputs, strict=True):
        assert value.dtype == np.float32
        assert value.shape == (1, layer.channels, height // layer.stride, width // layer.stride)
        assert np.isfinite(value).all()


def _reference_features(pixels: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """Reference stage outputs: the stem and blocks of ``extract_features``, tapped midway.

    The reference pads statically for the ``image_size`` it is built with, so it is built for
    this input's exact ``(H, W)``.
    """
    torch: Any = pytest.importorskip("torch")
    reference: Any = pytest.importorskip("efficientnet_lite_pytorch")
    _, reference_name, weights, taps = _NETWORKS[name]
    height, width = pixels.shape[2:]
    model = reference.EfficientNet.from_pretrained(
        reference_name, weights_path=str(weights()), image_size=(height, width),
    ).eval()
    features: dict[str, np.ndarray] = {}
    last = max(taps.values())
    with torch.no_grad():
        x = model._swish(model._bn0(model._conv_stem(torch.from_numpy(pixels))))
        for index, block in enumerate(model._blocks[: last + 1]):
            x = block(x)  # eval mode: drop-connect is a no-op, as in extract_features
            for output, tap in taps.items():
                if tap == index:
                    features[output] = x.numpy().copy()
    return features


@pytest.mark.torch
@pytest.mark.parametrize(("height", "width"), [(224, 224), (256, 512)])
def test_matches_reference(
    network: tuple[ort.InferenceSession, str], height: int, width: int
) -> None:
    session, name = network
    pixels = _pixels(height, width, seed=height + width)
    expected = _reference_features(pixels, name)
    outputs = list(_NETWORKS[name][3])
    actual = dict(zip(outputs, session.run(outputs, {"pixels": pixels}), strict=True))
    for out in outputs:
        assert actual[out].shape == expected[out].shape, out
        scale = float(np.abs(expected[out]).max())
        diff = float(np.abs(actual[out] - expected[out]).max())
        assert scale > 1.0, f"{out}: reference output is suspiciously small ({scale})"
        assert diff <= _RELATIVE_TOLERANCE * scale, f"{out}: max abs diff {diff} (scale {scale})"


def test_a_stage_table_that_stops_inside_a_stage_is_refused() -> None:
    from dataclasses import replace

    from app.detector.backbones import efficientnet_lite as lite

    short = (*lite._LITE2_STAGES[:-1], replace(lite._LITE2_STAGES[-1], repeats=3))
    with pytest.raises(ValueError, match="block 14 still belongs"):
        lite._build(EFFICIENTNET_LITE2, short, efficientnet_lite2_weights_path())
