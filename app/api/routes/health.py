"""Probes and metrics: ``/healthz`` and ``/readyz`` are always open (orchestrators call them
without keys); ``/metrics`` is open, behind a key or off (``NOMINAL_METRICS_ACCESS``)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

import app
from app.api.deps import BackboneLoaderDep, DatabaseDep, MetricsDep, ModelCacheDep
from app.api.errors import TYPE_PREFIX, problem
from app.api.routes._docs import problems
from app.api.schemas import HealthPublic, ReadinessPublic
from app.api.security import AccessRoute, InspectorAccess
from app.services.training import active_versions

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    """The process is up (liveness: checks nothing else, so a slow database never restarts it)."""
    return HealthPublic(status="ok", version=app.__version__)


@router.get("/readyz", response_model=ReadinessPublic, responses={503: problems(503)[503]})
def readyz(database: DatabaseDep, loader: BackboneLoaderDep) -> ReadinessPublic | JSONResponse:
    """Ready for traffic: the database answers and the configured backbones are loaded."""
    checks: dict[str, str] = {}
    try:
        database.ping()
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        log.warning("readiness: database unreachable: %s", exc)
        checks["database"] = f"unreachable: {type(exc).__name__}"
    state = loader.status()
    if state["pending"]:
        checks["backbones"] = "loading"
    elif state["errors"]:
        checks["backbones"] = "failed: " + ", ".join(sorted(state["errors"]))
    else:
        checks["backbones"] = "ok"
    if all(value == "ok" for value in checks.values()):
        return ReadinessPublic(status="ready", checks=checks)
    failing = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    return problem(503, f"not ready: {failing}", type_=TYPE_PREFIX + "not-ready",
                   instance="/readyz", checks=checks)


def metrics_endpoint(metrics: MetricsDep, database: DatabaseDep,
                     cache: ModelCacheDep) -> Response:
    """Prometheus metrics of this replica (requests by route template, inspect latency and score
    by variant, anomalies, training durations, cache size, active version per variant)."""
    try:
        with database.reading() as session:
            metrics.set_active_versions(active_versions(session))
    except SQLAlchemyError:
        log.warning("metrics: could not read active versions", exc_info=True)
    metrics.model_cache_size.set(len(cache))
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "content": {CONTENT_TYPE_LATEST: {"example": (
        "# TYPE nominal_anomalies_total counter\n"
        'nominal_anomalies_total{variant="bolt-m8"} 3.0\n')}},
    "description": "Prometheus text exposition"}}


def metrics_router(access: Literal["open", "key"]) -> APIRouter:
    """``/metrics``, open to scrapers or (``key``) behind any valid API key, per
    ``NOMINAL_METRICS_ACCESS``; ``off`` does not mount it at all."""
    router = APIRouter(tags=["health"], route_class=AccessRoute)
    router.add_api_route(
        "/metrics", metrics_endpoint, methods=["GET"], response_class=Response,
        dependencies=[InspectorAccess] if access == "key" else [],
        responses={**_METRICS_RESPONSES, **(problems() if access == "key" else {})})
    return router
