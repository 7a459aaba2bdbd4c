"""Training jobs: a ``model`` row is the job and, once ready, the model.

Life of a job (``status``)::

    queued --claim--> running --fit ok--> ready   (+ variant.active_model_id if activate and
                                                   the quality report reaches the floor)
       |                 |------error---> failed
       |                 |--cancel seen-> cancelled
       |                 '--no heartbeat for job_stale_after_s (worker died)--> failed
       '--cancel--> cancelled

The database is the queue: any replica's worker may claim a queued job with a conditional
UPDATE (``WHERE status = 'queued'``), so exactly one runs it. Progress, heartbeat and the
cancellation flag travel through the same row; the result (ONNX bytes, calibration) is written
in one transaction together with ``ready`` and the activation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import onnx
from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

import app
from app.db.models import ImageLabel, Model, ModelArtifact, ModelStatus, Variant, utcnow
from app.db.session import Database
from app.detector.config import DetectorConfig
from app.detector.engine import Detector, FittedModel
from app.detector.graph import with_layout
from app.detector.layout import Layout
from app.detector.quality import QualityReport
from app.detector.runtime import METADATA_PREFIX, check_model_file
from app.errors import (
    ConflictError,
    NominalError,
    NotEnoughImagesError,
    NotFoundError,
    TrainingCancelledError,
)
from app.services.images import count_images, load_training_images
from app.services.metrics import Metrics
from app.services.variants import resolve_config, resolve_settings

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- use cases


def create_job(session: Session, *, variant: Variant, seed: int | None = None,
               activate: bool = True, settings: dict[str, Any] | None = None) -> Model:
    """Queue a training job for ``variant``; its version is the next integer for the variant
    (never reused).

    ``settings`` override the variant's detector settings for this model only.
    Raises ``NotEnoughImagesError`` when the variant has no good image.
    """
    if count_images(session, variant_id=variant.id, label=ImageLabel.good) == 0:
        raise NotEnoughImagesError(
            f"variant {variant.name!r} has no good images; upload some with label=good first"
        )
    config = resolve_config(resolve_settings(variant.settings, settings or {}))
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    job = Model(variant_id=variant.id, version=_next_version(session, variant),
                status=ModelStatus.queued.value, progress=0.0, seed=seed, activate=activate,
                config=config.to_dict(), layout=variant.layout, cancel_requested=False)
    session.add(job)
    session.commit()
    return job


def _relaid(quality: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored report for a model given another layout (None stays None: no report)."""
    return None if quality is None else QualityReport.from_dict(quality).relaid().to_dict()


def _quality_metadata(quality: dict[str, Any] | None) -> dict[str, str]:
    """The file's ``nominal.quality`` for a stored report (nothing when there is none)."""
    return {} if quality is None else {METADATA_PREFIX + "quality": json.dumps(quality)}


def _next_version(session: Session, variant: Variant) -> int:
    """The variant's next model version. Increment-then-read in one transaction: the UPDATE
    locks the variant row (PostgreSQL) or the database (SQLite), so concurrent requests get
    distinct versions without retries."""
    session.execute(update(Variant).where(Variant.id == variant.id)
                    .values(last_model_version=Variant.last_model_version + 1))
    version = session.scalar(select(Variant.last_model_version).where(Variant.id == variant.id))
    assert version is not None
    return version


def _artifact(model_id: int, onnx_bytes: bytes) -> ModelArtifact:
    """The stored ONNX file of a model, with the digest that names it in the model cache."""
    return ModelArtifact(model_id=model_id, onnx=onnx_bytes,
                         sha256=hashlib.sha256(onnx_bytes).hexdigest(), size_bytes=len(onnx_bytes))


