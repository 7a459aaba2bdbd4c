"""``Annotated`` dependency aliases: what a handler needs, injected (and overridable in tests).

The process-wide objects (database, detector, model cache, worker, metrics) are built by the
app's lifespan and live on ``app.state``; these functions hand them to handlers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from app.db.models import Variant
from app.db.session import Database
from app.detector.engine import Detector
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
