"""Fused ViT kernels change the scoring session's graph, never the file, and not the figures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from app.detector.config import DetectorConfig
from app.detector.engine import Detector
from app.detector.fusion import fuse_transformer_blocks, has_transformer_blocks
from app.detector.runtime import CompiledModel, RuntimeOptions, split_score_and_map
from tests.detector.conftest import make_defect, make_good


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def test_a_vit_model_scores_the_same_fused_and_plain(detector: Detector) -> None:
    config = DetectorConfig.from_dict({"preset": "accurate", "resolution": 70})
    fitted = detector.fit([make_good(s) for s in range(2)], config, seed=0)
    stored = onnx.load_from_string(fitted.onnx_bytes)
    score_part, _, _ = split_score_and_map(stored)
    fused = fuse_transformer_blocks(onnx.load_from_string(score_part.SerializeToString()))
    assert _ops(fused)["SkipLayerNormalization"] > 0 and _ops(fused)["BiasGelu"] > 0
    assert "SkipLayerNormalization" not in _ops(stored)  # the file stays standard ONNX
    assert {i.domain for i in stored.opset_import} <= {"", "ai.onnx"}

    plain = CompiledModel(fitted.onnx_bytes, RuntimeOptions(threads=1, fuse_transformers=False))
    quick = CompiledModel(fitted.onnx_bytes, RuntimeOptions(threads=1))
    for image in (make_good(7), make_defect(8).image):
        a, b = plain.inspect(image), quick.inspect(image)
        assert np.isclose(a.score, b.score, rtol=1e-4), (a.score, b.score)
        assert a.is_anomalous == b.is_anomalous


def test_a_cnn_model_has_nothing_to_fuse(detector: Detector) -> None:
    fitted = detector.fit([make_good(0)], DetectorConfig(resolution=64), seed=0)
    model = onnx.load_from_string(fitted.onnx_bytes)
    assert not has_transformer_blocks(model)
    assert fuse_transformer_blocks(model) is model
