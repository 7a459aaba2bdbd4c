"""Shared OpenAPI fragments: problem responses with examples for each status a route can give."""

from __future__ import annotations

from typing import Any

from app import errors
from app.api.errors import PROBLEM_MEDIA_TYPE, problem_example
from app.api.schemas import ProblemPublic

_EXAMPLES: dict[int, tuple[str, type[errors.NominalError] | None]] = {
    400: ("There was an error parsing the body", None),  # malformed JSON or multipart
    401: ("missing API key: send it in the X-API-Key header", errors.AuthenticationError),
    403: ("this operation needs the admin role; the key 'line-3' has the inspector role",
          errors.PermissionDeniedError),
    404: ("variant 'bolt-m8' not found", errors.NotFoundError),
    409: ("variant 'bolt-m8' has no active model yet", errors.NoActiveModelError),
    413: ("files[0] ('big.png'): image is 20000x20000 = 400000000 px; the limit is 40000000 px",
          errors.ImageTooLargeError),
    415: ("content type 'text/plain' is not an image; send image/png, image/jpeg, image/bmp or "
          "image/tiff, or multipart/form-data", errors.UnsupportedMediaError),
    422: ("files[0] ('scan.png'): corrupt or truncated PNG: image file is truncated",
          errors.InvalidImageError),
    503: ("the database is unavailable or busy; retry shortly", errors.ServiceUnavailableError),
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting ``statuses`` (401, 403 and 422 are always possible)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({401, 403, 422, *statuses}):
        detail, cls = _EXAMPLES[status]
        out[status] = {
            "model": ProblemPublic,
            "description": cls.title if cls else "Problem",
            "content": {PROBLEM_MEDIA_TYPE: {"example": problem_example(status, detail, cls)}},
        }
    return out
