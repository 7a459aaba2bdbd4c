"""Through the API: a stored model whose format this release does not read is a clear 409
problem at inspect (not a 500), and the variant serves again once a readable model is back.

The case this stands for: a later release (format 2) trained and activated a model, and this
release serves the same database again (a rollback, or old replicas during a rolling upgrade).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import onnx
from sqlalchemy import create_engine, select, update

from app.db.models import ModelArtifact
from app.detector.runtime import (
    FORMAT_VERSION,
    METADATA_PREFIX,
    OLDEST_READABLE_FORMAT_VERSION,
)
from tests.conftest import Api, good_png

KEY = METADATA_PREFIX + "format_version"


def _store(database_url: str, model_id: int, data: bytes) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(update(ModelArtifact).where(ModelArtifact.model_id == model_id)
                               .values(onnx=data, sha256=hashlib.sha256(data).hexdigest(),
                                       size_bytes=len(data)))
    finally:
        engine.dispose()


def test_inspect_refuses_a_model_of_a_newer_format(
    trained: Api, database_url: str, problem: Callable[[Any, int], dict[str, Any]]
) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            model_id, original = connection.execute(
                select(ModelArtifact.model_id, ModelArtifact.onnx)).one()
    finally:
        engine.dispose()
    model = onnx.load_from_string(original)
    newer = str(int(FORMAT_VERSION) + 1)
    props = {p.key: p.value for p in model.metadata_props} | {KEY: newer}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    _store(database_url, model_id, model.SerializeToString())

    image = {"content": good_png(9), "headers": {"Content-Type": "image/png"}}
    body = problem(trained.client.post("/v1/variants/bolt/inspect", **image), 409)
    assert body["type"] == "urn:nominal:problem:unsupported-model-format"
    assert body["title"] == "Unsupported model format"
    assert f"model format version {newer} is newer than this release" in body["detail"]
    reads = f"reads model format versions {OLDEST_READABLE_FORMAT_VERSION} to {FORMAT_VERSION}"
    assert reads in body["detail"]
    # Refused every time (nothing half-loaded is cached), and served again once readable.
    problem(trained.client.post("/v1/variants/bolt/inspect", **image), 409)
    _store(database_url, model_id, bytes(original))
    response = trained.client.post("/v1/variants/bolt/inspect", **image)
    assert response.status_code == 200, response.text


def test_activation_refuses_a_model_of_a_newer_format(
    trained: Api, database_url: str, problem: Callable[[Any, int], dict[str, Any]]
) -> None:
    """Refused before it goes live, not at the line's first inspection; the active model
    stays."""
    second = trained.train("bolt", seed=1, activate=False)
    assert second["status"] == "ready", second
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            model_id, original = connection.execute(
                select(ModelArtifact.model_id, ModelArtifact.onnx)
                .order_by(ModelArtifact.model_id.desc()).limit(1)).one()
    finally:
        engine.dispose()
    model = onnx.load_from_string(original)
    props = {p.key: p.value for p in model.metadata_props} | {KEY: "99"}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    _store(database_url, model_id, model.SerializeToString())

    body = problem(trained.client.post(f"/v1/variants/bolt/models/{second['version']}/activate"),
                   409)
    assert body["type"] == "urn:nominal:problem:unsupported-model-format"
    assert "model format version 99 is newer than this release" in body["detail"]
    assert trained.client.get("/v1/variants/bolt").json()["active_model_version"] == 1
    _store(database_url, model_id, bytes(original))
    response = trained.client.post(f"/v1/variants/bolt/models/{second['version']}/activate")
    assert response.status_code == 200, response.text
