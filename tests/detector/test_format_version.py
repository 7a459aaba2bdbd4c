"""``nominal.format_version``: what the model reader loads and what it refuses.

The policy is in ``app.detector.runtime`` (``read_format_version``): versions from
``OLDEST_READABLE_FORMAT_VERSION`` to ``FORMAT_VERSION`` load; a newer, older, missing or
malformed version is an ``UnsupportedModelFormatError`` that names the versions this release
reads. tests/upgrade pins the other half: the models a release wrote keep their scores.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest

from app.detector import runtime
from app.detector.engine import FittedModel
from app.detector.runtime import (
    FORMAT_VERSION,
    METADATA_PREFIX,
    OLDEST_READABLE_FORMAT_VERSION,
    CompiledModel,
    read_format_version,
)
from app.errors import ConflictError, UnsupportedModelFormatError
from tests.detector.conftest import Defect

KEY = METADATA_PREFIX + "format_version"


def with_format_version(onnx_bytes: bytes, value: str | None) -> bytes:
    """The model file with ``nominal.format_version`` set to ``value`` (None: removed)."""
    model = onnx.load_from_string(onnx_bytes)
    props = {p.key: p.value for p in model.metadata_props if p.key != KEY}
    if value is not None:
        props[KEY] = value
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()


def test_the_engine_writes_the_current_version(fitted: FittedModel) -> None:
    props = {p.key: p.value for p in onnx.load_from_string(fitted.onnx_bytes).metadata_props}
    assert props[KEY] == FORMAT_VERSION
    assert read_format_version(props) == int(FORMAT_VERSION)


def test_the_current_version_loads(
    fitted: FittedModel, good_image: Callable[..., np.ndarray]
) -> None:
    image = good_image(7)
    original = CompiledModel(fitted.onnx_bytes)
    retagged = CompiledModel(with_format_version(fitted.onnx_bytes, f" {FORMAT_VERSION}"))
    assert original.format_version == retagged.format_version == int(FORMAT_VERSION)
    assert retagged.score(image) == original.score(image)


def test_a_newer_version_is_refused_with_what_to_do(fitted: FittedModel) -> None:
    newer = str(int(FORMAT_VERSION) + 1)
    with pytest.raises(UnsupportedModelFormatError) as raised:
        CompiledModel(with_format_version(fitted.onnx_bytes, newer))
    detail = raised.value.detail
    assert f"model format version {newer} is newer than this release" in detail
    reads = f"reads model format versions {OLDEST_READABLE_FORMAT_VERSION} to {FORMAT_VERSION}"
    assert reads in detail
    assert "upgrade this service" in detail
    assert isinstance(raised.value, ConflictError)  # HTTP 409


def test_a_missing_version_is_refused(fitted: FittedModel) -> None:
    with pytest.raises(UnsupportedModelFormatError, match="no nominal.format_version"):
        CompiledModel(with_format_version(fitted.onnx_bytes, None))


@pytest.mark.parametrize("value", ["", "one", "1.5", "0", "-1"])
def test_a_malformed_version_is_refused(fitted: FittedModel, value: str) -> None:
    with pytest.raises(UnsupportedModelFormatError, match="not a version this release"):
        CompiledModel(with_format_version(fitted.onnx_bytes, value))


def test_older_versions_load_down_to_the_oldest_readable(
    fitted: FittedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a later release would see it: it writes 3, still reads 2, no longer reads 1."""
    monkeypatch.setattr(runtime, "FORMAT_VERSION", "3")
    monkeypatch.setattr(runtime, "OLDEST_READABLE_FORMAT_VERSION", 2)
    assert read_format_version({KEY: "3"}) == 3
    assert read_format_version({KEY: "2"}) == 2
    with pytest.raises(UnsupportedModelFormatError) as raised:
        read_format_version({KEY: "1"})
    assert "older than this release" in raised.value.detail
    assert "reads model format versions 2 to 3" in raised.value.detail
    with pytest.raises(UnsupportedModelFormatError, match="newer"):
        read_format_version({KEY: "4"})
    model = CompiledModel(with_format_version(fitted.onnx_bytes, "2"))
    assert model.format_version == 2
    assert np.isfinite(model.threshold)


def as_format_1(onnx_bytes: bytes) -> bytes:
    """The model file as format 1 wrote it: no ``patch_scores`` output, no regions metadata."""
    model = onnx.load_from_string(onnx_bytes)
    kept = [o for o in model.graph.output if o.name != "patch_scores"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    (identity,) = [n for n in model.graph.node if "patch_scores" in n.output]
    model.graph.node.remove(identity)
    props = {p.key: p.value for p in model.metadata_props
             if p.key != METADATA_PREFIX + "regions"} | {KEY: "1"}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()


def test_a_format_1_file_reports_the_same_score_and_regions(
    fitted: FittedModel, defect_image: Callable[..., Defect]
) -> None:
    """Version 1 files have no patch_scores output: the reader finds the grid their map is
    made from, so they answer regions like a version 2 file."""
    image = defect_image(3).image
    current = CompiledModel(fitted.onnx_bytes).inspect(image, with_map=True)
    legacy_model = CompiledModel(as_format_1(fitted.onnx_bytes))
    legacy = legacy_model.inspect(image, with_map=True)
    assert legacy_model.format_version == 1
    assert legacy_model.split_error is None
    assert legacy.score == current.score
    assert legacy.regions == current.regions and current.regions
    np.testing.assert_array_equal(legacy.anomaly_map, current.anomaly_map)


def test_a_format_1_file_of_another_shape_is_refused(fitted: FittedModel) -> None:
    model = onnx.load_from_string(as_format_1(fitted.onnx_bytes))
    (identity,) = [n for n in model.graph.node if "anomaly_map" in n.output]
    identity.op_type = "Relu"
    with pytest.raises(UnsupportedModelFormatError, match="patch scores cannot be found"):
        CompiledModel(model.SerializeToString())
