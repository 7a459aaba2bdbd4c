"""Body limits are declared by the routes (``ImageBody``), and a route that reads images
without declaring it cannot be built into an app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
from fastapi import APIRouter, FastAPI, File, UploadFile

from app.api.middleware import (
    JSON_BODY_LIMIT,
    BodySizeLimitMiddleware,
    ImageBody,
    check_body_limits,
    image_routes,
)
from app.main import create_app
from app.settings import Settings


def _app(router: APIRouter) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    return app


def test_service_routes_declare_their_image_bodies(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'n.db'}"))
    declared = image_routes(app.routes)
    assert sorted(r.pattern.pattern for r in declared) == [
        "^/v1/variants/(?P<name>[^/]+)/images$",
        "^/v1/variants/(?P<name>[^/]+)/inspect$",
        "^/v1/variants/(?P<name>[^/]+)/inspect/batch$",
    ]
    limits = BodySizeLimitMiddleware(app, max_bytes=50_000_000, json_max_bytes=JSON_BODY_LIMIT,
                                     image_routes=declared)
    assert limits.limit_for("POST", "/v1/variants/bolt-m8/inspect") == 50_000_000
    assert limits.limit_for("POST", "/v1/variants/bolt-m8/images") == 50_000_000
    # Same path, another method; and routes whose bodies are JSON.
    assert limits.limit_for("GET", "/v1/variants/bolt-m8/images") == JSON_BODY_LIMIT
    assert limits.limit_for("POST", "/v1/variants") == JSON_BODY_LIMIT
    assert limits.limit_for("POST", "/v1/variants/bolt-m8/models") == JSON_BODY_LIMIT
    assert limits.limit_for("POST", "/v1/variants/a/b/inspect") == JSON_BODY_LIMIT


def test_an_undeclared_upload_route_is_refused() -> None:
    router = APIRouter(prefix="/v1/things")

    @router.post("/{name}/photos")
    def upload(name: str, files: Annotated[list[UploadFile], File()]) -> None: ...

    with pytest.raises(RuntimeError, match=r"\['POST'\] /v1/things/\{name\}/photos"):
        check_body_limits(_app(router).routes)


def test_an_undeclared_raw_image_route_is_refused() -> None:
    router = APIRouter()
    body = {"requestBody": {"content": {"image/png": {"schema": {"type": "string"}}}}}

    @router.post("/score", openapi_extra=body)
    def score() -> None: ...

    with pytest.raises(RuntimeError, match="/score"):
        check_body_limits(_app(router).routes)


def test_declared_routes_pass() -> None:
    router = APIRouter()

    @router.post("/photos", dependencies=[ImageBody])
    def upload(files: Annotated[list[UploadFile], File()]) -> None: ...

    app = _app(router)
    check_body_limits(app.routes)
    assert [r.pattern.pattern for r in image_routes(app.routes)] == ["^/photos$"]
