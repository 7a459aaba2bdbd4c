"""Running ONNX graphs: session options in one place, and the shipped model as an object."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from app.detector.calibration import normalize_score
from app.errors import InvalidInputError

METADATA_PREFIX = "nominal."
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class RuntimeOptions:
    """How ONNX sessions run. ``threads`` is per session (intra-op); CPU is the default."""

    threads: int = 2
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def session(self, model: bytes | str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = set(ort.get_available_providers())
        providers = [p for p in self.providers if p in available] or ["CPUExecutionProvider"]
        return ort.InferenceSession(model, sess_options=options, providers=providers)


@dataclass(frozen=True)
class Verdict:
    """One inspected image: raw and normalised score against the model's threshold."""

    score: float
    normalized_score: float
    threshold: float
    is_anomalous: bool
    anomaly_map: np.ndarray | None = None  # (H, W) float32 when requested


def check_image_array(image: np.ndarray) -> np.ndarray:
    """Validate an RGB image array ``(H, W, 3)`` uint8 and return it contiguous."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InvalidInputError(f"image must be an (H, W, 3) RGB array, got shape {shape}")
    if image.dtype != np.uint8:
        raise InvalidInputError(f"image must be uint8, got {image.dtype}")
    if min(image.shape[:2]) < 8:
        raise InvalidInputError(
            f"image must be at least 8x8 px, got {image.shape[1]}x{image.shape[0]}"
        )
    return np.ascontiguousarray(image)


class CompiledModel:
    """A trained model's single ONNX file, loaded for scoring.

    Reads its threshold from the file's own metadata, so the file is the whole truth.
    """

    def __init__(self, onnx_bytes: bytes, options: RuntimeOptions | None = None) -> None:
        self.session = (options or RuntimeOptions()).session(onnx_bytes)
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(props)
        self.threshold = float(props[METADATA_PREFIX + "threshold"])
        self.size_bytes = len(onnx_bytes)

    @property
    def calibration(self) -> dict[str, Any]:
        return json.loads(self.metadata.get(METADATA_PREFIX + "calibration", "{}"))

    def run(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """``image (H, W, 3)`` uint8 -> (score, anomaly map ``(H, W)``)."""
        score, anomaly_map = self.session.run(
            ["score", "anomaly_map"], {"image": check_image_array(image)}
        )
        return float(score[0]), anomaly_map

    def score(self, image: np.ndarray) -> float:
        (score,) = self.session.run(["score"], {"image": check_image_array(image)})
        return float(score[0])

    def inspect(self, image: np.ndarray, *, with_map: bool = False) -> Verdict:
        if with_map:
            score, anomaly_map = self.run(image)
        else:
            score, anomaly_map = self.score(image), None
        return Verdict(
            score=score,
            normalized_score=normalize_score(score, self.threshold),
            threshold=self.threshold,
            is_anomalous=score > self.threshold,
            anomaly_map=anomaly_map,
        )
