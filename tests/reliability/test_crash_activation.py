"""kill -9 of a real ``nominal serve`` while activations are in flight, then a restart.

Activation is one ``UPDATE variant SET active_model_id = ...`` committed in one transaction
(``activate_model`` in app/services/training.py), so after a crash at any point the variant
must have exactly one active version, one of the two ready ones, serving that version's score.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import good_png
from tests.reliability._server import Server, inspect_score, orphan_counts, wait_model


def _score(client: httpx.Client, data: bytes) -> float:
    return inspect_score(client, "bolt", data)


def test_kill_9_during_activations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nominal.db'}"
    first = Server(tmp_path, url).start()
    probe = good_png(9)
    scores: dict[int, float] = {}
    done: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    try:
        with first.client() as client:
            assert client.post("/v1/variants", json={
                "name": "bolt", "settings": {"resolution": 64}}).status_code == 201
            files = [("files", (f"g{i}.png", good_png(i), "image/png")) for i in range(3)]
            assert client.post("/v1/variants/bolt/images", files=files).status_code == 201
            versions = []
            # v2 at another resolution, so the two versions score the probe differently.
            for seed, settings in ((0, {}), (1, {"resolution": 128})):
                job = client.post("/v1/variants/bolt/models", json={
                    "seed": seed, "settings": settings})
                assert job.status_code == 202, job.text
                versions.append(job.json()["version"])
                assert wait_model(client, "bolt", versions[-1])["status"] == "ready"
            for version in versions:
                response = client.post(f"/v1/variants/bolt/models/{version}/activate")
                assert response.status_code == 200, response.text
                scores[version] = _score(client, probe)
            assert scores[versions[0]] != pytest.approx(scores[versions[1]], abs=1e-6), scores

        def fire() -> None:
            with first.client(timeout=5) as hammer:
                i = 0
                while not stop.is_set():
                    version = versions[i % 2]
                    try:
                        response = hammer.post(f"/v1/variants/bolt/models/{version}/activate")
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text}")
                        return
                    done.append(version)
                    i += 1

        thread = threading.Thread(target=fire, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while len(done) < 20 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.005)
        first.kill()  # SIGKILL with activations in flight
        stop.set()
        thread.join(10)
        assert not errors, errors
        assert len(done) >= 20, f"only {len(done)} activations before the kill"
    finally:
        stop.set()
        first.kill()

    second = Server(tmp_path, url).start()
    try:
        with second.client() as client:
            variant = client.get("/v1/variants/bolt").json()
            active = variant["active_model_version"]
            assert active in versions, variant
            listed = client.get("/v1/variants/bolt/models").json()
            items = listed["items"] if isinstance(listed, dict) else listed
            assert [m["version"] for m in items if m["is_active"]] == [active], items
            assert _score(client, probe) == pytest.approx(scores[active], abs=1e-6)
    finally:
        second.stop()

    engine = create_engine(url)
    with engine.connect() as db:
        active_ids = db.execute(text(
            "SELECT v.active_model_id FROM variant v WHERE v.name = 'bolt'")).scalars().all()
        dangling_active = db.execute(text(
            "SELECT count(*) FROM variant v WHERE v.active_model_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM model m WHERE m.id = v.active_model_id AND m.variant_id = v.id "
            "AND m.status = 'ready')")).scalar()
        models = db.execute(text("SELECT count(*) FROM model")).scalar()
    engine.dispose()
    print(f"\n{len(done)} activations answered before the kill; active after restart: v{active}; "
          f"scores {scores}")
    assert len(active_ids) == 1 and active_ids[0] is not None
    assert (dangling_active, models) == (0, 2)
    assert orphan_counts(url) == {"ready_without_artifact": 0, "orphan_artifacts": 0}
