"""Builds the FastAPI app: routers (each /v1 route with its access decision and body limit),
middleware, error handlers, the offline docs pages, and the lifespan that owns the
process-wide objects (database engine, detector + backbones, model cache, training worker).

The schema is not created here: ``nominal serve`` (and ``nominal migrate``) run
``app.db.migrate.upgrade_to_head`` before ``create_app``, so Alembic alone owns it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

import app as package
from app.api.docs import DESCRIPTION, DOCS_CSP, OPENAPI_TAGS, docs_paths, install_docs
from app.api.errors import install_error_handlers
from app.api.middleware import (
    JSON_BODY_LIMIT,
    BodySizeLimitMiddleware,
    ObservabilityMiddleware,
    SecurityHeadersMiddleware,
    check_body_limits,
    image_routes,
)
from app.api.routes import (
    api_keys,
    backbones,
    health,
    images,
    inspect,
    models,
    presets,
    records,
    variants,
)
from app.api.security import check_access_decisions
from app.db.session import Database
from app.detector.engine import Detector
from app.detector.runtime import RuntimeOptions
from app.logs import configure_logging
from app.services import records as record_service
from app.services.api_keys import prepare_access
from app.services.backbones import BackboneLoader
from app.services.inspection import ModelCache
from app.services.metrics import Metrics
from app.services.training import TrainingWorker
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)


async def _sweep_records(database: Database, interval_s: float) -> None:
    """Every ``interval_s``: the record images every variant's policy no longer keeps go
    (also where no new image arrives to trigger it)."""
    while True:
        await anyio.sleep(interval_s)
        try:
            removed = await anyio.to_thread.run_sync(record_service.sweep, database)
        except Exception:  # a failed sweep is retried at the next interval
            log.exception("record retention sweep failed")
        else:
            if removed:
                log.info("record retention: %d kept images removed", removed)


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
                           metrics=metrics)
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
        await anyio.to_thread.run_sync(prepare_access, settings, database)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_sweep_records, database, settings.record_sweep_interval_s)
                try:
                    yield
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            await anyio.to_thread.run_sync(worker.stop)
            cache.clear()
            database.dispose()

    app = FastAPI(title="Nominal", version=package.__version__, description=DESCRIPTION,
                  lifespan=lifespan, openapi_tags=OPENAPI_TAGS,
                  docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)

    # Each /v1 route declares who may call it (app.api.security) and whether its body is
    # images (app.api.middleware.ImageBody); no router-wide default for either.
    for module in (variants, images, models, inspect, records, presets, backbones, api_keys):
        app.include_router(module.router)
    app.include_router(health.router)
    if settings.metrics_access != "off":
        app.include_router(health.metrics_router(settings.metrics_access))
    install_docs(app)
    check_access_decisions(app.routes)
    check_body_limits(app.routes)

    # Added last = outermost: request ids, metrics and access lines cover every answer, the
    # 413 guard's included; security headers go on every answer.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes,
                       json_max_bytes=JSON_BODY_LIMIT, image_routes=image_routes(app.routes))
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=docs_paths(), docs_csp=DOCS_CSP)
    return app
