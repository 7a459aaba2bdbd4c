"""Builds the FastAPI app: logging, routers (each /v1 route with its access decision),
middleware (request ids, metrics, body limits), error handlers and the lifespan that owns the
process-wide objects (database engine, detector + backbones, model cache, training worker).

The schema is not created here: ``nominal serve`` runs ``app.db.migrate.upgrade_to_head``
before ``create_app``, so Alembic alone owns it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import app as package
from app.api.errors import install_error_handlers, problem
from app.api.routes import api_keys, backbones, health, images, inspect, models, variants
from app.api.security import check_access_decisions
from app.db.session import Database
from app.detector.engine import Detector
from app.detector.runtime import RuntimeOptions
from app.logs import configure_logging, request_id_var
from app.services import api_keys as api_key_service
from app.services.backbones import BackboneLoader
from app.services.inspection import ModelCache
from app.services.metrics import Metrics
from app.services.training import TrainingWorker
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("app.access")

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

Every error is an RFC 9457 problem document (`application/problem+json`).

Every `/v1` request carries an API key in `X-API-Key` (401 without a valid one). An `admin` key
may do everything, key management (`/v1/api-keys`) included; an `inspector` key may inspect and
read variants and model status, and gets 403 for anything that changes state.
`NOMINAL_ADMIN_KEY` is an admin key from the environment, to create the first keys with;
without it, the first start stores an admin key and writes it to `data/initial-admin-key`
(`NOMINAL_INITIAL_KEY_FILE`).
"""


class ObservabilityMiddleware:
    """Per request: the request id, metrics by route *template*, and one structured access line.

    The id comes from ``X-Request-ID`` when the caller (or the load balancer) sends a sane one,
    else it is generated; it is echoed in the response and stamped on every log line of the
    request. Routers carry their full prefix (/v1/...), so the matched route's path is the
    template; requests that match no route are counted as ``<unmatched>``, never by raw path.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = Headers(scope=scope).get("x-request-id", "")
        request_id = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.request_latency.labels(method=method, route=template).observe(elapsed)
            client = scope.get("client")
            access_log.log(
                logging.DEBUG if template in _QUIET_ROUTES and status < 400 else logging.INFO,
                "%s %s %d", method, template, status,
                extra={"method": method, "route": template, "path": scope.get("path", ""),
                       "status": status, "duration_ms": round(elapsed * 1000.0, 3),
                       "client": client[0] if client else None})
            request_id_var.reset(token)


# Probes and scrapes arrive every few seconds: logged at DEBUG unless they fail.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# What we accept as a caller's request id: bounded and printable, so it is safe in logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@+=/-]{1,128}$")


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


class SecurityHeadersMiddleware:
    """Hardening headers on every answer: ``nosniff``, ``no-referrer``, no framing
    (``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``) and ``Cache-Control:
    no-store`` unless the route set its own. API answers also get CSP ``default-src 'none'``
    (JSON/ONNX are never rendered); the interactive docs pages (``/docs``, ``/redoc``) load
    scripts and styles from their CDN, so they get only ``frame-ancestors 'none'``."""

    API_CSP = b"default-src 'none'; frame-ancestors 'none'"
    DOCS_CSP = b"frame-ancestors 'none'"

    def __init__(self, app: ASGIApp, docs_paths: frozenset[str]) -> None:
        self.app = app
        self.docs_paths = docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.DOCS_CSP if scope.get("path", "") in self.docs_paths else self.API_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in ((b"x-content-type-options", b"nosniff"),
                                    (b"referrer-policy", b"no-referrer"),
                                    (b"x-frame-options", b"DENY"),
                                    (b"content-security-policy", csp),
                                    (b"cache-control", b"no-store")):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_IMAGE_ROUTE = re.compile(r"^/v1/variants/[^/]+/(images|inspect|inspect/batch)/?$")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.database_url, timeout_s=settings.db_timeout_s,
                            pool_size=settings.db_pool_size)
        providers = settings.execution_providers
        detector = Detector(settings.models_dir,
                            RuntimeOptions(threads=settings.training_threads, providers=providers))
        loader = BackboneLoader(detector, settings.preload_backbones)
        loader.start()
        cache = ModelCache(settings.model_cache_size,
                           RuntimeOptions(threads=settings.inference_threads,
                                          providers=providers),
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
        await anyio.to_thread.run_sync(_initial_admin_key, settings, database)
        await anyio.to_thread.run_sync(_warn_about_auth, settings, database)
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
            {"name": "api-keys", "description": "who may call the service (admin only)"},
            {"name": "health", "description": "probes (no API key) and metrics"},
        ],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    # Added last = outermost: request ids, metrics and access lines cover every answer, the
    # 413 guard's included.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes,
                       json_max_bytes=JSON_BODY_LIMIT)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    docs_paths = frozenset(p for p in (app.docs_url, app.redoc_url,
                                       app.swagger_ui_oauth2_redirect_url) if p)
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=docs_paths)

    # Each /v1 route declares who may call it (app.api.security); no router-wide default.
    for module in (variants, images, models, inspect, backbones, api_keys):
        app.include_router(module.router)
    app.include_router(health.router)
    if settings.metrics_access != "off":
        app.include_router(health.metrics_router(settings.metrics_access))
    check_access_decisions(app.routes)
    return app


def _initial_admin_key(settings: Settings, database: Database) -> None:
    """First run without ``NOMINAL_ADMIN_KEY``: store an admin key and write it to
    ``NOMINAL_INITIAL_KEY_FILE``, so the service is usable without reading the docs first.
    Nothing happens once any admin key exists (restarts, other replicas)."""
    if not settings.auth_enabled or settings.admin_key is not None:
        return
    try:
        with database.session(write=True) as session:
            row = api_key_service.create_initial_admin_key(
                session, key_file=settings.initial_key_file)
    except SQLAlchemyError:
        log.exception("could not create the initial admin key")
        return  # readiness reports the database
    if row is not None:
        log.warning("created the admin API key %r and wrote it to %s (readable by this user "
                    "only); send it in X-API-Key, create your own keys with POST /v1/api-keys, "
                    "then revoke it. Deployments set NOMINAL_ADMIN_KEY instead.",
                    row.name, settings.initial_key_file.resolve())


def _warn_about_auth(settings: Settings, database: Database) -> None:
    """Say loudly when nobody is checked, or when nobody could manage keys."""
    if not settings.auth_enabled:
        log.warning("authentication is OFF (NOMINAL_AUTH_ENABLED=false): every caller acts as "
                    "admin. For local development only; never expose this instance.")
        return
    if settings.admin_key is not None:
        return
    try:
        with database.reading() as session:
            admins = api_key_service.count_admin_keys(session)
    except SQLAlchemyError:
        return  # readiness reports the database
    if admins == 0:
        log.warning("no admin key: NOMINAL_ADMIN_KEY is not set and the database holds no admin "
                    "API key, so nobody can create keys; set NOMINAL_ADMIN_KEY")
