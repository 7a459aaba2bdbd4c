"""Every error becomes an RFC 9457 problem document here, and only here.

    {"type": "urn:nominal:problem:not-found", "title": "Not found", "status": 404,
     "detail": "variant 'bolt-m8' not found", "instance": "/v1/variants/bolt-m8"}

``STATUS_BY_ERROR`` maps each ``app.errors`` class to its status (a test checks that every class
is listed). Validation errors keep FastAPI's per-field list under ``errors``; unexpected
exceptions become a 500 problem without a stack trace (it goes to the log).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:nominal:problem:"

STATUS_BY_ERROR: dict[type[errors.NominalError], int] = {
    errors.NominalError: 400,
    errors.InvalidInputError: 422,
    errors.InvalidImageError: 422,
    errors.UnsupportedMediaError: 415,
    errors.LimitExceededError: 413,
    errors.ImageTooLargeError: 413,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.AlreadyExistsError: 409,
    errors.NoActiveModelError: 409,
    errors.NotEnoughImagesError: 409,
    errors.UnsupportedModelFormatError: 409,
    errors.AuthenticationError: 401,
    errors.PermissionDeniedError: 403,
    errors.TrainingCancelledError: 409,  # internal to jobs; mapped in case one ever escapes
    errors.ServiceUnavailableError: 503,
}


def status_for(exc: errors.NominalError) -> int:
    """The status of the nearest mapped class in ``exc``'s MRO."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return 400


def problem_type(cls: type[errors.NominalError]) -> str:
    """``NotEnoughImagesError`` -> ``urn:nominal:problem:not-enough-images``."""
    name = cls.__name__.removesuffix("Error") or "Nominal"
    return TYPE_PREFIX + re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def problem(status: int, detail: str, *, title: str | None = None, type_: str = "about:blank",
            instance: str | None = None, headers: dict[str, str] | None = None,
            **extensions: Any) -> JSONResponse:
    """A problem-details response; ``title`` defaults to the status phrase."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _nominal_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.NominalError)
    status = status_for(exc)
    headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if status == 401 else None
    return problem(status, exc.detail, title=exc.title, type_=problem_type(type(exc)),
                   instance=request.url.path, headers=headers)


def _location(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")),
         "type": str(error.get("type", ""))}
        for error in exc.errors()
    ]
    summary = "; ".join(f"{_location(item['loc'])}: {item['msg']}" for item in items[:5])
    if len(items) > 5:
        summary += f"; and {len(items) - 5} more"
    return problem(422, summary or "the request is invalid", title="Validation error",
                   type_=TYPE_PREFIX + "validation", instance=request.url.path, errors=items)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 413:  # a body limit (ours or Starlette's): same shape as LimitExceeded
        if detail in ("Content Too Large", "Request Entity Too Large"):
            detail = "the request body is larger than this service accepts"
        cls = errors.LimitExceededError
        return problem(413, detail, title=cls.title, type_=problem_type(cls),
                       instance=request.url.path, headers=headers)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}"
    return problem(exc.status_code, detail, instance=request.url.path, headers=headers)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem(503, "the database is unavailable or busy; retry shortly",
                   title=errors.ServiceUnavailableError.title,
                   type_=problem_type(errors.ServiceUnavailableError), instance=request.url.path,
                   headers={"Retry-After": "1"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette runs this handler outside every middleware, so the request id comes from the
    # scope's state (set by the observability middleware), not from the context variable.
    request_id: str | None = getattr(request.state, "request_id", None)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc,
                  extra={"request_id": request_id})
    if request_id is None:
        return problem(500, "an unexpected error occurred; it has been logged",
                       type_=TYPE_PREFIX + "internal", instance=request.url.path)
    return problem(500, f"an unexpected error occurred; it has been logged with request id "
                        f"{request_id}", type_=TYPE_PREFIX + "internal",
                   instance=request.url.path, headers={"X-Request-ID": request_id},
                   request_id=request_id)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.NominalError, _nominal_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeoutError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


def problem_example(status: int, detail: str, cls: type[errors.NominalError] | None = None,
                    instance: str = "/v1/variants/bolt-m8") -> dict[str, Any]:
    """An example problem document for the OpenAPI docs."""
    return {
        "type": problem_type(cls) if cls else "about:blank",
        "title": cls.title if cls else _phrase(status),
        "status": status,
        "detail": detail,
        "instance": instance,
    }
