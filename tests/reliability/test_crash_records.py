"""kill -9 of a real ``nominal serve`` right after it answered verdicts, then a restart: every
verdict it answered 200 has its record (committed before the answer left), on both databases.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.conftest import defect_png, good_png
from tests.reliability._server import Server, train_bolt


def test_kill_9_right_after_answers_loses_no_record(database_url: str, tmp_path: Path) -> None:
    first = Server(tmp_path, database_url).start()
    answered: dict[int, float] = {}  # record id -> score, for every 200
    errors: list[str] = []
    stop = threading.Event()
    images = [good_png(20), defect_png(21), good_png(22)]
    try:
        with first.client() as client:
            train_bolt(client)

        def fire(offset: int) -> None:
            with first.client(timeout=5) as hammer:
                i = offset
                while not stop.is_set():
                    try:
                        response = hammer.post("/v1/variants/bolt/inspect",
                                               content=images[i % 3], params={"part_id": str(i)},
                                               headers={"content-type": "image/png"})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text}")
                        return
                    body = response.json()
                    answered[body["record_id"]] = body["score"]
                    i += 2

        threads = [threading.Thread(target=fire, args=(k,), daemon=True) for k in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(answered) < 30 and time.monotonic() < deadline:
            time.sleep(0.002)
        first.kill()  # SIGKILL with inspections in flight
        stop.set()
        for thread in threads:
            thread.join(10)
        assert not errors, errors
        assert len(answered) >= 30, f"only {len(answered)} answers before the kill"
    finally:
        stop.set()
        first.kill()

    second = Server(tmp_path, database_url).start()
    try:
        with second.client() as client:
            missing, wrong = [], []
            for record_id, score in sorted(answered.items()):
                response = client.get(f"/v1/records/{record_id}")
                if response.status_code != 200:
                    missing.append(record_id)
                elif response.json()["score"] != score:
                    wrong.append(record_id)
            assert not missing, f"answered but not stored: {missing}"
            assert not wrong, f"stored with another score: {wrong}"
            stored = client.get("/v1/records", params={"limit": 500}).json()["items"]
            # Records of requests cut off by the kill may exist too; none is half written.
            assert len(stored) >= len(answered)
            assert all(r["variant"] == "bolt" and r["part_id"] is not None for r in stored)
            print(f"\n{len(answered)} answered before kill -9, {len(stored)} stored")
    finally:
        second.stop()
