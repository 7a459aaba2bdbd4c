"""Several replicas on one database, as deployed: two real ``uvicorn`` processes on one
PostgreSQL schema (plus an in-process pair on both backends for the cache).

What must hold across replicas:
- a training job is run by exactly one of them (the database is the queue);
- an activation on one is served by the other within a second (no replica caches *which*
  version is active, only the loaded sessions, keyed by the artefact's hash);
- deleting a variant while the other replica inspects it fails cleanly: 200 or 404, never 500.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.db.migrate import upgrade_to_head
from app.db.models import Model, Variant

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0


@dataclass(eq=False)  # hashable by identity
class Replica:
    process: subprocess.Popen[bytes]
    client: httpx.Client
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(index: int, database_url: str, models_dir: Path, admin_key: str,
           log_dir: Path) -> Replica:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOMINAL_")},
        "NOMINAL_DATABASE_URL": database_url,
        "NOMINAL_MODELS_DIR": str(models_dir),
        "NOMINAL_ADMIN_KEY": admin_key,
        # Four training threads per replica polling often: eight workers race for each job.
        "NOMINAL_TRAINING_WORKERS": "4",
        "NOMINAL_JOB_POLL_INTERVAL_S": "0.05",
        "NOMINAL_JOB_PROGRESS_INTERVAL_S": "0",
        "NOMINAL_JOB_HEARTBEAT_INTERVAL_S": "0.5",
        "NOMINAL_JOB_STALE_AFTER_S": "10",
        "NOMINAL_TRAINING_THREADS": "1",
        "NOMINAL_INFERENCE_THREADS": "1",
        "NOMINAL_INFERENCE_WORKERS": "2",
        "NOMINAL_DB_POOL_SIZE": "4",
        "NOMINAL_LOG_FORMAT": "json",
    }
    log_path = log_dir / f"replica{index}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0,
                          headers={"X-API-Key": admin_key})
    return Replica(process=process, client=client, log_path=log_path)


def _wait_ready(replica: Replica, deadline: float) -> None:
    while True:
        if replica.process.poll() is not None:
            raise AssertionError(f"replica exited with {replica.process.returncode}:\n"
                                 f"{replica.log()}")
        try:
            if replica.client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"replica not ready after {STARTUP_TIMEOUT_S} s:\n"
                                 f"{replica.log()}")
        time.sleep(0.1)


def _stop(replica: Replica) -> None:
    replica.client.close()
    if replica.process.poll() is None:
        replica.process.send_signal(signal.SIGTERM)
        try:
            replica.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait(timeout=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, admin_key: str,
            fresh_database: Any) -> Iterator[tuple[Replica, Replica, str]]:
    """Two ``uvicorn`` processes serving one freshly migrated PostgreSQL schema, and its URL."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    with fresh_database("postgresql", tmp_path) as url:
        upgrade_to_head(url)
        started = [_start(i, url, models_dir, admin_key, tmp_path) for i in (1, 2)]
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            for replica in started:
                _wait_ready(replica, deadline)
            yield started[0], started[1], url
        finally:
            for replica in started:
                _stop(replica)
        for replica in started:
            assert "unhandled error" not in replica.log_path.read_text(), replica.log()
            # Structured logs, uvicorn's own lines included: every line is one JSON object.
            assert all(isinstance(entry, dict) for entry in _log_entries(replica))


@pytest.fixture
def replicas(cluster: tuple[Replica, Replica, str]) -> tuple[Replica, Replica]:
    return cluster[0], cluster[1]


def _prepare(api_class: Any, replica: Replica, images: Any, name: str) -> Any:
    api = api_class(replica.client)
    api.create_variant(name)  # resolution 64: training takes about a second
    response = api.upload(name, [images.good_png(seed) for seed in range(3)])
    assert response.status_code == 201, response.text
    return api


