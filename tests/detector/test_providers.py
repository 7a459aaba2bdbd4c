"""Execution providers: a GPU provider is a setting; where it is missing, CPU still runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.detector.engine import FittedModel
from app.detector.runtime import CompiledModel, RuntimeOptions


def test_unavailable_provider_falls_back_to_cpu_with_same_score(
    fitted: FittedModel, good_image: Callable[..., np.ndarray]
) -> None:
    image = good_image(7)
    cpu = CompiledModel(fitted.onnx_bytes, RuntimeOptions())
    wanted = RuntimeOptions(providers=("NoSuchExecutionProvider", "CPUExecutionProvider"))
    fallback = CompiledModel(fitted.onnx_bytes, wanted)
    assert "CPUExecutionProvider" in fallback.session.get_providers()
    assert fallback.score(image) == cpu.score(image)
