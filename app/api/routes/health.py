"""Probes and metrics, open without an API key: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

import app
from app.api.deps import BackboneLoaderDep, DatabaseDep, MetricsDep, ModelCacheDep
from app.api.errors import TYPE_PREFIX, problem
from app.api.routes._docs import problems
from app.api.schemas import HealthPublic, ReadinessPublic
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


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": (
                "# TYPE nominal_anomalies_total counter\n"
                'nominal_anomalies_total{variant="bolt-m8"} 3.0\n')}},
                "description": "Prometheus text exposition"}})
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
