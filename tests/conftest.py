"""Fixtures of the service tests: a migrated database per test (SQLite file and PostgreSQL),
the real app behind a TestClient, and generated images.

``database_url`` is parametrised, so every test that uses it runs twice: ``[sqlite]`` on a
fresh file, ``[postgresql]`` in a fresh schema of the server at 127.0.0.1:5432 (dropped after
the test). Where that server does not answer, the PostgreSQL half is skipped with the reason.
Set ``NOMINAL_TEST_POSTGRES_URL`` to use another server, and ``NOMINAL_TEST_REQUIRE_POSTGRES=1``
(as .ci/run does) to fail instead of skipping when it does not answer.
"""

from __future__ import annotations

import io
import os
import struct
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")

from fastapi.testclient import TestClient  # noqa: E402

from app.db.migrate import upgrade_to_head  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
# The bootstrap admin key of test apps; ``client`` sends it unless told otherwise.
ADMIN_KEY = "test-admin-key-0123456789"
POSTGRES_URL = os.environ.get("NOMINAL_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")

_postgres_error: str | None | bool = False  # False: not probed yet


def _postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used (None when it can); probed once per session."""
    global _postgres_error
    if _postgres_error is False:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            _postgres_error = None
        except Exception as exc:  # any failure means: skip, with the reason
            _postgres_error = f"no PostgreSQL server answers at {POSTGRES_URL}: {exc}"[:300]
        finally:
            engine.dispose()
    return _postgres_error  # type: ignore[return-value]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "replicas: two uvicorn processes on PostgreSQL (about 20 s; in the normal "
                   "suite, deselect with -m 'not replicas')")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The repository's models/ with the default backbone built (once, if set-up has not)."""
    from app.detector.backbones import backbone_path
    from app.detector.config import DEFAULT_BACKBONE

    backbone_path(DEFAULT_BACKBONE, MODELS_DIR)
    return MODELS_DIR


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, or a new schema on the PostgreSQL server (dropped
    afterwards; the URL pins ``search_path`` to it). Skips when PostgreSQL does not answer."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'nominal.db'}"
        return
    reason = _postgres_unavailable()
    if reason and os.environ.get("NOMINAL_TEST_REQUIRE_POSTGRES"):
        pytest.fail(f"{reason} (NOMINAL_TEST_REQUIRE_POSTGRES is set, as in CI)")
    if reason:
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(name="fresh_database", scope="session")
def _fresh_database_fixture() -> Callable[[str, Path], AbstractContextManager[str]]:
    """``fresh_database(kind, tmp_path)`` for fixtures of a wider scope than a test."""
    return fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database without any table, on each backend."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """A freshly migrated database (``upgrade head``), on each backend."""
    upgrade_to_head(empty_database_url)
    return empty_database_url


@pytest.fixture
def postgres_database_url(tmp_path: Path) -> Iterator[str]:
    """A freshly migrated PostgreSQL schema, for tests that only make sense there."""
    with fresh_database("postgresql", tmp_path) as url:
        upgrade_to_head(url)
        yield url


def make_settings(database_url: str, models_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: fast polling, no progress throttling, small pools."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "models_dir": models_dir,
        "job_poll_interval_s": 0.05,
        "job_progress_interval_s": 0.0,
        "job_heartbeat_interval_s": 0.5,
        "job_stale_after_s": 5.0,
        "training_threads": 1,
        "inference_threads": 1,
        "inference_workers": 2,
        "db_pool_size": 4,
        "auth_enabled": True,
        "admin_key": ADMIN_KEY,  # not whatever the developer's shell exports
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def admin_key() -> str:
    """The bootstrap admin key (NOMINAL_ADMIN_KEY) of test apps."""
    return ADMIN_KEY


@pytest.fixture
def initial_key_file(tmp_path: Path) -> Path:
    """Where this test's apps write a generated first admin key (never the repository's data/)."""
    return tmp_path / "keys" / "initial-admin-key"


@pytest.fixture
def settings(database_url: str, models_dir: Path, initial_key_file: Path) -> Settings:
    return make_settings(database_url, models_dir, initial_key_file=initial_key_file)


@pytest.fixture
def make_client(models_dir: Path, database_url: str,
                initial_key_file: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(api_key=..., **setting_overrides)``: a started app on this test's database,
    sending ``api_key`` (default: the bootstrap admin key; None: no key) with every request.
    Clients are closed (lifespan shutdown) at the end of the test."""
    opened: list[TestClient] = []

    def make(api_key: str | None = ADMIN_KEY, **overrides: Any) -> TestClient:
        overrides.setdefault("initial_key_file", initial_key_file)
        client = TestClient(create_app(make_settings(database_url, models_dir, **overrides)),
                            headers={"X-API-Key": api_key} if api_key else None)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


