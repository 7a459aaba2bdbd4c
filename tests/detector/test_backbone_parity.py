"""The EfficientNet-Lite0 ONNX extractor against the reference PyTorch implementation.

The ONNX graph is hand-built (BN folded, SAME_UPPER padding), so the only proof that it is the
same network is numerical parity with ``efficientnet_lite_pytorch`` on the same weights. Those
tests need torch and are skipped where it is absent; the contract-shape test runs everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from app.detector.backbones.efficientnet_lite import (
    EFFICIENTNET_LITE0,
    build_efficientnet_lite0,
    efficientnet_lite0_weights_path,
)

# Reference block indices (in ``model._blocks``) of the last block of each tapped stage:
# blocks 3-4 are the 40-channel stride-8 stage, blocks 8-10 the 112-channel stride-16 stage.
_REFERENCE_TAPS = {"stage3": 4, "stage5": 10}
# Max abs difference allowed, relative to the reference output's max abs value. Measured
# differences are ~5e-5 on outputs of magnitude ~20-30 (~2e-6 relative); a wrong BN epsilon
# (1e-5 instead of 1e-3) gives ~1e-2 relative, so this keeps a wide margin on both sides.
_RELATIVE_TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    model = build_efficientnet_lite0()
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB image normalised as the spec says: ``(1, 3, H, W)`` float32."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(1, 3, height, width)).astype(np.float32)
    mean = np.asarray(EFFICIENTNET_LITE0.mean, np.float32)[None, :, None, None]
    std = np.asarray(EFFICIENTNET_LITE0.std, np.float32)[None, :, None, None]
    return (image - mean) / std


@pytest.mark.parametrize(("height", "width"), [(224, 224), (256, 256), (256, 512)])
def test_outputs_follow_the_contract(
    session: ort.InferenceSession, height: int, width: int
) -> None:
    names = [layer.output for layer in EFFICIENTNET_LITE0.layers]
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    assert [o.name for o in session.get_outputs()] == names
    outputs = session.run(names, {"pixels": _pixels(height, width)})
    for layer, value in zip(EFFICIENTNET_LITE0.layers, outputs, strict=True):
        assert value.dtype == np.float32
        assert value.shape == (1, layer.channels, height // layer.stride, width // layer.stride)
        assert np.isfinite(value).all()


def _reference_features(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Reference stage outputs: the stem and blocks of ``extract_features``, tapped midway.

    The reference pads statically for the ``image_size`` it is built with, so it is built for
    this input's exact ``(H, W)``.
    """
    torch: Any = pytest.importorskip("torch")
    reference: Any = pytest.importorskip("efficientnet_lite_pytorch")
    height, width = pixels.shape[2:]
    model = reference.EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=str(efficientnet_lite0_weights_path()),
        image_size=(height, width),
    ).eval()
    features: dict[str, np.ndarray] = {}
    last = max(_REFERENCE_TAPS.values())
    with torch.no_grad():
        x = model._swish(model._bn0(model._conv_stem(torch.from_numpy(pixels))))
        for index, block in enumerate(model._blocks[: last + 1]):
            x = block(x)  # eval mode: drop-connect is a no-op, as in extract_features
            for name, tap in _REFERENCE_TAPS.items():
                if tap == index:
                    features[name] = x.numpy().copy()
    return features


@pytest.mark.torch
@pytest.mark.parametrize(("height", "width"), [(224, 224), (256, 512)])
def test_matches_reference(session: ort.InferenceSession, height: int, width: int) -> None:
    pixels = _pixels(height, width, seed=height + width)
    expected = _reference_features(pixels)
    names = list(_REFERENCE_TAPS)
    actual = dict(zip(names, session.run(names, {"pixels": pixels}), strict=True))
    for name in names:
        assert actual[name].shape == expected[name].shape, name
        scale = float(np.abs(expected[name]).max())
        diff = float(np.abs(actual[name] - expected[name]).max())
        assert scale > 1.0, f"{name}: reference output is suspiciously small ({scale})"
        assert diff <= _RELATIVE_TOLERANCE * scale, f"{name}: max abs diff {diff} (scale {scale})"
