"""First run without NOMINAL_ADMIN_KEY: one stored admin key, handed over in a 0600 file."""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import ApiKey
from app.db.session import Database
from app.services.api_keys import INITIAL_ADMIN_NAME, create_initial_admin_key


def _stored_keys(database_url: str) -> list[tuple[str, str]]:
    database = Database(database_url)
    try:
        with database.reading() as session:
            return [(k.name, k.role) for k in session.scalars(select(ApiKey).order_by(ApiKey.id))]
    finally:
        database.dispose()


def test_first_start_writes_a_working_admin_key(
        make_client: Callable[..., TestClient], initial_key_file: Path, database_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        make_client(api_key=None, admin_key=None)
    assert stat.S_IMODE(initial_key_file.stat().st_mode) == 0o600
    key = initial_key_file.read_text().strip()
    assert key.startswith("nom_")
    assert _stored_keys(database_url) == [(INITIAL_ADMIN_NAME, "admin")]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert str(initial_key_file) in messages and key not in messages
    assert "no admin key" not in messages

    # A second start (a restart, or another replica): no new key, the file untouched.
    before = (initial_key_file.read_bytes(), initial_key_file.stat().st_mtime_ns)
    client = make_client(api_key=key, admin_key=None)
    assert (initial_key_file.read_bytes(), initial_key_file.stat().st_mtime_ns) == before
    assert _stored_keys(database_url) == [(INITIAL_ADMIN_NAME, "admin")]
    # The key works over HTTP, as admin.
    assert client.get("/v1/variants").status_code == 200
    created = client.post("/v1/api-keys", json={"name": "ops", "role": "admin"})
    assert created.status_code == 201, created.text
    assert client.post("/v1/variants", json={"name": "bolt"}).status_code == 201


def test_not_with_a_bootstrap_key_or_without_auth(make_client: Callable[..., TestClient],
                                                  initial_key_file: Path,
                                                  database_url: str) -> None:
    make_client()  # NOMINAL_ADMIN_KEY set
    make_client(api_key=None, auth_enabled=False, admin_key=None)
    assert not initial_key_file.exists()
    assert _stored_keys(database_url) == []


def test_an_unwritable_file_is_an_error_not_a_crash(
        make_client: Callable[..., TestClient], tmp_path: Path, database_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        client = make_client(api_key=None, admin_key=None,
                             initial_key_file=blocker / "initial-admin-key")
    assert client.get("/healthz").status_code == 200
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("could not write the initial admin key" in r.getMessage() for r in errors)
    assert any("no admin key" in r.getMessage() for r in caplog.records)
    assert _stored_keys(database_url) == []  # no key that nobody can read


def test_an_existing_file_is_never_overwritten(
        make_client: Callable[..., TestClient], initial_key_file: Path, database_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    initial_key_file.parent.mkdir(parents=True)
    initial_key_file.write_text("nom_000000000000_from-an-earlier-database\n")
    with caplog.at_level(logging.ERROR):
        make_client(api_key=None, admin_key=None)
    assert initial_key_file.read_text() == "nom_000000000000_from-an-earlier-database\n"
    assert any("already exists" in r.getMessage() for r in caplog.records)
    assert _stored_keys(database_url) == []


def test_replicas_starting_together_create_one_key(database_url: str, tmp_path: Path) -> None:
    """Four "replicas", each with its own file system, race for the empty table: one wins."""
    n = 4
    barrier = threading.Barrier(n)
    created: list[bool] = [False] * n
    errors: list[BaseException] = []

    def replica(i: int) -> None:
        database = Database(database_url, timeout_s=30)
        try:
            barrier.wait()
            with database.session(write=True) as session:
                row = create_initial_admin_key(session, key_file=tmp_path / f"r{i}" / "key")
            created[i] = row is not None
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            database.dispose()

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sum(created) == 1
    assert [(tmp_path / f"r{i}" / "key").exists() for i in range(n)] == created
    assert _stored_keys(database_url) == [(INITIAL_ADMIN_NAME, "admin")]
