"""``Annotated`` dependency aliases: what a handler needs, injected (and overridable in tests).

The process-wide objects (database, detector, model cache, worker, metrics) are built by the
app's lifespan and live on ``app.state``; these functions hand them to handlers.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from app.db.models import Variant
from app.db.session import Database
from app.detector.engine import Detector
from app.errors import AuthenticationError
from app.services import variants as variant_service
from app.services.backbones import BackboneLoader
from app.services.inspection import ModelCache
from app.services.metrics import Metrics
from app.services.training import TrainingWorker
from app.services.variants import NAME_PATTERN
from app.settings import Settings

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_database(request: Request) -> Database:
    return request.app.state.database  # type: ignore[no-any-return]


def get_session(request: Request, database: Annotated[Database, Depends(get_database)]
                ) -> Iterator[Session]:
    """A session per request; unsafe methods take the write lock up front on SQLite (see
    ``app.db.session``). Services commit; anything uncommitted is rolled back here."""
    with database.session(write=request.method not in _SAFE_METHODS) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[Session, Depends(get_session)]

VariantName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63,
                                  description="variant name (lowercase slug)",
                                  examples=["bolt-m8"])]
Version = Annotated[int, Path(ge=1, le=2**31 - 1, description="model version",
                              examples=[3])]
ImageId = Annotated[int, Path(ge=1, le=2**63 - 1, description="image id", examples=[41])]


def get_variant(name: VariantName, session: SessionDep) -> Variant:
    """Fetch-or-404, so handlers never repeat the lookup."""
    return variant_service.get_variant(session, name=name)


VariantDep = Annotated[Variant, Depends(get_variant)]


def get_detector(request: Request) -> Detector:
    return request.app.state.detector  # type: ignore[no-any-return]


def get_model_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache  # type: ignore[no-any-return]


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def get_worker(request: Request) -> TrainingWorker:
    return request.app.state.worker  # type: ignore[no-any-return]


def get_backbone_loader(request: Request) -> BackboneLoader:
    return request.app.state.backbone_loader  # type: ignore[no-any-return]


DetectorDep = Annotated[Detector, Depends(get_detector)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WorkerDep = Annotated[TrainingWorker, Depends(get_worker)]
BackboneLoaderDep = Annotated[BackboneLoader, Depends(get_backbone_loader)]


# ---------------------------------------------------------------------------- authentication

Role = Literal["admin", "inspector", "anonymous"]


@dataclass(frozen=True)
class Principal:
    """Who is calling. Today: the admin (key configured and given) or anonymous (no key
    configured). Roles per key (admin / inspector) drop in here later; handlers that need a
    role will depend on ``require_role(...)`` built on this."""

    role: Role
    key_id: str | None = None


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="required when NOMINAL_ADMIN_KEY is set")


def authenticate(settings: SettingsDep,
                 api_key: Annotated[str | None, Security(_api_key_header)] = None) -> Principal:
    """Check ``X-API-Key`` against ``NOMINAL_ADMIN_KEY`` in constant time (401 otherwise)."""
    if settings.admin_key is None:
        return Principal(role="anonymous")
    if not api_key:
        raise AuthenticationError("missing X-API-Key header")
    expected = settings.admin_key.get_secret_value().encode()
    if not hmac.compare_digest(api_key.encode(), expected):
        raise AuthenticationError("invalid API key")
    return Principal(role="admin", key_id="admin")


ApiKeyDep = Annotated[Principal, Depends(authenticate)]
