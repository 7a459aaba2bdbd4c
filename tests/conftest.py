"""Fixtures of the service tests: a migrated database per test (SQLite file and PostgreSQL),
the real app behind a TestClient, and generated images.

``database_url`` is parametrised, so every test that uses it runs twice: ``[sqlite]`` on a
fresh file, ``[postgresql]`` in a fresh schema of the server at 127.0.0.1:5432 (dropped after
the test). Where that server does not answer, the PostgreSQL half is skipped with the reason.
Set ``NOMINAL_TEST_POSTGRES_URL`` to use another server.
"""

from __future__ import annotations

import io
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The repository's models/ with the default backbone built (once, if set-up has not)."""
    from app.detector.backbones import backbone_path

    backbone_path("efficientnet_lite0", MODELS_DIR)
    return MODELS_DIR


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'nominal.db'}"
        upgrade_to_head(url)
        yield url
        return
    reason = _postgres_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    rendered = url.render_as_string(hide_password=False)
    try:
        upgrade_to_head(rendered)
        yield rendered
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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
        "admin_key": None,  # whatever the developer's shell exports
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, models_dir: Path) -> Settings:
    return make_settings(database_url, models_dir)


@pytest.fixture
def make_client(models_dir: Path, database_url: str) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**setting_overrides)``: a started app on this test's database. Clients
    are closed (lifespan shutdown) at the end of the test."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(database_url, models_dir, **overrides)))
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
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
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
        body.setdefault("settings", {"resolution": 64})
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
