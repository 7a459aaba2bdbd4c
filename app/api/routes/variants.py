"""``/v1/variants``: a variant is one kind of part with its own images and models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.api.deps import ModelCacheDep, SessionDep, VariantDep
from app.api.routes._docs import problems
from app.api.schemas import VariantCreate, VariantPage, VariantPublic, VariantUpdate
from app.api.security import AccessRoute, AdminAccess, InspectorAccess
from app.services import training
from app.services import variants as service

router = APIRouter(prefix="/v1/variants", tags=["variants"],
                   route_class=AccessRoute)

Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, le=2**31, description="items to skip")]


@router.post("", dependencies=[AdminAccess],
             status_code=status.HTTP_201_CREATED, response_model=VariantPublic,
             responses=problems(400, 409))
def create_variant(body: VariantCreate, session: SessionDep, response: Response,
                   request: Request) -> VariantPublic:
    """Create a variant. Omitted settings take the documented defaults; 409 if the name exists."""
    variant = service.create_variant(session, name=body.name, description=body.description,
                                     settings=body.settings.changes() if body.settings else None,
                                     layout=body.layout.to_layout() if body.layout else None,
                                     records=body.records.model_dump() if body.records else None)
    response.headers["Location"] = str(request.url_for("get_variant", name=variant.name))
    return VariantPublic.of(service.summarize(session, [variant])[0])


@router.get("", dependencies=[InspectorAccess],
            response_model=VariantPage, responses=problems())
def list_variants(session: SessionDep, limit: Limit = 100, offset: Offset = 0) -> VariantPage:
    """Variants by name, one page at a time."""
    rows, total = service.list_variants(session, limit=limit, offset=offset)
    return VariantPage(items=[VariantPublic.of(s) for s in service.summarize(session, rows)],
                       total=total, limit=limit, offset=offset)


@router.get("/{name}", dependencies=[InspectorAccess],
            response_model=VariantPublic, responses=problems(404))
def get_variant(variant: VariantDep, session: SessionDep) -> VariantPublic:
    """One variant with its effective settings, image counts and active model version."""
    return VariantPublic.of(service.summarize(session, [variant])[0])


@router.patch("/{name}", dependencies=[AdminAccess],
              response_model=VariantPublic, responses=problems(400, 404, 409))
def update_variant(variant: VariantDep, body: VariantUpdate, session: SessionDep) -> VariantPublic:
    """Change the description, settings (they apply to models trained afterwards), layout or
    record policy.

    A new layout (regions of interest, ignore masks) applies at once: the active model gets a
    new version with it, from the same memory bank and threshold, active when this answers
    (``active_model_version``); models trained afterwards use it too. 409, and nothing
    changed, when the active model cannot take it (trained before layouts existed, or with an
    ignore mask the new layout would uncover)."""
    layout = body.layout.to_layout() if body.layout is not None else None  # 422 before writing
    service.update_variant(session, variant=variant, description=body.description,
                           settings=body.settings.changes() if body.settings else None,
                           records=body.records.model_dump() if body.records else None,
                           commit=layout is None)
    if layout is not None:
        training.change_layout(session, variant=variant, layout=layout)
    return VariantPublic.of(service.summarize(session, [variant])[0])


@router.delete("/{name}", dependencies=[AdminAccess],
               status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
def delete_variant(variant: VariantDep, session: SessionDep, cache: ModelCacheDep) -> Response:
    """Delete the variant with all its images and models."""
    variant_id = variant.id
    service.delete_variant(session, variant=variant)
    cache.evict_variant(variant_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