def change_layout(session: Session, *, variant: Variant, layout: Layout) -> Model | None:
    """Give the variant ``layout`` (regions of interest, ignore masks) and its active model a
    new version built from it with that layout, active at once: the same memory bank and
    threshold, no feature extraction (``graph.with_layout``). Returns that model; None when
    there is no active model, or its layout is already this one. One transaction with
    whatever the session holds; ``ConflictError`` (nothing stored) when the active model
    cannot take the layout, ``NotFoundError`` when the variant is deleted meanwhile.
    """
    gone = NotFoundError(f"variant {variant.name!r} was deleted while its layout changed")
    # The variant's row, locked (PostgreSQL): an activation or another layout change waits.
    locked = session.scalar(select(Variant).where(Variant.id == variant.id)
                            .with_for_update().execution_options(populate_existing=True))
    if locked is None:
        session.rollback()
        raise gone
    stored = None if layout.is_empty else layout.to_dict()
    active = session.get(Model, variant.active_model_id) if variant.active_model_id else None
    data = session.scalar(select(ModelArtifact.onnx)
                          .where(ModelArtifact.model_id == active.id)) if active else None
    variant.layout = stored
    variant.updated_at = utcnow()
    if active is None or data is None or Layout.from_dict(active.layout) == layout:
        session.commit()
        return None
    started = time.perf_counter()
    graph = onnx.load_from_string(bytes(data))
    version = _next_version(session, variant)
    quality = _relaid(active.quality)
    try:
        with_layout(graph, layout, {"nominal.model_version": str(version),
                                    **_quality_metadata(quality)})
    except ValueError as exc:
        session.rollback()
        raise ConflictError(f"the active model (version {active.version}) cannot take this "
                            f"layout: {exc}") from None
    onnx_bytes = graph.SerializeToString()
    now = utcnow()
    derived = Model(
        variant_id=variant.id, version=version, status=ModelStatus.ready.value, progress=1.0,
        stage="done", seed=active.seed, activate=True, config=dict(active.config),
        layout=stored, threshold=active.threshold, calibration=active.calibration,
        quality=quality, bank_size=active.bank_size, n_good_images=active.n_good_images,
        n_defect_images=active.n_defect_images,
        timings={"layout_s": round(time.perf_counter() - started, 4)},
        cancel_requested=False, started_at=now, finished_at=now)
    try:
        session.add(derived)
        session.flush()
        session.add(_artifact(derived.id, onnx_bytes))
        variant.active_model_id = derived.id
        session.commit()
    except IntegrityError:
        session.rollback()
        raise gone from None
    return derived


@dataclass(frozen=True)
class ModelView:
    """A model with what its public view shows besides its own row, read in the same statement
    as the row: a job that finishes (``ready`` + activation, one transaction) between two
    statements would otherwise read as ready but not active."""

    model: Model
    is_active: bool
    onnx_size_bytes: int | None = None


def _views(session: Session, statement: Select[Model, bool, int]) -> list[ModelView]:
    rows = session.execute(statement.execution_options(populate_existing=True)).all()
    return [ModelView(model=model, is_active=bool(active), onnx_size_bytes=size)
            for model, active, size in rows]


def _view_select(variant: Variant) -> Select[Model, bool, int]:
    """Model rows of ``variant`` with ``is_active`` (from the variant row, not the possibly
    older ``variant`` object) and the artefact size (no blob read), in one statement."""
    return (select(Model, func.coalesce(Variant.active_model_id == Model.id, False),
                   ModelArtifact.size_bytes)
            .join(Variant, Variant.id == Model.variant_id)
            .outerjoin(ModelArtifact, ModelArtifact.model_id == Model.id)
            .where(Model.variant_id == variant.id))


def list_models(session: Session, *, variant: Variant, limit: int,
                offset: int) -> tuple[list[ModelView], int]:
    """A page of the variant's models, newest version first."""
    total = session.scalar(select(func.count()).where(Model.variant_id == variant.id)) or 0
    views = _views(session, _view_select(variant).order_by(Model.version.desc())
                   .limit(limit).offset(offset))
    return views, total


def get_model_view(session: Session, *, variant: Variant, version: int) -> ModelView:
    """One version with its activity and artefact size, as of one snapshot; ``NotFoundError``."""
    views = _views(session, _view_select(variant).where(Model.version == version))
    if not views:
        raise NotFoundError(f"model version {version} of variant {variant.name!r} not found")
    return views[0]


