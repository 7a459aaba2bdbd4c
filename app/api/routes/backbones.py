"""``/v1/backbones``: the feature extractors a variant can be trained on, with their figures."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import BackboneLoaderDep, DetectorDep
from app.api.routes._docs import problems
from app.api.schemas import BackbonePublic
from app.api.security import AccessRoute, InspectorAccess
from app.services.backbones import list_backbones

router = APIRouter(prefix="/v1/backbones", tags=["backbones"],
                   route_class=AccessRoute)


@router.get("", dependencies=[InspectorAccess],
            response_model=list[BackbonePublic], responses=problems())
def get_backbones(detector: DetectorDep, loader: BackboneLoaderDep) -> list[BackbonePublic]:
    """Registered backbones with provenance, licence and measured figures (see BENCHMARKS.md)."""
    return [BackbonePublic.of(info) for info in list_backbones(detector, loader.loaded)]
