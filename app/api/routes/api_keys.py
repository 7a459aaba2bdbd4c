"""``/v1/api-keys``: create, list and revoke API keys (admin only)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.api.deps import SessionDep, SettingsDep
from app.api.routes._docs import problems
from app.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from app.api.security import AccessRoute, AdminAccess, PrincipalDep
from app.db.models import ApiKeyRole
from app.services import api_keys as service

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"], route_class=AccessRoute)

KeyId = Annotated[int, Path(ge=1, le=2**31 - 1, description="API key id", examples=[3])]


@router.post("", dependencies=[AdminAccess], status_code=status.HTTP_201_CREATED,
             response_model=ApiKeyCreated, responses=problems(400))
def create_key(body: ApiKeyCreate, session: SessionDep, caller: PrincipalDep) -> ApiKeyCreated:
    """Create a key. The response is the only time ``key`` is shown: only its hash is kept."""
    row, key = service.create_key(session, name=body.name, role=ApiKeyRole(body.role))
    log.info("API key %d (%r, %s) created by %r", row.id, row.name, row.role, caller.name)
    return ApiKeyCreated(**ApiKeyPublic.of(row).model_dump(), key=key)


@router.get("", dependencies=[AdminAccess], response_model=list[ApiKeyPublic],
            responses=problems())
def list_keys(session: SessionDep) -> list[ApiKeyPublic]:
    """Every stored key, oldest first, without secrets (NOMINAL_ADMIN_KEY is not listed)."""
    return [ApiKeyPublic.of(row) for row in service.list_keys(session)]


@router.delete("/{key_id}", dependencies=[AdminAccess], status_code=status.HTTP_204_NO_CONTENT,
               responses=problems(404, 409))
def revoke_key(key_id: KeyId, session: SessionDep, settings: SettingsDep,
               caller: PrincipalDep) -> Response:
    """Revoke a key: requests carrying it get 401 from the next request on, on every replica.
    409 for the last admin key while NOMINAL_ADMIN_KEY is not set."""
    service.revoke_key(session, key_id=key_id, bootstrap_configured=settings.admin_key is not None)
    log.info("API key %d revoked by %r", key_id, caller.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
