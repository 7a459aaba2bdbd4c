"""A real ``nominal serve`` subprocess for the reliability tests (loopback, free port)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import good_png

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "test-admin-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nominal_executable() -> list[str]:
    exe = Path(sys.executable).with_name("nominal")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("nominal")
    return [found] if found else [sys.executable, "-m", "app.cli"]


def vm_kib(pid: int, field: str) -> int:
    """``VmHWM`` / ``VmRSS`` of a process in KiB (from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Server:
    """``nominal serve`` on 127.0.0.1:<free port> with ``env`` overrides; logs go to a file."""

    def __init__(self, workdir: Path, database_url: str, **env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "NOMINAL_DATABASE_URL": database_url,
            "NOMINAL_ADMIN_KEY": ADMIN_KEY,
            "NOMINAL_MODELS_DIR": str(ROOT / "models"),
            "NOMINAL_INITIAL_KEY_FILE": str(workdir / "initial-admin-key"),
            "NOMINAL_LOG_LEVEL": "WARNING",
            "NOMINAL_INFERENCE_WORKERS": "2",
            "NOMINAL_INFERENCE_THREADS": "1",
            "NOMINAL_TRAINING_THREADS": "1",
            "NOMINAL_JOB_POLL_INTERVAL_S": "0.1",
            "NOMINAL_JOB_PROGRESS_INTERVAL_S": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"server-{self.port}.log"

    def start(self, timeout_s: float = 60.0) -> Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            [*nominal_executable(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout_s} s: {self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.url, headers={"X-API-Key": ADMIN_KEY}, **kwargs)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def wait_model(client: httpx.Client, name: str, version: int, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/variants/{name}/models/{version}").json()
        if body["status"] in ("ready", "failed", "cancelled"):
            return body  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"job still {body['status']} after {timeout_s} s"
        time.sleep(0.1)


def train_bolt(client: httpx.Client) -> int:
    """Variant ``bolt`` (resolution 64) with three good images and a ready, active model: its
    version."""
    assert client.post("/v1/variants", json={
        "name": "bolt", "settings": {"resolution": 64}}).status_code == 201
    files = [("files", (f"g{i}.png", good_png(i), "image/png")) for i in range(3)]
    assert client.post("/v1/variants/bolt/images", files=files).status_code == 201
    job = client.post("/v1/variants/bolt/models", json={"seed": 0})
    assert job.status_code == 202, job.text
    version: int = job.json()["version"]
    assert wait_model(client, "bolt", version)["status"] == "ready"
    return version


def assert_problem(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == response.status_code
    return body  # type: ignore[no-any-return]


def inspect_score(client: httpx.Client, variant: str, data: bytes) -> float:
    """Score of a PNG through ``POST /v1/variants/{variant}/inspect`` (must answer 200)."""
    response = client.post(f"/v1/variants/{variant}/inspect", content=data,
                           headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    return float(response.json()["score"])


# Integrity counts that must all be zero after any crash.
_ORPHAN_QUERIES = {
    "ready_without_artifact": "SELECT count(*) FROM model m WHERE m.status = 'ready' AND NOT "
                              "EXISTS (SELECT 1 FROM model_artifact a WHERE a.model_id = m.id)",
    "orphan_artifacts": "SELECT count(*) FROM model_artifact a WHERE NOT EXISTS "
                        "(SELECT 1 FROM model m WHERE m.id = a.model_id)",
}


def orphan_counts(database_url: str) -> dict[str, int]:
    """Ready models without their ONNX artifact, and artifacts without a model."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as db:
            return {name: int(db.execute(text(sql)).scalar() or 0)
                    for name, sql in _ORPHAN_QUERIES.items()}
    finally:
        engine.dispose()