def get_model(session: Session, *, variant: Variant, version: int) -> Model:
    model = session.scalar(select(Model).where(Model.variant_id == variant.id,
                                               Model.version == version))
    if model is None:
        raise NotFoundError(f"model version {version} of variant {variant.name!r} not found")
    return model


def cancel_job(session: Session, *, variant: Variant, version: int) -> Model:
    """Cancel a queued job at once, or ask a running one to stop (it stops at its next
    progress report). Finished jobs cannot be cancelled (``ConflictError``)."""
    model = get_model(session, variant=variant, version=version)
    now = utcnow()
    dequeued = session.execute(
        update(Model).where(Model.id == model.id, Model.status == ModelStatus.queued.value)
        .values(status=ModelStatus.cancelled.value, cancel_requested=True, finished_at=now,
                error="cancelled before it started")
    ).rowcount  # type: ignore[attr-defined]
    if not dequeued:
        flagged = session.execute(
            update(Model).where(Model.id == model.id, Model.status == ModelStatus.running.value)
            .values(cancel_requested=True)
        ).rowcount  # type: ignore[attr-defined]
        if not flagged:
            session.rollback()
            session.refresh(model)
            raise ConflictError(f"model version {version} is {model.status}; only queued or "
                                "running jobs can be cancelled")
    session.commit()
    session.refresh(model)
    return model


def activate_model(session: Session, *, variant: Variant, version: int) -> Model:
    """Make a ready version the one inspect uses: one UPDATE, so replicas see the old or the
    new version, never a mix."""
    model = get_model(session, variant=variant, version=version)
    if model.status != ModelStatus.ready.value:
        raise ConflictError(f"model version {version} is {model.status}; only ready models can "
                            "be activated")
    # A model this release cannot read (trained by a later one) would fail every inspection.
    data = session.scalar(select(ModelArtifact.onnx).where(ModelArtifact.model_id == model.id))
    if data is not None:
        check_model_file(data)
    # The variant or the model may be deleted by another request meanwhile: that is a 404,
    # whichever commits first (no row updated, or the model's row gone under the key).
    gone = NotFoundError(f"model version {version} of variant {variant.name!r} was deleted "
                         "while it was being activated")
    updated = session.execute(
        update(Variant).where(Variant.id == variant.id)
        .values(active_model_id=model.id, updated_at=utcnow())
    ).rowcount  # type: ignore[attr-defined]
    if not updated:
        session.rollback()
        raise gone
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise gone from None
    return model


def delete_model(session: Session, *, variant: Variant, version: int) -> None:
    """Delete a finished, inactive model and its artefact."""
    model = get_model(session, variant=variant, version=version)
    if variant.active_model_id == model.id:
        raise ConflictError(f"model version {version} is active; activate another one first")
    if model.status in (ModelStatus.queued.value, ModelStatus.running.value):
        raise ConflictError(f"model version {version} is {model.status}; cancel it first")
    session.delete(model)
    session.commit()


def get_artifact(session: Session, *, model: Model) -> bytes:
    """The single-file ONNX model of a ready version."""
    if model.status != ModelStatus.ready.value:
        raise ConflictError(f"model version {model.version} is {model.status}; only ready models "
                            "have an ONNX file")
    data = session.scalar(select(ModelArtifact.onnx).where(ModelArtifact.model_id == model.id))
    if data is None:
        raise NotFoundError(f"model version {model.version} has no stored ONNX file")
    return bytes(data)


def active_versions(session: Session) -> dict[str, int]:
    """``{variant name: active version}`` for the metrics gauge."""
    rows = session.execute(select(Variant.name, Model.version)
                           .join(Model, Model.id == Variant.active_model_id))
    return {name: version for name, version in rows}


# ---------------------------------------------------------------------------- the worker