# ---------------------------------------------------------------------------- images


def good_pixels(seed: int, size: int = 96, noise: float = 4.0) -> np.ndarray:
    """A textured "good" part ``(size, size, 3)`` uint8: product of sines plus seeded noise."""
    return textured_part(seed, size, size, noise)


def textured_part(seed: int, height: int, width: int, noise: float = 4.0) -> np.ndarray:
    """``(height, width, 3)`` uint8: product of sines (period 12 x 16 px) in three tints, plus
    seeded noise; the synthetic "good" part of every test."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128.0 + 60.0 * np.sin(2 * np.pi * xx / 12.0) * np.cos(2 * np.pi * yy / 16.0)
    image = np.stack([base, 0.8 * base + 30.0, 200.0 - 0.5 * base], axis=2)
    image += rng.normal(0.0, noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def defect_pixels(seed: int, size: int = 96, radius: int = 10) -> np.ndarray:
    """A good part with a dark disc drawn in the middle."""
    image = good_pixels(seed, size).copy()
    yy, xx = np.mgrid[0:size, 0:size]
    image[(yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius * radius] = (20, 20, 20)
    return image


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a PNG) with its IHDR patched to declare ``width x height`` (CRC fixed): a
    header-only decompression bomb, tiny on the wire."""
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return data[:16] + ihdr + crc + data[33:]


def good_png(seed: int) -> bytes:
    return encode(good_pixels(seed))


def defect_png(seed: int) -> bytes:
    return encode(defect_pixels(seed))


# ---------------------------------------------------------------------------- API helpers


class Api:
    """Test-side shortcuts over a client (asserting the happy path where it is not the point)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def create_variant(self, name: str = "bolt", **body: Any) -> dict[str, Any]:
        # Tiny generated parts: the quality gate's floor is set to what they need (none).
        body.setdefault("settings", {"resolution": 64, "min_expected_auroc": 0.0})
        response = self.client.post("/v1/variants", json={"name": name, **body})
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def upload(self, name: str, images: list[bytes], label: str | None = None) -> Any:
        files = [("files", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
        return self.client.post(f"/v1/variants/{name}/images", files=files,
                                data={"label": label} if label else None)

    def wait_for_model(self, name: str, version: int, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll until the job has finished; returns its final state."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = self.client.get(f"/v1/variants/{name}/models/{version}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in ("ready", "failed", "cancelled"):
                return body
            assert time.monotonic() < deadline, f"job still {body['status']} after {timeout_s} s"
            time.sleep(0.02)

    def train(self, name: str, **body: Any) -> dict[str, Any]:
        """Queue a training job and wait for it to finish."""
        response = self.client.post(f"/v1/variants/{name}/models", json=body)
        assert response.status_code == 202, response.text
        return self.wait_for_model(name, response.json()["version"])

    def trained_variant(self, name: str = "bolt", n_good: int = 3) -> dict[str, Any]:
        """A variant with ``n_good`` good images and a ready, active model."""
        self.create_variant(name)
        assert self.upload(name, [good_png(s) for s in range(n_good)]).status_code == 201
        model = self.train(name, seed=0)
        assert model["status"] == "ready", model
        return model


@pytest.fixture(scope="session")
def api_class() -> type[Api]:
    """``Api`` itself, to wrap clients made with ``make_client``."""
    return Api


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)


@pytest.fixture
def trained(api: Api) -> Api:
    """``api`` whose variant ``bolt`` has three good images and an active model (v1)."""
    api.trained_variant("bolt")
    return api


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.fixture
def problem() -> Callable[[Any, int], dict[str, Any]]:
    return assert_problem


class Images:
    """The image generators, as a fixture (test modules need not import conftest)."""

    good_pixels = staticmethod(good_pixels)
    defect_pixels = staticmethod(defect_pixels)
    encode = staticmethod(encode)
    good_png = staticmethod(good_png)
    defect_png = staticmethod(defect_png)


@pytest.fixture(scope="session")
def images() -> type[Images]:
    return Images
