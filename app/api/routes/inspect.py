"""``/v1/variants/{name}/inspect``: score images with the variant's active model.

The image comes as multipart field ``file`` or as the raw body (``image/png``, ``image/jpeg``,
``image/bmp``, ``image/tiff``). Bodies are read with a byte count (413 past the limit, before
the whole body is in memory); decoding and scoring run on the inference thread pool, never on
the event loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from app.api.deps import DatabaseDep, MetricsDep, ModelCacheDep, SettingsDep, VariantName
from app.api.middleware import ImageBody
from app.api.routes._docs import problems
from app.api.schemas import BatchInspectionPublic, InspectionPublic
from app.api.security import AccessRoute, InspectorAccess
from app.errors import InvalidInputError, LimitExceededError, UnsupportedMediaError
from app.services.inspection import Inspection, inspect_images, record_inspections
from app.services.records import CallerContext
from app.settings import Settings

router = APIRouter(prefix="/v1/variants/{name}/inspect", tags=["inspect"],
                   route_class=AccessRoute)

RAW_MEDIA_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/x-ms-bmp",
                   "application/octet-stream")

_BINARY = {"type": "string", "format": "binary"}
_SINGLE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image as multipart field `file`, or as the raw body",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": _BINARY}}},
            **{t: {"schema": _BINARY} for t in ("image/png", "image/jpeg", "image/bmp",
                                                 "image/tiff")},
        },
    }
}
_BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": _BINARY}}}}},
    }
}
_HEATMAP_RESPONSE = {
    "content": {
        "image/png": {"schema": _BINARY},
    },
    "headers": {
        "X-Anomaly-Score": {"schema": {"type": "number"}, "description": "raw score"},
        "X-Normalized-Score": {"schema": {"type": "number"}},
        "X-Threshold": {"schema": {"type": "number"}},
        "X-Is-Anomalous": {"schema": {"type": "string", "enum": ["true", "false"]}},
        "X-Defect-Regions": {"schema": {"type": "integer"},
                             "description": "defect regions outlined on the PNG"},
        "X-Record-Id": {"schema": {"type": "integer"},
                        "description": "the stored record of the verdict (absent where the "
                                       "variant records nothing)"},
        "X-Model-Version": {"schema": {"type": "integer"}},
    },
}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_file(file: Any, field: str, index: int | None, limit: int) -> tuple[bytes, str]:
    where = field if index is None else f"{field}[{index}]"
    if not isinstance(file, UploadFile):
        raise InvalidInputError(f"multipart field {where!r} must be a file, not a text value")
    label = f"{where} ({file.filename!r})" if file.filename else where
    if file.size is not None and file.size > limit:
        raise LimitExceededError(f"{label} is {file.size} bytes; the limit is {limit} bytes "
                                 "(NOMINAL_MAX_UPLOAD_BYTES)")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise LimitExceededError(f"{label} exceeds {limit} bytes (NOMINAL_MAX_UPLOAD_BYTES)")
    return data, label


async def _read_raw(request: Request, limit: int) -> bytes:
    """The raw body, counted while it streams in (Content-Length may be absent or wrong)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise LimitExceededError(f"the image is {declared} bytes; the limit is {limit} bytes "
                                 "(NOMINAL_MAX_UPLOAD_BYTES)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitExceededError(f"the image exceeds {limit} bytes (NOMINAL_MAX_UPLOAD_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _single_image(request: Request, settings: Settings) -> bytes:
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            if "file" not in form:
                raise InvalidInputError("multipart body has no 'file' field")
            data, _ = await _read_file(form["file"], "file", None, settings.max_upload_bytes)
            return data
    if media_type in RAW_MEDIA_TYPES:
        return await _read_raw(request, settings.max_upload_bytes)
    shown = media_type or "none"
    raise UnsupportedMediaError(
        f"content type {shown!r} is not accepted; send image/png, image/jpeg, image/bmp or "
        "image/tiff as the body, or multipart/form-data with a 'file' field"
    )


def _wants_heatmap(request: Request, heatmap: str | None) -> bool:
    if heatmap is not None:
        return heatmap == "png"
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept


# What the caller may say of the part: stored with the verdict's record. Printable text only.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
MAX_TAGS = 16


@dataclass(frozen=True)
class CallerQuery:
    """The query parameters of inspect that describe the part (stored in its record)."""

    part_id: Annotated[str | None, Query(max_length=128, pattern=_PRINTABLE,
                                         description="the part's serial or id")] = None
    station: Annotated[str | None, Query(max_length=64, pattern=_PRINTABLE,
                                         description="where it was inspected")] = None
    lot: Annotated[str | None, Query(max_length=64, pattern=_PRINTABLE)] = None
    tag: Annotated[list[str] | None, Query(
        max_length=MAX_TAGS, description=f"repeat for several, at most {MAX_TAGS}, each at most "
                                         "64 printable characters")] = None

    def context(self, request: Request) -> CallerContext:
        tags = tuple(self.tag or ())
        bad = [t for t in tags if not t or len(t) > 64 or not re.fullmatch(_PRINTABLE, t)]
        if bad:
            raise InvalidInputError(f"tag values must be 1 to 64 printable characters, got "
                                    f"{bad[:3]!r}")
        return CallerContext(part_id=self.part_id, station=self.station, lot=self.lot,
                             tags=tags, request_id=getattr(request.state, "request_id", None))


Caller = Annotated[CallerQuery, Depends()]


async def _run(request: Request, context: CallerContext, **kwargs: Any) -> list[Inspection]:
    """``inspect_images`` on the inference pool (a bounded set of threads), then its records
    committed on the default pool, so that the inference threads score the next images
    meanwhile; answered only once the records are stored."""
    limiter = request.app.state.inference_limiter
    run = await anyio.to_thread.run_sync(partial(inspect_images, **kwargs), limiter=limiter)
    return await anyio.to_thread.run_sync(record_inspections, kwargs["database"], run, context)


@router.post("", dependencies=[InspectorAccess, ImageBody],
             response_model=InspectionPublic, openapi_extra=_SINGLE_BODY,
             responses={200: {"description": "the verdict (JSON), or the heatmap overlay PNG "
                                             "with `?heatmap=png` / `Accept: image/png`",
                              **_HEATMAP_RESPONSE},
                        **problems(404, 409, 413, 415, 400)})
async def inspect(
    name: VariantName,
    request: Request,
    database: DatabaseDep,
    cache: ModelCacheDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    caller: Caller,
    heatmap: Annotated[str | None, Query(pattern="^(png|none)$",
                                         description="png: answer the heatmap overlay PNG")] = None,
) -> InspectionPublic | Response:
    """Score one image with the variant's active model. 409 until a model is active. The
    verdict is recorded (``record_id``) before it is answered, unless the variant's record
    policy is off."""
    context = caller.context(request)
    data = await _single_image(request, settings)
    with_map = _wants_heatmap(request, heatmap)
    (result,) = await _run(request, database=database, cache=cache, metrics=metrics, name=name,
                           images=[data], max_pixels=settings.max_image_pixels, heatmap=with_map,
                           labels=["image"], max_regions=settings.max_defect_regions,
                           context=context)
    if with_map:
        v = result.verdict
        assert result.heatmap_png is not None
        return Response(result.heatmap_png, media_type="image/png", headers={
            "X-Anomaly-Score": repr(v.score),
            "X-Normalized-Score": repr(v.normalized_score),
            "X-Threshold": repr(v.threshold),
            "X-Is-Anomalous": "true" if v.is_anomalous else "false",
            "X-Defect-Regions": str(len(v.regions)),
            **({"X-Record-Id": str(result.record_id)} if result.record_id is not None else {}),
            "X-Model-Version": str(result.model_version),
            "X-Variant": result.variant,
            "X-Latency-Ms": repr(result.latency_ms),
        })
    return InspectionPublic.of(result)


@router.post("/batch", dependencies=[InspectorAccess, ImageBody],
             response_model=list[BatchInspectionPublic], openapi_extra=_BATCH_BODY,
             responses=problems(404, 409, 413, 415, 400))
async def inspect_batch(
    name: VariantName,
    request: Request,
    database: DatabaseDep,
    cache: ModelCacheDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    caller: Caller,
) -> list[BatchInspectionPublic]:
    """Score several images (multipart ``files`` fields) with one model version; verdicts come
    back in the order of the files. One undecodable file fails the whole request (422). The
    query parameters describing the part apply to every file."""
    context = caller.context(request)
    if _media_type(request) != "multipart/form-data":
        raise UnsupportedMediaError("send the images as multipart/form-data 'files' fields")
    limit = settings.max_batch_files
    try:
        form = await request.form(max_files=limit, max_fields=8)
    except HTTPException as exc:  # Starlette answers 400 for too many parts: it is a limit
        if exc.status_code == 400 and "Too many files" in str(exc.detail):
            raise LimitExceededError(f"more than {limit} files sent; at most {limit} per batch "
                                     "(NOMINAL_MAX_BATCH_FILES)") from None
        raise
    try:
        files = form.getlist("files")
        if not files:
            raise InvalidInputError("multipart body has no 'files' field")
        read = [await _read_file(f, "files", i, settings.max_upload_bytes)
                for i, f in enumerate(files)]
        filenames = [f.filename if isinstance(f, UploadFile) else None for f in files]
    finally:
        await form.close()  # spooled temporary files
    results = await _run(request, database=database, cache=cache, metrics=metrics, name=name,
                         images=[d for d, _ in read], max_pixels=settings.max_image_pixels,
                         labels=[label for _, label in read],
                         max_regions=settings.max_defect_regions, context=context)
    return [BatchInspectionPublic(**InspectionPublic.of(r).model_dump(), index=i,
                                  filename=filenames[i])
            for i, r in enumerate(results)]
