"""Several clients on one variant at once, against a real ``nominal serve``.

Uploads, image deletions, training, activation and inspection run together: no 5xx, every
upload answered 201 is really stored (unless this test deleted it), and every client thread
finishes (no deadlock). Then the variant is deleted while the same traffic runs: still no 5xx,
and the name can be created afresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import good_png
from tests.reliability._server import Server, wait_model

NAME = "busy"
PHASE_S = 5.0


class Traffic:
    """Client threads that loop until ``stop`` is set, recording every status code."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stop = threading.Event()
        self.statuses: list[tuple[str, int]] = []
        self.uploaded: set[int] = set()
        self.deleted: set[int] = set()
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._seed = 1000

    def record(self, what: str, response: httpx.Response) -> None:
        with self._lock:
            self.statuses.append((what, response.status_code))
        if response.status_code >= 500:
            self.failures.append(f"{what}: {response.status_code} {response.text[:200]}")

    def next_seed(self) -> int:
        with self._lock:
            self._seed += 1
            return self._seed

    def loop(self, body: Callable[[httpx.Client], None]) -> threading.Thread:
        def run() -> None:
            with self.server.client(timeout=30) as client:
                while not self.stop.is_set():
                    try:
                        body(client)
                    except httpx.HTTPError as exc:  # a hung or dropped request is a failure
                        self.failures.append(f"{body.__name__}: {exc!r}")
                        return

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def upload(self, client: httpx.Client) -> None:
        response = client.post(f"/v1/variants/{NAME}/images",
                               files=[("files", ("part.png", good_png(self.next_seed()),
                                                 "image/png"))])
        self.record("upload", response)
        if response.status_code == 201:
            with self._lock:
                self.uploaded.update(image["id"] for image in response.json()["images"])

    def delete_image(self, client: httpx.Client) -> None:
        with self._lock:
            candidates = sorted(self.uploaded - self.deleted)
        if len(candidates) > 3:
            image_id = candidates[0]
            response = client.delete(f"/v1/variants/{NAME}/images/{image_id}")
            self.record("delete image", response)
            if response.status_code == 204:
                with self._lock:
                    self.deleted.add(image_id)
        time.sleep(0.2)

    def train(self, client: httpx.Client) -> None:
        self.record("train", client.post(f"/v1/variants/{NAME}/models", json={"seed": 0}))
        time.sleep(0.5)

    def activate(self, client: httpx.Client) -> None:
        listing = client.get(f"/v1/variants/{NAME}/models")
        self.record("list models", listing)
        if listing.status_code == 200:
            ready = [m["version"] for m in listing.json()["items"] if m["status"] == "ready"]
            if ready:
                version = ready[self.next_seed() % len(ready)]
                self.record("activate", client.post(
                    f"/v1/variants/{NAME}/models/{version}/activate"))
        time.sleep(0.1)

    def inspect(self, client: httpx.Client) -> None:
        self.record("inspect", client.post(f"/v1/variants/{NAME}/inspect", content=good_png(3),
                                           headers={"content-type": "image/png"}))

    def run(self, seconds: float, extra: Callable[[], None] | None = None) -> None:
        threads = [self.loop(body) for body in (
            self.upload, self.upload, self.delete_image, self.train, self.activate,
            self.inspect, self.inspect)]
        time.sleep(seconds / 2)
        if extra is not None:
            extra()
        time.sleep(seconds / 2)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a client thread is stuck: deadlock or hung request"


def test_everything_at_once_on_one_variant(tmp_path: Path) -> None:
    server = Server(tmp_path, f"sqlite:///{tmp_path / 'nominal.db'}").start()
    try:
        with server.client(timeout=30) as client:
            assert client.post("/v1/variants", json={
                "name": NAME, "settings": {"resolution": 64}}).status_code == 201
            files = [("files", (f"{i}.png", good_png(i), "image/png")) for i in range(3)]
            assert client.post(f"/v1/variants/{NAME}/images", files=files).status_code == 201
            version = client.post(f"/v1/variants/{NAME}/models", json={"seed": 0}).json()["version"]
            wait_model(client, NAME, version)

        traffic = Traffic(server)
        traffic.run(PHASE_S)
        assert not traffic.failures, traffic.failures
        assert {code for what, code in traffic.statuses if what == "upload"} == {201}
        assert any(code == 200 for what, code in traffic.statuses if what == "inspect")
        # The traffic really mixed: uploads, image deletions, jobs and activations all happened.
        assert len(traffic.uploaded) >= 5 and traffic.deleted
        assert any(code == 202 for what, code in traffic.statuses if what == "train")
        assert any(code == 200 for what, code in traffic.statuses if what == "activate")

        with server.client(timeout=30) as client:
            stored = client.get(f"/v1/variants/{NAME}/images", params={"limit": 500}).json()
            ids = {image["id"] for image in stored["items"]}
        kept = traffic.uploaded - traffic.deleted
        assert kept <= ids, f"uploads answered 201 but not stored: {sorted(kept - ids)}"
        assert not ids & traffic.deleted

        # Phase two: the variant is deleted while the same traffic runs.
        second = Traffic(server)

        def delete_variant() -> None:
            with server.client(timeout=30) as client:
                response = client.delete(f"/v1/variants/{NAME}")
                second.record("delete variant", response)
                assert response.status_code == 204, response.text

        second.run(PHASE_S, extra=delete_variant)
        assert not second.failures, second.failures
        codes = {code for _, code in second.statuses}
        assert codes <= {200, 201, 202, 204, 404, 409}, codes
        with server.client(timeout=30) as client:
            assert client.get(f"/v1/variants/{NAME}").status_code == 404
            assert client.post("/v1/variants", json={"name": NAME}).status_code == 201
    finally:
        server.stop()
