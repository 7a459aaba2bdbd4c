"""Inspecting images with a variant's active model.

Per request: one indexed query finds the active (variant, version) -- so an activation on any
replica is seen at once -- then the ``ModelCache`` hands out the loaded ONNX session, reading
the artefact from the database only on a miss. Decoding and scoring are CPU work: callers run
these functions in a worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.db.models import Model, ModelArtifact, ModelStatus, Variant
from app.db.session import Database
from app.detector.heatmap import render_heatmap_png
from app.detector.runtime import CompiledModel, RuntimeOptions
from app.detector.verdict import Verdict
from app.errors import ConflictError, NoActiveModelError, NotFoundError
from app.services import records
from app.services.images import decode
from app.services.metrics import Metrics
from app.services.records import CallerContext, Inspected, RecordPolicy, store_records

# (variant id, model version, artefact sha256, ...): the first item is the variant, for eviction.
# The sha256 makes a key name one file for good: SQLite reuses the ids of deleted rows, and
# another process (a second replica or uvicorn worker) never hears of a deletion, so
# (variant id, version) alone could come back meaning a different model.
CacheKey = tuple[Any, ...]


class ModelCache:
    """LRU of loaded ``CompiledModel`` sessions keyed by ``CacheKey``, at most
    ``capacity`` of them. Thread-safe; concurrent misses of one key load it once."""

    def __init__(self, capacity: int, options: RuntimeOptions,
                 metrics: Metrics | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.options = options
        self._entries: OrderedDict[CacheKey, CompiledModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[CacheKey, threading.Lock] = {}
        self._metrics = metrics
        self.loads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[CacheKey]:
        with self._lock:
            return list(self._entries)

    def get(self, key: CacheKey, load_bytes: Callable[[], bytes]) -> CompiledModel:
        """The session for ``key``, built from ``load_bytes()`` on a miss. A load that raises
        leaves nothing behind: the next call for ``key`` tries again."""
        with self._lock:
            model = self._entries.get(key)
            if model is not None:
                self._entries.move_to_end(key)
                return model
            key_lock = self._loading.setdefault(key, threading.Lock())
        try:
            with key_lock:  # one loader per key; others wait for it instead of loading again
                with self._lock:
                    model = self._entries.get(key)
                    if model is not None:
                        self._entries.move_to_end(key)
                        return model
                model = CompiledModel(load_bytes(), self.options)
                with self._lock:
                    self._entries[key] = model
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.capacity:
                        self._entries.popitem(last=False)
                    self.loads += 1
        finally:
            with self._lock:
                if self._loading.get(key) is key_lock and not key_lock.locked():
                    del self._loading[key]
        if self._metrics is not None:
            self._metrics.model_cache_loads.inc()
            if model.split_error is not None:
                self._metrics.model_split_fallbacks.inc()
        self._changed()
        return model

    def _changed(self) -> None:
        if self._metrics is not None:
            self._metrics.model_cache_size.set(len(self._entries))

    def evict_variant(self, variant_id: int) -> None:
        """Drop every version of a variant (it was deleted)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == variant_id]:
                del self._entries[key]
        self._changed()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        self._changed()


@dataclass(frozen=True)
class ActiveModel:
    variant_id: int
    variant: str
    model_id: int
    version: int
    artifact_sha256: str | None  # None: the model's file is gone (deleted meanwhile)
    record_policy: RecordPolicy = field(default_factory=RecordPolicy)


@dataclass(frozen=True)
class Inspection:
    """One inspected image: the verdict of the active model and where it came from."""

    variant: str
    model_version: int
    verdict: Verdict
    latency_ms: float
    width: int
    height: int
    heatmap_png: bytes | None = None
    record_id: int | None = None  # None: the variant does not record inspections


def active_model(database: Database, *, name: str) -> ActiveModel:
    """The variant's active model, read fresh from the database on every request (one query
    over three primary / unique keys), so an activation on any replica is served at once."""
    with database.reading() as session:
        row = session.execute(
            select(Variant.id, Variant.active_model_id, Model.version, ModelArtifact.sha256,
                   Variant.records)
            .outerjoin(Model, Model.id == Variant.active_model_id)
            .outerjoin(ModelArtifact, ModelArtifact.model_id == Variant.active_model_id)
            .where(Variant.name == name)
        ).one_or_none()
    if row is None:
        raise NotFoundError(f"variant {name!r} not found")
    variant_id, model_id, version, sha256, records = row
    if model_id is None:
        raise NoActiveModelError(_why_no_active_model(database, name, variant_id))
    return ActiveModel(variant_id=variant_id, variant=name, model_id=model_id, version=version,
                       artifact_sha256=sha256, record_policy=RecordPolicy.of(records))


def _why_no_active_model(database: Database, name: str, variant_id: int) -> str:
    """What to do about a variant without an active model: activate the newest ready one (a
    model the quality gate kept inactive, or trained with ``activate`` false), or train one."""
    with database.reading() as session:
        ready = session.execute(
            select(Model.version).where(Model.variant_id == variant_id,
                                        Model.status == ModelStatus.ready.value)
            .order_by(Model.version.desc()).limit(1)
        ).scalar_one_or_none()
    if ready is None:
        return (f"variant {name!r} has no active model yet; train one with POST "
                f"/v1/variants/{name}/models and wait until it is ready")
    return (f"variant {name!r} has no active model: version {ready} is ready but inactive (its "
            f"quality.warnings say why, e.g. below the variant's min_expected_auroc); activate "
            f"it with POST /v1/variants/{name}/models/{ready}/activate")


