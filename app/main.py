"""Builds the FastAPI app: routers, middleware, error handlers and the lifespan that owns the
process-wide objects (database engine, detector + backbones, model cache, training worker).

The schema is not created here: ``nominal serve`` runs ``app.db.migrate.upgrade_to_head``
before ``create_app``, so Alembic alone owns it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import app as package
from app.api.deps import authenticate
from app.api.errors import install_error_handlers, problem
from app.api.routes import backbones, health, images, inspect, models, variants
from app.db.session import Database
from app.detector.engine import Detector
from app.detector.runtime import RuntimeOptions
from app.services.backbones import BackboneLoader
from app.services.inspection import ModelCache
from app.services.metrics import Metrics
from app.services.training import TrainingWorker
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1024 * 1024  # variants and models take small JSON bodies only

DESCRIPTION = """\
Few-shot visual anomaly inspection: upload a handful of **good** images of a part, train a
model (seconds), then inspect new images and get a score, a verdict and a heatmap.

Typical flow:

1. `POST /v1/variants` `{"name": "bolt-m8"}`
2. `POST /v1/variants/bolt-m8/images` (multipart `files`, `label=good`)
3. `POST /v1/variants/bolt-m8/models` `{}` -> 202 `{"version": 1, "status": "queued"}`;
   poll `GET /v1/variants/bolt-m8/models/1` until `ready`
4. `POST /v1/variants/bolt-m8/inspect` with the image (raw body or multipart `file`)

Every error is an RFC 9457 problem document (`application/problem+json`). When
`NOMINAL_ADMIN_KEY` is set, `/v1` requires it in `X-API-Key`.
"""


class MetricsMiddleware:
    """Counts requests and their latency by method, route *template* and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # Routers carry their full prefix (/v1/...), so the route's path is the template.
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.request_latency.labels(method=method, route=template).observe(
                time.perf_counter() - started)


class RequestTooLargeError(StarletteHTTPException):
    """Raised from ``receive`` when a body outgrows its limit. An ``HTTPException`` on purpose:
    FastAPI re-raises those from body parsing (other errors become a vague 400), so the problem
    handler answers it like any other 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes "
                              "(NOMINAL_MAX_REQUEST_BYTES)")


class BodySizeLimitMiddleware:
    """Request body limits, enforced before bodies are in memory: a declared Content-Length
    over the limit is refused unread; otherwise bytes are counted as they stream in.

    Image routes (uploads, inspect) get ``max_bytes``; every other route takes small JSON
    bodies and gets ``json_max_bytes``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, json_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.json_max_bytes = json_max_bytes

    def limit_for(self, path: str) -> int:
        return self.max_bytes if _IMAGE_ROUTE.search(path) else self.json_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit, f"{int(declared)} bytes")
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLargeError:
            if started:
                raise
            await self._refuse(scope, receive, send, limit, f"more than {limit} bytes")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int, size: str) -> None:
        response = problem(413, f"the request body is {size}; the limit is {limit} bytes "
                                "(NOMINAL_MAX_REQUEST_BYTES)",
                           type_="urn:nominal:problem:limit-exceeded", title="Limit exceeded",
                           instance=scope.get("path"), headers={"Connection": "close"})
        await response(scope, receive, send)


_IMAGE_ROUTE = re.compile(r"^/v1/variants/[^/]+/(images|inspect|inspect/batch)/?$")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.database_url, timeout_s=settings.db_timeout_s,
                            pool_size=settings.db_pool_size)
        detector = Detector(settings.models_dir, RuntimeOptions(threads=settings.training_threads))
        loader = BackboneLoader(detector, settings.preload_backbones)
        loader.start()
        cache = ModelCache(settings.model_cache_size,
                           RuntimeOptions(threads=settings.inference_threads),
                           on_change=metrics.model_cache_size.set)
        worker = TrainingWorker(
            database=database, detector=detector, metrics=metrics,
            threads=settings.training_workers, poll_interval_s=settings.job_poll_interval_s,
            heartbeat_interval_s=settings.job_heartbeat_interval_s,
            stale_after_s=settings.job_stale_after_s,
            progress_interval_s=settings.job_progress_interval_s,
            max_pixels=settings.max_image_pixels,
        )
        await anyio.to_thread.run_sync(worker.start)
        app.state.database = database
        app.state.detector = detector
        app.state.backbone_loader = loader
        app.state.model_cache = cache
        app.state.worker = worker
        app.state.inference_limiter = anyio.CapacityLimiter(settings.inference_workers)
        log.info("nominal %s ready (database %s, worker %s)", package.__version__,
                 database.engine.url.render_as_string(hide_password=True), worker.worker_id)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(worker.stop)
            cache.clear()
            database.dispose()

    app = FastAPI(
        title="Nominal",
        version=package.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "variants", "description": "kinds of parts, each with its own models"},
            {"name": "images", "description": "training examples (good, optionally defect)"},
            {"name": "models", "description": "training jobs, activation, ONNX download"},
            {"name": "inspect", "description": "scoring images with the active model"},
            {"name": "backbones", "description": "available feature extractors"},
            {"name": "health", "description": "probes and metrics (no API key)"},
        ],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    # Added last = outermost: metrics see every answer, the 413 guard's included.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes,
                       json_max_bytes=JSON_BODY_LIMIT)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    auth = [Depends(authenticate)]
    app.include_router(variants.router, dependencies=auth)
    app.include_router(images.router, dependencies=auth)
    app.include_router(models.router, dependencies=auth)
    app.include_router(inspect.router, dependencies=auth)
    app.include_router(backbones.router, dependencies=auth)
    app.include_router(health.router)
    return app
