"""kill -9 of a real ``nominal serve`` mid-training, then a restart on the same database.

Expected (app/services/training.py): the running job's heartbeat stops; the restarted server's
stale-job sweep (start-up and every heartbeat interval) marks it ``failed``. Never a ``ready``
model without its artifact, no orphan rows, and the previously active model keeps serving with
the same score.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import encode, good_pixels, good_png
from tests.reliability._server import Server, inspect_score, orphan_counts, train_bolt, wait_model

SLOW = {"resolution": 512, "min_bank_size": 1, "coreset_ratio": 0.5}
ENV = {"NOMINAL_JOB_HEARTBEAT_INTERVAL_S": "0.5", "NOMINAL_JOB_STALE_AFTER_S": "2"}


def _score(client: httpx.Client, data: bytes) -> float:
    return inspect_score(client, "bolt", data)


def test_kill_9_mid_training(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nominal.db'}"
    first = Server(tmp_path, url, **ENV).start()
    probe = good_png(9)
    try:
        with first.client() as client:
            v1 = train_bolt(client)
            score_before = _score(client, probe)
            big = [("files", (f"b{i}.png", encode(good_pixels(10 + i, 512)), "image/png"))
                   for i in range(6)]
            assert client.post("/v1/variants/bolt/images", files=big).status_code == 201
            job = client.post("/v1/variants/bolt/models", json={"seed": 1, "settings": SLOW})
            assert job.status_code == 202, job.text
            v2 = job.json()["version"]
            deadline = time.monotonic() + 60
            while True:
                state = client.get(f"/v1/variants/bolt/models/{v2}").json()
                if state["status"] == "running" and state["progress"] > 0:
                    break
                assert state["status"] in ("queued", "running"), state
                assert time.monotonic() < deadline, f"training never showed progress: {state}"
                time.sleep(0.02)
        first.kill()  # SIGKILL mid-training
        killed_at = state
    finally:
        first.kill()

    second = Server(tmp_path, url, **ENV).start()
    try:
        with second.client() as client:
            final = wait_model(client, "bolt", v2, timeout_s=30)
            assert final["status"] in ("failed", "ready"), final
            if final["status"] == "failed":
                assert "heartbeat" in (final.get("error") or ""), final
            variant = client.get("/v1/variants/bolt").json()
            if final["status"] == "failed":
                assert variant["active_model_version"] == v1, variant
                assert _score(client, probe) == pytest.approx(score_before, abs=1e-6)
    finally:
        second.stop()

    assert orphan_counts(url) == {"ready_without_artifact": 0, "orphan_artifacts": 0}
    engine = create_engine(url)
    with engine.connect() as db:
        artifacts_of_unready = db.execute(text(
            "SELECT count(*) FROM model_artifact a JOIN model m ON m.id = a.model_id "
            "WHERE m.status != 'ready'")).scalar()
        running = db.execute(text(
            "SELECT count(*) FROM model WHERE status IN ('running', 'queued')")).scalar()
    engine.dispose()
    print(f"\nkilled at {killed_at['stage']} {killed_at['progress']:.2f}; "
          f"after restart: {final['status']}")
    assert (artifacts_of_unready, running) == (0, 0)
