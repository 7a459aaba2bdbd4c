"""Who may call what: every /v1 route declares one access decision, enforced before its body
is read.

A route states its decision as a dependency, ``dependencies=[InspectorAccess]``,
``[OperatorAccess]`` or ``[AdminAccess]``; its router uses ``route_class=AccessRoute``. The
route class checks the key (401) and the role (403) *before* FastAPI parses the request: an
anonymous caller cannot make the service spool a multipart upload or learn from a 422 or a
404 what exists. The dependency then hands the ``Principal`` to the handler and documents the
key in OpenAPI.

``create_app`` refuses to build an app with a /v1 route that has no decision
(``check_access_decisions``), and a table-driven test pins each route's decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any

import anyio
from fastapi import Request, Response, Security
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.security import APIKeyHeader
from starlette.datastructures import Headers
from starlette.routing import BaseRoute

from app.db.models import ApiKeyRole
from app.db.session import Database
from app.errors import AuthenticationError, PermissionDeniedError
from app.services import api_keys
from app.services.api_keys import Principal
from app.settings import Settings

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False,
    description="an API key (admin, operator or inspector); `Authorization: Bearer <key>` "
                "works too")


def key_from(headers: Headers) -> str | None:
    """The key sent in ``X-API-Key`` or, for scrapers that only do bearer tokens,
    ``Authorization: Bearer``."""
    key = headers.get(API_KEY_HEADER)
    if key:
        return key.strip()
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def _lookup(database: Database, key: str, bootstrap: str | None) -> Principal:
    with database.reading() as session:
        return api_keys.authenticate(session, key=key, bootstrap_key=bootstrap)


async def authorize(request: Request, role: ApiKeyRole) -> Principal:
    """The caller of ``request`` if it may act as ``role``; ``AuthenticationError`` (401) or
    ``PermissionDeniedError`` (403) otherwise."""
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled:
        return api_keys.AUTH_DISABLED
    key = key_from(request.headers)
    if not key:
        raise AuthenticationError(api_keys.MISSING)
    bootstrap = settings.admin_key.get_secret_value() if settings.admin_key else None
    if api_keys.matches_bootstrap(key, bootstrap):
        principal = api_keys.BOOTSTRAP  # no database round trip for the bootstrap key
    else:
        database: Database = request.app.state.database
        principal = await anyio.to_thread.run_sync(_lookup, database, key, bootstrap)
    if not principal.may(role):
        log.info("forbidden: key %r (%s) on %s %s", principal.name, principal.role.value,
                 request.method, request.url.path)
        raise PermissionDeniedError(
            f"this operation needs the {role.value} role; the key {principal.name!r} has the "
            f"{principal.role.value} role")
    return principal


def _principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # a decision without AccessRoute: refuse rather than fail open
        raise RuntimeError(f"{request.url.path}: the route's router needs "
                           "route_class=AccessRoute to enforce its access decision")
    return principal


def _inspector_access(request: Request,
                      _key: Annotated[str | None, Security(_api_key_header)] = None) -> Principal:
    return _principal(request)


def _operator_access(request: Request,
                     _key: Annotated[str | None, Security(_api_key_header)] = None) -> Principal:
    return _principal(request)


def _admin_access(request: Request,
                  _key: Annotated[str | None, Security(_api_key_header)] = None) -> Principal:
    return _principal(request)


InspectorAccess = Security(_inspector_access)
"""Read and inspect: every key."""
OperatorAccess = Security(_operator_access)
"""Inspection records, their images and feedback: operator and admin keys."""
AdminAccess = Security(_admin_access)
"""Change state or manage keys: admin keys only."""

_ROLE_OF: dict[Callable[..., Any], ApiKeyRole] = {
    _inspector_access: ApiKeyRole.inspector,
    _operator_access: ApiKeyRole.operator,
    _admin_access: ApiKeyRole.admin,
}

PrincipalDep = Annotated[Principal, Security(_inspector_access)]
"""The caller, for handlers that record who did something (any role)."""


def access_of(dependencies: Iterable[DependsParam]) -> ApiKeyRole | None:
    """The role a route's ``dependencies`` require (None: public)."""
    roles = {_ROLE_OF[d.dependency] for d in dependencies if d.dependency in _ROLE_OF}
    if len(roles) > 1:
        raise ValueError(f"conflicting access decisions {sorted(roles)}")
    return roles.pop() if roles else None


class AccessRoute(APIRoute):
    """An ``APIRoute`` that authenticates and authorises before anything else of the request
    is read, by the decision among its own ``dependencies``. The decision is published in
    OpenAPI as ``x-required-role``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        role = access_of(kwargs.get("dependencies") or [])
        if role is not None:
            kwargs["openapi_extra"] = {**(kwargs.get("openapi_extra") or {}),
                                       "x-required-role": role.value}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        role = access_of(self.dependencies)
        if role is None:
            return handler

        async def guarded(request: Request) -> Response:
            request.state.principal = await authorize(request, role)
            return await handler(request)

        return guarded


def route_contexts(routes: list[BaseRoute]) -> list[RouteContext]:
    return list(iter_route_contexts(routes))


def check_access_decisions(routes: list[BaseRoute], prefix: str = "/v1/") -> None:
    """Fail fast when a route under ``prefix`` has no enforced access decision."""
    missing = []
    for context in route_contexts(routes):
        path = context.path or ""
        if not path.startswith(prefix):
            continue
        route = context.original_route
        if not isinstance(route, AccessRoute) or access_of(route.dependencies) is None:
            missing.append(f"{sorted(context.methods or [])} {path}")
    if missing:
        raise RuntimeError(f"routes without an access decision (InspectorAccess, OperatorAccess "
                           f"or AdminAccess on an AccessRoute): {missing}")