def _gone(active: ActiveModel) -> NotFoundError:
    """A variant or model deleted while this request was under way: a clean 404."""
    return NotFoundError(f"model version {active.version} of variant {active.variant!r} is no "
                         "longer stored (deleted meanwhile)")


def load_model(database: Database, cache: ModelCache, active: ActiveModel) -> CompiledModel:
    if active.artifact_sha256 is None:
        raise _gone(active)

    def read_artifact() -> bytes:
        with database.reading() as session:
            data = session.scalar(select(ModelArtifact.onnx)
                                  .where(ModelArtifact.model_id == active.model_id,
                                         ModelArtifact.sha256 == active.artifact_sha256))
        if data is None:
            raise _gone(active)
        return bytes(data)

    return cache.get((active.variant_id, active.version, active.artifact_sha256), read_artifact)


def inspect_images(database: Database, cache: ModelCache, metrics: Metrics, *, name: str,
                   images: Sequence[bytes], max_pixels: int, heatmap: bool = False,
                   labels: Sequence[str] | None = None,
                   max_regions: int | None = None) -> InspectionRun:
    """Decode and score ``images`` with the variant's active model, in order (blocking).
    Each verdict carries at most ``max_regions`` defect regions (None: all). The run says
    what to record (``record_inspections``, before the verdicts are answered: an answered
    verdict is a stored one); recording is apart so that it does not hold an inference
    thread.

    Every image is decoded before any is scored, so a bad file in a batch fails the request
    without scoring work; ``labels`` name the files in error messages.
    """
    started = time.perf_counter()
    active = active_model(database, name=name)
    names = list(labels) if labels is not None else ["image"] * len(images)
    decoded = []
    decode_s = []
    for data, label in zip(images, names, strict=True):
        t0 = time.perf_counter()
        decoded.append(decode(data, max_pixels=max_pixels, what=label))
        decode_s.append(time.perf_counter() - t0)
    model = load_model(database, cache, active)
    # The first image also carries the shared cost: lookup and, on a cache miss, model load.
    shared_s = time.perf_counter() - started - sum(decode_s)
    results: list[Inspection] = []
    for image, own_decode_s in zip(decoded, decode_s, strict=True):
        t0 = time.perf_counter()
        verdict = model.inspect(image.pixels, with_map=heatmap, max_regions=max_regions)
        png = _heatmap(image.pixels, verdict) if heatmap else None
        latency = time.perf_counter() - t0 + own_decode_s + (shared_s if not results else 0.0)
        results.append(Inspection(variant=name, model_version=active.version, verdict=verdict,
                                  latency_ms=round(latency * 1000.0, 3), width=image.width,
                                  height=image.height, heatmap_png=png))
        metrics.inspect_latency.labels(variant=name).observe(latency)
        metrics.inspect_score.labels(variant=name).observe(verdict.normalized_score)
        metrics.inspections.labels(variant=name).inc()
        if verdict.is_anomalous:
            metrics.anomalies.labels(variant=name).inc()
    inspected = [
        Inspected(verdict=r.verdict, model_version=r.model_version, latency_ms=r.latency_ms,
                  width=r.width, height=r.height, data=data, format=image.format)
        for r, image, data in zip(results, decoded, images, strict=True)
    ] if active.record_policy.enabled else []
    return InspectionRun(active=active, results=results, to_record=inspected)


@dataclass(frozen=True)
class InspectionRun:
    """The verdicts of one request, and what of them is to be recorded."""

    active: ActiveModel
    results: list[Inspection]
    to_record: list[Inspected]


def record_inspections(database: Database, run: InspectionRun,
                       context: CallerContext | None = None) -> list[Inspection]:
    """The run's results with their record ids, once the records are committed (blocking;
    the results as they are where the variant records nothing)."""
    if not run.to_record:
        return run.results
    try:
        with database.writing() as session:
            ids = store_records(session, variant_id=run.active.variant_id,
                                policy=run.active.record_policy, inspected=run.to_record,
                                context=context or CallerContext())
    except IntegrityError:
        raise _gone(run.active) from None  # the variant was deleted meanwhile
    return [replace(r, record_id=i) for r, i in zip(run.results, ids, strict=True)]


def record_heatmap(database: Database, cache: ModelCache, *, record_id: int,
                   max_pixels: int, max_regions: int | None = None) -> bytes:
    """The heatmap PNG of a recorded inspection, rendered now from its kept image by the model
    version that judged it (never stored). ``ConflictError`` when the image was not kept or
    that version is gone."""
    with database.reading() as session:
        record, variant = records.get_record(session, record_id=record_id)
        data = bytes(records.get_record_image(session, record=record).data)
        row = session.execute(
            select(Model.id, ModelArtifact.sha256)
            .join(ModelArtifact, ModelArtifact.model_id == Model.id)
            .where(Model.variant_id == record.variant_id,
                   Model.version == record.model_version)).one_or_none()
    if row is None:
        raise ConflictError(f"model version {record.model_version} of variant {variant!r}, "
                            f"which judged record {record_id}, is no longer stored")
    active = ActiveModel(variant_id=record.variant_id, variant=variant, model_id=row[0],
                         version=record.model_version, artifact_sha256=row[1])
    model = load_model(database, cache, active)
    image = decode(data, max_pixels=max_pixels, what=f"record {record_id}'s image")
    return _heatmap(image.pixels, model.inspect(image.pixels, with_map=True,
                                                max_regions=max_regions))


def _heatmap(pixels: np.ndarray, verdict: Verdict) -> bytes:
    """The heatmap PNG of a verdict asked with its map, its regions outlined."""
    assert verdict.anomaly_map is not None
    return render_heatmap_png(pixels, np.asarray(verdict.anomaly_map), verdict.threshold,
                              regions=verdict.regions)
