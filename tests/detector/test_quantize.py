"""8-bit backbones: a model fitted with ``precision="int8"`` is a real int8 model that runs
alone, agrees with the engine's own path, and still separates defects from good parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.detector.backbones import get_backbone
from app.detector.config import DetectorConfig
from app.detector.engine import (
    Detector,
    FeatureExtractor,
    FittedModel,
    bank_from_model,
    plan_from_model,
    resize_plan,
)
from app.detector.quantize import quantize_backbone

SPEC = get_backbone("efficientnet_lite0")
INT8 = DetectorConfig(backbone=SPEC.name, resolution=96, precision="int8")


@pytest.fixture(scope="module")
def fitted_int8(detector: Detector, train_images: list[np.ndarray]) -> FittedModel:
    return detector.fit(train_images, INT8, seed=0)


def test_int8_model_convolves_in_eight_bits(fitted_int8: FittedModel) -> None:
    ops = [node.op_type for node in onnx.load_from_string(fitted_int8.onnx_bytes).graph.node]
    assert "QLinearConv" in ops
    assert ops.count("Conv") == 2  # float convolutions left: only the map's Gaussian blur
    assert fitted_int8.timings["quantize_s"] > 0


def test_int8_file_runs_alone_and_matches_the_engine(
    fitted_int8: FittedModel, detector: Detector, good_image: Callable[..., np.ndarray]
) -> None:
    session = ort.InferenceSession(fitted_int8.onnx_bytes, providers=["CPUExecutionProvider"])
    image = good_image(31, 80, 120)
    score, anomaly_map = session.run(["score", "anomaly_map"], {"image": image})
    assert anomaly_map.shape == (80, 120) and np.isfinite(anomaly_map).all()
    engine = detector.patch_scores(
        image,
        bank_from_model(fitted_int8.onnx_bytes),
        INT8,
        plan_from_model(fitted_int8.onnx_bytes),
        backbone=fitted_int8.backbone,
    )
    assert abs(score[0] - engine.patches.max()) / engine.patches.max() < 1e-4


def test_int8_model_still_tells_defects_from_good_parts(
    fitted_int8: FittedModel,
    good_image: Callable[..., np.ndarray],
    defect_image: Callable[..., Any],
) -> None:
    session = ort.InferenceSession(fitted_int8.onnx_bytes, providers=["CPUExecutionProvider"])
    good = [session.run(["score"], {"image": good_image(s)})[0][0] for s in range(10, 15)]
    defect = session.run(["score"], {"image": defect_image(20).image})[0][0]
    assert defect > fitted_int8.threshold >= max(good)


def test_int8_features_stay_close_to_float32(
    detector: Detector, train_images: list[np.ndarray]
) -> None:
    plan = resize_plan(INT8, train_images)
    float_extractor = detector.extractor(INT8, plan)
    inputs = [float_extractor.backbone_input(image) for image in train_images]
    int8 = quantize_backbone(detector.backbone(SPEC.name), inputs)
    int8_extractor = FeatureExtractor(SPEC, int8, plan, detector.options)
    a, b = float_extractor(train_images[0]).patches, int8_extractor(train_images[0]).patches
    # Relative error of the patch features as a whole: quantisation noise, not a different map.
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.2


def test_quantize_needs_inputs(detector: Detector) -> None:
    with pytest.raises(ValueError, match="at least one input"):
        quantize_backbone(detector.backbone("efficientnet_lite0"), [])


def test_the_quantisers_noise_is_dropped_and_nothing_else() -> None:
    import logging

    from app.detector.quantize import _drop_preprocessing_advice

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("root", logging.WARNING, __file__, 1, message, None, None)

    assert not _drop_preprocessing_advice(record(
        "Please consider to run pre-processing before quantization. Refer to example: ..."))
    assert not _drop_preprocessing_advice(record(
        "Inference failed or unsupported type to quantize for tensor '/backbone/x', type is"))
    assert _drop_preprocessing_advice(record("training job 1 ready"))