class _WorkerStopping(TrainingCancelledError):
    """Raised inside a fit when this replica shuts down: the job goes back to the queue."""


@dataclass(frozen=True)
class _Claim:
    """What a worker needs of a claimed job (plain values: no session outlives a step)."""

    model_id: int
    variant_id: int
    version: int
    seed: int
    activate: bool
    config: dict[str, Any]
    layout: dict[str, Any] | None = None


class TrainingWorker:
    """Runs queued training jobs in background threads of this replica.

    ``Detector.fit`` runs in the worker thread itself: numpy and onnxruntime release the GIL, so
    the event loop and inspect traffic keep running. One thread per ``threads`` trains; one more
    keeps the heartbeat of running jobs fresh and fails jobs whose worker has gone.
    """

    def __init__(self, *, database: Database, detector: Detector, metrics: Metrics,
                 threads: int = 1, poll_interval_s: float = 1.0, heartbeat_interval_s: float = 5.0,
                 stale_after_s: float = 60.0, progress_interval_s: float = 0.5,
                 max_pixels: int = 40_000_000) -> None:
        self.database = database
        self.detector = detector
        self.metrics = metrics
        self.threads = threads
        self.poll_interval_s = poll_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.stale_after_s = stale_after_s
        self.progress_interval_s = progress_interval_s
        self.max_pixels = max_pixels
        self.worker_id = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: set[int] = set()
        self._running_lock = threading.Lock()

    # lifecycle

    def start(self) -> None:
        """Fail jobs orphaned by a dead worker, then start the threads."""
        self.fail_stale_jobs()
        for i in range(self.threads):
            thread = threading.Thread(target=self._train_loop, name=f"nominal-train-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.threads:
            thread = threading.Thread(target=self._heartbeat_loop, name="nominal-heartbeat",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """A job was queued on this replica: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the threads; a job still fitting stops at its next progress report and goes
        back to the queue, so it never stays ``running`` without a worker."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    # loops

    def _train_loop(self) -> None:
        while not self._stop.is_set():
            try:
                claim = self._claim_next()
            except SQLAlchemyError:
                log.exception("training worker could not poll the database")
                claim = None
            if claim is None:
                self._wake.wait(self.poll_interval_s)
                self._wake.clear()
                continue
            self._run(claim)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval_s):
            try:
                with self._running_lock:
                    running = list(self._running)
                if running:
                    with self.database.writing() as session:
                        session.execute(update(Model).where(Model.id.in_(running),
                                                            Model.claimed_by == self.worker_id)
                                        .values(heartbeat_at=utcnow()))
                self.fail_stale_jobs()
            except SQLAlchemyError:
                log.exception("training heartbeat failed")

    # steps

    def fail_stale_jobs(self) -> int:
        """Mark failed every running job whose worker stopped beating (crash, kill, lost host).

        Never this worker's own: that this runs proves it alive, and a heartbeat late only
        because the machine is starved (or its update waited on a row lock) is not a dead
        worker."""
        cutoff = utcnow() - timedelta(seconds=self.stale_after_s)
        with self.database.writing() as session:
            result = session.execute(
                update(Model)
                .where(Model.status == ModelStatus.running.value, Model.heartbeat_at < cutoff,
                       or_(Model.claimed_by.is_(None), Model.claimed_by != self.worker_id))
                .values(status=ModelStatus.failed.value, finished_at=utcnow(),
                        error=f"the worker running this job stopped (no heartbeat for "
                              f"{self.stale_after_s:g} s); start a new training")
            )
            n = int(result.rowcount)  # type: ignore[attr-defined]
        if n:
            log.warning("marked %d stale training job(s) failed", n)
            self.metrics.training_jobs.labels(outcome="failed").inc(n)
        return n

    def _claim_next(self) -> _Claim | None:
        """Claim the oldest queued job, or None. Safe with many workers on many replicas."""
        with self.database.writing() as session:
            candidates = session.scalars(
                select(Model.id).where(Model.status == ModelStatus.queued.value)
                .order_by(Model.id).limit(5)
            ).all()
            for model_id in candidates:
                now = utcnow()
                claimed = session.execute(
                    update(Model)
                    .where(Model.id == model_id, Model.status == ModelStatus.queued.value)
                    .values(status=ModelStatus.running.value, claimed_by=self.worker_id,
                            started_at=now, heartbeat_at=now, stage="starting")
                ).rowcount  # type: ignore[attr-defined]
                if claimed:
                    row = session.get_one(Model, model_id)
                    # The variant's layout as it is now (it may have changed while queued).
                    row.layout = session.scalar(select(Variant.layout)
                                                .where(Variant.id == row.variant_id))
                    with self._running_lock:
                        self._running.add(model_id)
                    return _Claim(model_id=row.id, variant_id=row.variant_id,
                                  version=row.version, seed=row.seed, activate=row.activate,
                                  config=dict(row.config), layout=row.layout)
        return None

    def _run(self, claim: _Claim) -> None:
        started = time.perf_counter()
        outcome = "failed"
        try:
            fitted = self._fit(claim)
            outcome = self._store(claim, fitted)
        except _WorkerStopping:
            outcome = "requeued"
            self._requeue(claim)
        except TrainingCancelledError as exc:
            outcome = "cancelled"
            self._finish(claim, ModelStatus.cancelled, error=exc.detail)
        except NominalError as exc:
            self._finish(claim, ModelStatus.failed, error=exc.detail)
        except Exception as exc:  # a job must end failed, whatever went wrong inside it
            log.exception("training job %s failed", claim.model_id)
            self._finish(claim, ModelStatus.failed, error=f"internal error: {type(exc).__name__}")
        finally:
            with self._running_lock:
                self._running.discard(claim.model_id)
            elapsed = time.perf_counter() - started
            self.metrics.training_duration.labels(outcome=outcome).observe(elapsed)
            self.metrics.training_jobs.labels(outcome=outcome).inc()
            log.info("training job %d (variant %d, version %d) %s in %.2f s", claim.model_id,
                     claim.variant_id, claim.version, outcome, elapsed,
                     extra={"job_id": claim.model_id, "variant_id": claim.variant_id,
                            "version": claim.version, "outcome": outcome,
                            "duration_s": round(elapsed, 3), "worker": self.worker_id})

    def _fit(self, claim: _Claim) -> FittedModel:
        with self.database.reading() as session:
            good, defect = load_training_images(session, variant_id=claim.variant_id,
                                                max_pixels=self.max_pixels)
        if not good:
            raise NotEnoughImagesError("the variant has no good images left to train on")
        config = DetectorConfig.from_dict(claim.config)
        report = self._progress_reporter(claim)
        report(0.0, "loading")
        return self.detector.fit(good, config, seed=claim.seed, defect_images=defect,
                                 progress=report, layout=Layout.from_dict(claim.layout),
                                 metadata={"nominal.version": app.__version__,
                                           "nominal.model_version": str(claim.version)})

    def _progress_reporter(self, claim: _Claim) -> Callable[[float, str], None]:
        """A ``progress(fraction, stage)`` callback that writes at most every
        ``progress_interval_s`` and raises ``TrainingCancelledError`` once cancel is seen."""
        last = -float("inf")
        last_stage: str | None = None

        def report(fraction: float, stage: str) -> None:
            nonlocal last, last_stage
            if self._stop.is_set():
                raise _WorkerStopping("the service stopped while this job was running")
            now = time.monotonic()
            if now - last < self.progress_interval_s and stage == last_stage and fraction < 1.0:
                return
            last, last_stage = now, stage
            with self.database.writing() as session:
                session.execute(
                    update(Model).where(Model.id == claim.model_id,
                                        Model.claimed_by == self.worker_id)
                    .values(progress=min(1.0, max(0.0, float(fraction))), stage=stage,
                            heartbeat_at=utcnow())
                )
                cancel = session.scalar(select(Model.cancel_requested)
                                        .where(Model.id == claim.model_id))
            if cancel is None or cancel:
                raise TrainingCancelledError("cancelled on request" if cancel else
                                             "the model or its variant was deleted")

        return report

    def _store(self, claim: _Claim, fitted: FittedModel) -> str:
        """Artefact + ready + activation in one transaction; returns the outcome."""
        try:
            with self.database.writing() as session:
                row = session.scalar(select(Model).where(Model.id == claim.model_id,
                                                         Model.claimed_by == self.worker_id)
                                     .with_for_update())
                if row is None or row.status != ModelStatus.running.value:
                    return "lost"  # deleted, or failed as stale by another replica meanwhile
                if row.cancel_requested:
                    raise TrainingCancelledError("cancelled on request")
                onnx_bytes = self._with_current_layout(session, claim, row, fitted.onnx_bytes)
                session.add(_artifact(row.id, onnx_bytes))
                calibration = fitted.calibration.to_dict()
                row.status = ModelStatus.ready.value
                row.progress = 1.0
                row.stage = "done"
                row.threshold = float(fitted.calibration.threshold)
                row.calibration = calibration
                row.quality = fitted.quality.to_dict()
                row.config = fitted.config.to_dict()  # preset auto: the preset it chose
                row.bank_size = int(fitted.bank_size)
                row.n_good_images = int(fitted.n_images)
                row.n_defect_images = len(calibration.get("defect_scores") or [])
                row.timings = {k: round(float(v), 4) for k, v in fitted.timings.items()}
                row.finished_at = utcnow()
                # The gate: a model whose report is below the variant's floor stays ready,
                # its report saying why (an admin can activate it explicitly).
                if claim.activate and fitted.quality.reaches(fitted.config.min_expected_auroc):
                    session.execute(update(Variant).where(Variant.id == claim.variant_id)
                                    .values(active_model_id=row.id, updated_at=utcnow()))
        except IntegrityError:
            return "lost"  # the variant was deleted between the check and the insert
        return "ready"

    def _with_current_layout(self, session: Session, claim: _Claim, row: Model,
                             onnx_bytes: bytes) -> bytes:
        """The fitted file with the variant's layout of now, when it changed during the fit
        (so a layout set meanwhile is not undone by this model's activation); the fitted
        layout when the new one would judge areas the bank was fitted without."""
        current = session.scalar(select(Variant.layout).where(Variant.id == claim.variant_id)
                                 .with_for_update())
        if Layout.from_dict(current) == Layout.from_dict(claim.layout):
            return onnx_bytes
        graph = onnx.load_from_string(onnx_bytes)
        quality = _relaid(row.quality)
        try:
            with_layout(graph, Layout.from_dict(current), _quality_metadata(quality))
        except ValueError as exc:
            log.warning("training job %d keeps the layout it was fitted with: %s",
                        claim.model_id, exc)
            return onnx_bytes
        row.layout = current
        row.quality = quality
        return graph.SerializeToString()

    def _requeue(self, claim: _Claim) -> None:
        """Give a job back to the queue (this replica is stopping; another one, or this one
        after its restart, runs it from the start)."""
        try:
            with self.database.writing() as session:
                session.execute(
                    update(Model).where(Model.id == claim.model_id,
                                        Model.claimed_by == self.worker_id,
                                        Model.status == ModelStatus.running.value)
                    .values(status=ModelStatus.queued.value, claimed_by=None, progress=0.0,
                            stage=None, started_at=None, heartbeat_at=None)
                )
        except SQLAlchemyError:
            log.exception("could not requeue training job %s", claim.model_id)

    def _finish(self, claim: _Claim, status: ModelStatus, *, error: str) -> None:
        try:
            with self.database.writing() as session:
                session.execute(
                    update(Model).where(Model.id == claim.model_id,
                                        Model.status == ModelStatus.running.value)
                    .values(status=status.value, error=error[:2000], finished_at=utcnow())
                )
        except SQLAlchemyError:
            log.exception("could not record the end of training job %s", claim.model_id)
