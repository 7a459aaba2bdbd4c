"""PostgreSQL outage under inspect traffic, on a PRIVATE PostgreSQL instance (initdb into a
temporary directory, own port and socket dir; the shared server on 5432 is never touched).

Decided by the code (app/services/inspection.py reads the active model row on every inspect;
app/api/errors.py maps OperationalError / pool timeouts to 503): while the database is down,
inspect answers 503 in the problem shape with ``Retry-After`` -- fast, within
NOMINAL_DB_TIMEOUT_S + 2 s -- never 200 from a cached model and never 500. ``/readyz`` turns 503.
Once the database is back the same process recovers (pool_pre_ping): readyz 200, uploads and
inspects work, without a restart.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import good_png
from tests.reliability._server import Server, assert_problem, free_port, train_bolt

DB_TIMEOUT_S = 3.0


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir, self.root = bindir, root
        self.data, self.sock = root / "data", root / "sock"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            if not shutil.which("runuser"):
                pytest.skip("running as root and runuser is missing: cannot run initdb")
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user for initdb")
            self.prefix = ["runuser", "-u", "postgres", "--"]
            os.chown(root, pw.pw_uid, pw.pw_gid)
        self.sock.mkdir()
        if self.prefix:
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "--no-sync", timeout=120)

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                  str(self.root / "pg.log"), "-o",
                  f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-m", "immediate",
                  "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="nominal-pg-"))
    pg = PrivatePostgres(bindir, root)
    try:
        pg.init()
        pg.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a private PostgreSQL: {exc.stderr!r}"[:300])
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_db_outage_then_recovery(postgres: PrivatePostgres, tmp_path: Path) -> None:
    server = Server(tmp_path, postgres.url, NOMINAL_DB_TIMEOUT_S=str(DB_TIMEOUT_S)).start()
    probe = good_png(9)
    headers = {"content-type": "image/png"}
    try:
        with server.client(timeout=30) as client:
            train_bolt(client)
            assert client.post("/v1/variants/bolt/inspect", content=probe,
                               headers=headers).status_code == 200

            postgres.stop()
            statuses: list[int] = []
            slowest = 0.0
            for _ in range(10):
                started = time.monotonic()
                response = client.post("/v1/variants/bolt/inspect", content=probe,
                                       headers=headers)
                slowest = max(slowest, time.monotonic() - started)
                statuses.append(response.status_code)
                assert response.status_code == 503, response.text
                assert_problem(response)
                assert response.headers.get("retry-after") == "1"
            ready = client.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert_problem(ready)
            assert slowest < DB_TIMEOUT_S + 2, f"slowest answer during the outage {slowest:.1f} s"

            postgres.start()
            deadline = time.monotonic() + 20
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "readyz did not recover within 20 s"
                time.sleep(0.2)
            recovered_after = 20 - (deadline - time.monotonic())
            upload = client.post("/v1/variants/bolt/images",
                                 files=[("files", ("new.png", good_png(42), "image/png"))])
            assert upload.status_code == 201, upload.text
            assert client.post("/v1/variants/bolt/inspect", content=probe,
                               headers=headers).status_code == 200
        print(f"\noutage: {statuses}, slowest {slowest:.2f} s; "
              f"readyz back {recovered_after:.1f} s after restart")
    finally:
        server.stop()
