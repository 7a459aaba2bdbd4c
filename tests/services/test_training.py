"""The training worker on a real database: claiming is exactly-once across workers, running
jobs can be cancelled, dead workers' jobs are failed, stopping requeues."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.db.models import ImageLabel, Model, ModelStatus, utcnow
from app.db.session import Database
from app.detector.engine import Detector
from app.errors import ConflictError, NotEnoughImagesError, NotFoundError
from app.services import images as image_service
from app.services import training
from app.services import variants as variant_service
from app.services.metrics import Metrics


class SlowDetector:
    """Reports progress ``steps`` times (``delay`` apart) before the real fit; counts fits."""

    def __init__(self, real: Detector, steps: int = 0, delay: float = 0.0,
                 error: Exception | None = None) -> None:
        self.real = real
        self.steps = steps
        self.delay = delay
        self.error = error
        self.fits = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def fit(self, good: Any, config: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.fits += 1
        self.started.set()
        progress = kwargs["progress"]
        for i in range(self.steps):
            progress(i / max(self.steps, 1) * 0.5, "features")
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.real.fit(good, config, **kwargs)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url, pool_size=4)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def real_detector(models_dir: Path) -> Detector:
    return Detector(models_dir)


def make_variant(database: Database, images: Any, name: str = "bolt", n_good: int = 2) -> int:
    with database.session(write=True) as session:  # services commit themselves
        variant = variant_service.create_variant(session, name=name,
                                                 settings={"resolution": 64})
    if n_good == 0:
        return int(variant.id)
    uploads = image_service.check_uploads(
        [image_service.Upload(f"{i}.png", images.good_png(i)) for i in range(n_good)],
        max_pixels=10**7)
    with database.session(write=True) as session:
        variant = variant_service.get_variant(session, name=name)
        image_service.add_images(session, variant=variant, uploads=uploads,
                                 label=ImageLabel.good, max_images=100)
    return int(variant.id)


def queue(database: Database, name: str = "bolt", **kwargs: Any) -> int:
    with database.session(write=True) as session:
        variant = variant_service.get_variant(session, name=name)
        return training.create_job(session, variant=variant, seed=0, **kwargs).version


def status_of(database: Database, name: str, version: int) -> Model:
    with database.reading() as session:
        variant = variant_service.get_variant(session, name=name)
        return training.get_model(session, variant=variant, version=version)


def wait_status(database: Database, name: str, version: int, wanted: set[str],
                timeout_s: float = 30.0) -> Model:
    deadline = time.monotonic() + timeout_s
    while True:
        model = status_of(database, name, version)
        if model.status in wanted:
            return model
        assert time.monotonic() < deadline, f"still {model.status}"
        time.sleep(0.02)


def worker(database: Database, detector: Any, **kwargs: Any) -> training.TrainingWorker:
    options = {"poll_interval_s": 0.02, "heartbeat_interval_s": 0.2, "stale_after_s": 2.0,
               "progress_interval_s": 0.0, **kwargs}
    return training.TrainingWorker(database=database, detector=detector, metrics=Metrics(),
                                   **options)


def test_each_job_runs_exactly_once_across_workers(database: Database, images: Any,
                                                   real_detector: Detector) -> None:
    make_variant(database, images, "a")
    make_variant(database, images, "b")
    versions = [("a", queue(database, "a")) for _ in range(3)]
    versions += [("b", queue(database, "b")) for _ in range(3)]
    detector = SlowDetector(real_detector)
    workers = [worker(database, detector, threads=2) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for name, version in versions:
            assert wait_status(database, name, version, {"ready", "failed"}).status == "ready"
    finally:
        for w in workers:
            w.stop()
    assert detector.fits == len(versions)
    with database.reading() as session:
        claimed = set(session.scalars(select(Model.claimed_by)))
    assert claimed <= {w.worker_id for w in workers}


def test_cancel_a_running_job(database: Database, images: Any, real_detector: Detector) -> None:
    make_variant(database, images)
    version = queue(database)
    detector = SlowDetector(real_detector, steps=2000, delay=0.005)
    w = worker(database, detector)
    w.start()
    try:
        assert detector.started.wait(10)
        running = wait_status(database, "bolt", version, {"running"})
        assert 0.0 <= running.progress < 1.0
        with database.session(write=True) as session:
            variant = variant_service.get_variant(session, name="bolt")
            model = training.cancel_job(session, variant=variant, version=version)
        assert model.cancel_requested
        cancelled = wait_status(database, "bolt", version, {"cancelled", "ready", "failed"})
        assert cancelled.status == "cancelled"
        assert cancelled.finished_at is not None
        with database.session(write=True) as session:
            variant = variant_service.get_variant(session, name="bolt")
            assert variant.active_model_id is None
            with pytest.raises(ConflictError):
                training.cancel_job(session, variant=variant, version=version)
    finally:
        w.stop()


def test_fit_errors_fail_the_job_with_the_message(database: Database, images: Any,
                                                  real_detector: Detector) -> None:
    make_variant(database, images)
    version = queue(database)
    w = worker(database, SlowDetector(real_detector, error=RuntimeError("kaboom")))
    w.start()
    try:
        failed = wait_status(database, "bolt", version, {"failed", "ready"})
    finally:
        w.stop()
    assert failed.status == "failed"
    assert failed.error == "internal error: RuntimeError"  # no internals in the API


def test_stale_running_job_is_failed(database: Database, images: Any,
                                     real_detector: Detector) -> None:
    make_variant(database, images)
    version = queue(database)
    with database.writing() as session:  # a worker that claimed it and then died
        session.execute(update(Model).values(status="running", claimed_by="dead:1",
                                             heartbeat_at=utcnow() - timedelta(minutes=10)))
    w = worker(database, SlowDetector(real_detector), threads=0, stale_after_s=60)
    assert w.fail_stale_jobs() == 1
    model = status_of(database, "bolt", version)
    assert model.status == ModelStatus.failed.value
    assert model.error and "stopped" in model.error


def test_a_worker_never_fails_its_own_job_as_stale(database: Database, images: Any,
                                                   real_detector: Detector) -> None:
    """A late heartbeat of a live worker (a starved machine, a row lock) is not a dead one:
    only another worker may judge it."""
    make_variant(database, images)
    version = queue(database)
    alive = worker(database, SlowDetector(real_detector), threads=0, stale_after_s=60)
    with database.writing() as session:
        session.execute(update(Model).values(status="running", claimed_by=alive.worker_id,
                                             heartbeat_at=utcnow() - timedelta(minutes=10)))
    assert alive.fail_stale_jobs() == 0
    assert status_of(database, "bolt", version).status == ModelStatus.running.value
    other = worker(database, SlowDetector(real_detector), threads=0, stale_after_s=60)
    assert other.fail_stale_jobs() == 1
    assert status_of(database, "bolt", version).status == ModelStatus.failed.value


def test_stop_requeues_the_running_job(database: Database, images: Any,
                                       real_detector: Detector) -> None:
    make_variant(database, images)
    version = queue(database)
    detector = SlowDetector(real_detector, steps=2000, delay=0.005)
    w = worker(database, detector)
    w.start()
    assert detector.started.wait(10)
    w.stop()
    requeued = status_of(database, "bolt", version)
    assert requeued.status == "queued" and requeued.claimed_by is None
    second = worker(database, SlowDetector(real_detector))
    second.start()
    try:
        assert wait_status(database, "bolt", version, {"ready", "failed"}).status == "ready"
    finally:
        second.stop()


def test_create_job_needs_good_images_and_numbers_versions(database: Database,
                                                           images: Any) -> None:
    make_variant(database, images, n_good=0)
    with database.session(write=True) as session:
        variant = variant_service.get_variant(session, name="bolt")
        with pytest.raises(NotEnoughImagesError):
            training.create_job(session, variant=variant)
    make_variant(database, images, "other")
    assert [queue(database, "other") for _ in range(3)] == [1, 2, 3]


def test_concurrent_job_creation_gets_distinct_versions(database: Database,
                                                        images: Any) -> None:
    make_variant(database, images)
    results: list[int] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            results.append(queue(database))
        except BaseException as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == list(range(1, 9))


def test_activating_a_version_whose_variant_was_just_deleted_is_not_found(
        database: Database, images: Any, real_detector: Detector) -> None:
    """The variant read, then deleted by another request before the activation's UPDATE:
    a clear 404, not a server error. (PostgreSQL: SQLite's writers hold the write lock from
    their first statement, so there the deletion waits instead.)"""
    if database.is_sqlite:
        pytest.skip("SQLite serialises writing requests: the deletion cannot come in between")
    make_variant(database, images, "gone")
    version = queue(database, "gone")
    runner = worker(database, real_detector)
    runner.start()
    try:
        assert wait_status(database, "gone", version, {"ready", "failed"}).status == "ready"
    finally:
        runner.stop()
    with database.session(write=True) as session:
        variant = variant_service.get_variant(session, name="gone")
        training.get_model(session, variant=variant, version=version)  # both read
        with database.session(write=True) as other:
            variant_service.delete_variant(other, variant=variant_service.get_variant(
                other, name="gone"))
        with pytest.raises(NotFoundError):
            training.activate_model(session, variant=variant, version=version)
