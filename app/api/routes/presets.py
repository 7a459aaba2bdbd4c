"""``/v1/presets``: the named configurations a variant can choose instead of single settings."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes._docs import problems
from app.api.schemas import PresetPublic
from app.api.security import AccessRoute, InspectorAccess
from app.detector.presets import PRESETS

router = APIRouter(prefix="/v1/presets", tags=["presets"], route_class=AccessRoute)


@router.get("", dependencies=[InspectorAccess],
            response_model=list[PresetPublic], responses=problems())
def get_presets() -> list[PresetPublic]:
    """Every preset: what it is for, the settings it sets, the configuration it resolves to and
    its cost (see BENCHMARKS.md, "Presets", for its figures on four kinds of data). ``auto``
    is not listed: it is a choice among these, made at each training by the quality reports
    of the presets within the variant's ``auto_latency_budget``."""
    return [PresetPublic.of(preset) for preset in PRESETS.values()]
