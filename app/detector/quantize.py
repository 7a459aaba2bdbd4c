"""8-bit backbones: weights and activations in int8, calibrated on a model's own images.

The backbone's convolutions are most of the time per image on a CPU (bench/README.md).
onnxruntime runs them about twice as fast in 8 bits (the whole model: up to about 1.2x the
images per second, depending on the CPU's 8-bit throughput; BENCHMARKS.md), but activation
ranges must come from real inputs: a per-model quantisation calibrated on that model's
training images fits their ranges exactly and needs no data shipped with the project. The
memory bank is then built from the quantised backbone's own features, so bank and query are
measured alike; the accuracy cost is measured in BENCHMARKS.md.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

# Calibration images a fit hands over: activation ranges settle after a few; more only add
# fit time.
MAX_CALIBRATION_INPUTS = 8


def _drop_preprocessing_advice(record: logging.LogRecord) -> bool:
    """onnxruntime's quantiser advises a shape-inference pass on the root logger at every
    call, and names every shape tensor of a ViT it leaves in float ("Inference failed or
    unsupported type to quantize"): our backbones are shape-complete and those tensors are
    meant to stay as they are, so both are only log noise."""
    message = record.getMessage()
    return ("pre-processing before quantization" not in message
            and "unsupported type to quantize" not in message)


@contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """The root logger drops that advice while the quantiser runs, and only then."""
    root = logging.getLogger()
    root.addFilter(_drop_preprocessing_advice)
    try:
        yield
    finally:
        root.removeFilter(_drop_preprocessing_advice)


class _Inputs(CalibrationDataReader):
    def __init__(self, name: str, inputs: Sequence[np.ndarray]) -> None:
        self._feed: Iterator[dict[str, np.ndarray]] = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feed, None)


def _shape_only_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes whose outputs do not depend on the input's values (at most on its
    shape, through ``Shape``)."""
    valued = {i.name for i in model.graph.input}
    names = []
    for node in model.graph.node:  # topological order
        if node.op_type != "Shape" and valued.intersection(node.input):
            valued.update(node.output)
        else:
            names.append(node.name)
    return names


def quantize_backbone(backbone: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> onnx.ModelProto:
    """The backbone with int8 convolutions (``QLinearConv``), ranges from ``inputs``.

    ``inputs`` are backbone input tensors ``(1, 3, H, W)`` (sizes may differ). Weights are
    per output channel with seven bits (``reduce_range``): on CPUs without VNNI, onnxruntime's
    uint8 x int8 products saturate int16 pair sums with eight. Activations are uint8, ranges
    min-max over all the inputs (the caller picks how many: ``MAX_CALIBRATION_INPUTS``).
    """
    if not inputs:
        raise ValueError("need at least one input to calibrate an 8-bit backbone")
    name = backbone.graph.input[0].name
    # Nodes that read no pixel value (the ViT position table's resize to the token grid, which
    # reads only the input's shape) keep float32: their ranges do not come from images.
    constant = _shape_only_nodes(backbone)
    with tempfile.TemporaryDirectory(prefix="nominal-int8-") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(backbone, str(source))
        with _without_preprocessing_advice():
            quantize_static(
                str(source),
                str(target),
                _Inputs(name, inputs),
                quant_format=QuantFormat.QOperator,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=constant,
            )
        return onnx.load(str(target))