def _counter(text: str, name: str, outcome: str) -> float:
    match = re.search(rf'^{name}\{{outcome="{outcome}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _queue_at_once(database_url: str, name: str, template_version: int, count: int) -> None:
    """Queue ``count`` copies of a job in one commit, so that both replicas' workers see them
    at the same instant and race for each (jobs queued over HTTP wake the receiving replica
    first, which hides a broken claim)."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            variant = session.scalars(select(Variant).where(Variant.name == name)
                                      .with_for_update()).one()
            template = session.scalars(select(Model).where(
                Model.variant_id == variant.id, Model.version == template_version)).one()
            for _ in range(count):
                variant.last_model_version += 1
                session.add(Model(variant_id=variant.id, version=variant.last_model_version,
                                  status="queued", progress=0.0, seed=variant.last_model_version,
                                  activate=False, config=dict(template.config),
                                  cancel_requested=False))
    finally:
        engine.dispose()


def _log_entries(replica: Replica) -> list[dict[str, Any]]:
    return [json.loads(line) for line in replica.log_path.read_text().splitlines()]


def _variant_id(database_url: str, name: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(Variant.id).where(Variant.name == name))
                       .scalar_one())
    finally:
        engine.dispose()


def _claimed_by(database_url: str, name: str) -> list[str | None]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(
                select(Model.claimed_by).join(Variant, Variant.id == Model.variant_id)
                .where(Variant.name == name)).scalars())
    finally:
        engine.dispose()


@pytest.mark.replicas
def test_each_training_job_runs_on_exactly_one_replica(
        cluster: tuple[Replica, Replica, str], api_class: Any, images: Any) -> None:
    a, b, url = cluster
    api_a = _prepare(api_class, a, images, "jobs")
    assert api_a.train("jobs", seed=0, activate=False)["status"] == "ready"  # v1
    before = {r: r.client.get("/metrics").text for r in (a, b)}
    _queue_at_once(url, "jobs", template_version=1, count=8)  # v2..v9
    for version in range(2, 10):
        assert api_a.wait_for_model("jobs", version)["status"] == "ready"

    ran = {}
    for label, replica in (("a", a), ("b", b)):
        text = replica.client.get("/metrics").text
        ran[label] = {outcome: _counter(text, "nominal_training_jobs_total", outcome)
                      - _counter(before[replica], "nominal_training_jobs_total", outcome)
                      for outcome in ("ready", "failed", "lost", "requeued", "cancelled")}
        assert 'nominal_training_duration_seconds_count{outcome="ready"}' in text
    # Eight jobs, eight runs in all: none ran twice (the loser would end "lost"), none failed.
    assert sum(r["ready"] for r in ran.values()) == 8, ran
    assert all(r[o] == 0 for r in ran.values() for o in ("failed", "lost", "requeued")), ran
    # Both replicas took part: the race was real.
    workers = _claimed_by(url, "jobs")
    assert None not in workers and len(set(workers)) == 2, workers
    # Each run is logged once, as a JSON line with its outcome and duration.
    variant_id = _variant_id(url, "jobs")
    runs = [entry for replica in (a, b) for entry in _log_entries(replica)
            if entry["logger"] == "app.services.training" and "outcome" in entry
            and entry["variant_id"] == variant_id]
    assert sorted(entry["version"] for entry in runs) == list(range(1, 10)), runs
    assert all(e["outcome"] == "ready" and e["duration_s"] > 0 for e in runs), runs


@pytest.mark.replicas
def test_activation_on_one_is_served_by_the_other_within_a_second(
        replicas: tuple[Replica, Replica], api_class: Any, images: Any) -> None:
    a, b = replicas
    api_a = _prepare(api_class, a, images, "flip")
    assert api_a.train("flip", seed=1)["status"] == "ready"  # v1, active
    assert api_a.train("flip", seed=2, activate=False)["status"] == "ready"  # v2, inactive
    image = {"content": images.good_png(9), "headers": {"content-type": "image/png"}}

    def served_by_b() -> int:
        response = b.client.post("/v1/variants/flip/inspect", **image)
        assert response.status_code == 200, response.text
        return int(response.json()["model_version"])

    assert served_by_b() == 1  # B has v1 loaded in its cache now
    for version in (2, 1, 2):
        response = a.client.post(f"/v1/variants/flip/models/{version}/activate")
        assert response.status_code == 200, response.text
        activated = time.monotonic()
        while (served := served_by_b()) != version:
            assert time.monotonic() - activated < 1.0, f"B still serves v{served}"
        assert time.monotonic() - activated < 1.0
    metrics = b.client.get("/metrics").text
    assert 'nominal_active_model_version{variant="flip"} 2.0' in metrics
    assert re.search(r"^nominal_model_cache_entries [12]\.0$", metrics, re.MULTILINE), metrics


@pytest.mark.replicas
def test_deleting_a_variant_while_the_other_replica_inspects_it(
        replicas: tuple[Replica, Replica], api_class: Any, images: Any) -> None:
    a, b = replicas
    api_a = _prepare(api_class, a, images, "doomed")
    assert api_a.train("doomed", seed=3)["status"] == "ready"
    statuses: list[int] = []
    bodies: list[str] = []
    stop = threading.Event()

    def inspect_forever() -> None:
        with httpx.Client(base_url=str(b.client.base_url), headers=dict(b.client.headers),
                          timeout=30.0) as client:
            while not stop.is_set():
                response = client.post("/v1/variants/doomed/inspect",
                                       content=images.good_png(5),
                                       headers={"content-type": "image/png"})
                statuses.append(response.status_code)
                if response.status_code != 200:
                    bodies.append(response.text)

    threads = [threading.Thread(target=inspect_forever) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while statuses.count(200) < 5:  # inspections are under way on B
            assert time.monotonic() < deadline, statuses
            time.sleep(0.01)
        response = a.client.delete("/v1/variants/doomed")
        assert response.status_code == 204, response.text
        seen = len(statuses)
        while len(statuses) < seen + 6:  # and carry on after the deletion
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert set(statuses) <= {200, 404}, (set(statuses), bodies[:3])
    assert statuses[-1] == 404 and 200 in statuses
    assert all('"status":404' in body and ("not found" in body or "no longer stored" in body)
               for body in bodies), bodies[:3]
    assert b.client.get("/v1/variants/doomed").status_code == 404


def test_a_recreated_variant_is_never_served_a_stale_model(
        make_client: Callable[..., TestClient], api_class: Any, images: Any) -> None:
    """Two apps on one database (any backend): B caches a model, A deletes the variant and
    creates it again (SQLite reuses the ids), trains it on other images; B must load the new
    model, not serve its cached one under the reused (variant id, version)."""
    a, b = make_client(), make_client()
    api_a = api_class(a)
    api_a.trained_variant("again")
    image = {"content": images.defect_png(11), "headers": {"content-type": "image/png"}}
    first = b.post("/v1/variants/again/inspect", **image).json()
    assert a.delete("/v1/variants/again").status_code == 204
    api_a.create_variant("again")
    flat = [images.encode(images.good_pixels(s, noise=30.0)) for s in range(3)]
    assert api_a.upload("again", flat).status_code == 201
    assert api_a.train("again", seed=0)["status"] == "ready"
    second = b.post("/v1/variants/again/inspect", **image).json()
    assert second["model_version"] == first["model_version"] == 1
    assert second["threshold"] != first["threshold"]
