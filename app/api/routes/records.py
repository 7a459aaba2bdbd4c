"""``/v1/records``: every verdict the service answered, its kept image, and what operators say
of it. Operators and admins only: the cameras on the line (inspector keys) write records by
inspecting, they do not read them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app.api.deps import DatabaseDep, ModelCacheDep, SessionDep, SettingsDep
from app.api.routes._docs import problems
from app.api.routes.images import MEDIA_TYPES
from app.api.schemas import (
    FeedbackCreate,
    ImagePublic,
    ImageUploaded,
    PromoteCreate,
    RecordPage,
    RecordPublic,
)
from app.api.security import AccessRoute, OperatorAccess, PrincipalDep
from app.services import images as image_service
from app.services import records as service
from app.services import variants as variant_service
from app.services.inspection import record_heatmap

router = APIRouter(prefix="/v1/records", tags=["records"], route_class=AccessRoute)

RecordId = Annotated[int, Path(ge=1, le=2**63 - 1, description="record id", examples=[8812])]


def record_filter(
    database: DatabaseDep,
    variant: Annotated[str | None, Query(max_length=63, description="variant name")] = None,
    verdict: Annotated[Literal["anomalous", "good"] | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="from this time on (ISO 8601 with "
                                                        "a time zone)")] = None,
    until: Annotated[datetime | None, Query(description="before this time")] = None,
    model_version: Annotated[int | None, Query(ge=1, le=2**31)] = None,
    part_id: Annotated[str | None, Query(max_length=128)] = None,
    station: Annotated[str | None, Query(max_length=64)] = None,
    feedback: Annotated[Literal["good", "defect", "missed", "none", "any"] | None, Query(
        description="good, defect or missed; none: no feedback yet; any: some")] = None,
) -> service.RecordFilter:
    """The record filters of the query string (404 for a variant that does not exist). Its
    own short read: an export streams long after, and must not hold the request's session."""
    variant_id = None
    if variant:
        with database.reading() as session:
            variant_id = variant_service.get_variant(session, name=variant).id
    return service.RecordFilter(
        variant_id=variant_id, is_anomalous=None if verdict is None else verdict == "anomalous",
        since=since, until=until, model_version=model_version, part_id=part_id,
        station=station, feedback=feedback)


Filters = Annotated[service.RecordFilter, Depends(record_filter)]


@router.get("", dependencies=[OperatorAccess], response_model=RecordPage,
            responses=problems(404))
def list_records(
    session: SessionDep,
    filters: Filters,
    cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the "
                                                                   "previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> RecordPage:
    """Records newest first, filtered, a page at a time (cursor pagination: stable while new
    records arrive)."""
    rows, next_cursor = service.list_records(session, filters=filters, cursor=cursor,
                                             limit=limit)
    return RecordPage(items=[RecordPublic.of(r, name) for r, name in rows],
                      next_cursor=next_cursor)


CSV_COLUMNS = ("id", "created_at", "variant", "model_version", "score", "normalized_score",
               "threshold", "is_anomalous", "regions", "regions_of_interest", "latency_ms",
               "request_id", "width", "height", "part_id", "station", "lot", "tags",
               "image_kept", "feedback", "feedback_note", "feedback_by", "feedback_at")


# Spreadsheets run a cell that starts with one of these as a formula: the caller's text (part
# id, station, lot, note) gets a leading apostrophe (OWASP, "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_LISTS = ("regions", "regions_of_interest", "tags")  # as JSON in one cell


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _chunks(lines: Iterator[str]) -> Iterator[str]:
    """``lines`` joined a page at a time: one write per page, not one per record."""
    page: list[str] = []
    for line in lines:
        page.append(line)
        if len(page) >= service.EXPORT_PAGE:
            yield "".join(page)
            page = []
    if page:
        yield "".join(page)


def _csv_lines(rows: Iterator[RecordPublic]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values: list[object]) -> str:
        writer.writerow(values)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(list(CSV_COLUMNS))
    for record in rows:
        data = record.model_dump(mode="json")
        yield line([json.dumps(data[c]) if c in _LISTS else _cell(data[c])
                    for c in CSV_COLUMNS])


@router.get("/export", dependencies=[OperatorAccess], responses={
    200: {"content": {"text/csv": {}, "application/x-ndjson": {}},
          "description": "every matching record, newest first, streamed"}, **problems(404)})
def export_records(
    database: DatabaseDep,
    filters: Filters,
    format: Annotated[Literal["csv", "jsonl"], Query(description="csv, or JSON Lines")] = "csv",
) -> StreamingResponse:
    """Every record matching the filters, streamed as CSV or JSON Lines (read a page at a
    time: memory stays bounded whatever the count)."""
    rows = (RecordPublic.of(record, name)
            for record, name in service.iter_records(database, filters=filters))
    if format == "jsonl":
        lines = (record.model_dump_json() + "\n" for record in rows)
        return StreamingResponse(_chunks(lines), media_type="application/x-ndjson", headers={
            "Content-Disposition": 'attachment; filename="records.jsonl"'})
    return StreamingResponse(_chunks(_csv_lines(rows)), media_type="text/csv", headers={
        "Content-Disposition": 'attachment; filename="records.csv"'})


@router.get("/{record_id}", dependencies=[OperatorAccess], response_model=RecordPublic,
            responses=problems(404))
def get_record(record_id: RecordId, session: SessionDep) -> RecordPublic:
    """One record; ``image_kept`` says whether its image and heatmap can be read."""
    record, variant = service.get_record(session, record_id=record_id)
    return RecordPublic.of(record, variant)


@router.get("/{record_id}/image", dependencies=[OperatorAccess], responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/bmp": {}, "image/tiff": {}},
          "description": "the inspected image, exactly as sent"}, **problems(404, 409)})
def get_record_image(record_id: RecordId, session: SessionDep) -> Response:
    """The inspected image, when the variant's policy kept it (409 otherwise)."""
    record, _ = service.get_record(session, record_id=record_id)
    image = service.get_record_image(session, record=record)
    return Response(bytes(image.data),
                    media_type=MEDIA_TYPES.get(image.format, "application/octet-stream"))


@router.get("/{record_id}/heatmap", dependencies=[OperatorAccess], responses={
    200: {"content": {"image/png": {}}, "description": "the heatmap overlay, rendered now"},
    **problems(404, 409)})
async def get_record_heatmap(record_id: RecordId, request: Request, database: DatabaseDep,
                             cache: ModelCacheDep, settings: SettingsDep) -> Response:
    """The heatmap of a kept image by the model version that judged it, rendered on demand
    on the inference pool (409 when the image was not kept or that version is deleted)."""
    png = await anyio.to_thread.run_sync(
        partial(record_heatmap, database, cache, record_id=record_id,
                max_pixels=settings.max_image_pixels, max_regions=settings.max_defect_regions),
        limiter=request.app.state.inference_limiter)
    return Response(png, media_type="image/png")


@router.post("/{record_id}/feedback", dependencies=[OperatorAccess],
             response_model=RecordPublic, responses=problems(404))
def give_feedback(record_id: RecordId, body: FeedbackCreate, session: SessionDep,
                  caller: PrincipalDep) -> RecordPublic:
    """Say what the verdict was worth: ``good`` (a false reject), ``defect`` (confirmed) or
    ``missed`` (a defect the model passed). A later call replaces it."""
    record, variant = service.get_record(session, record_id=record_id)
    service.give_feedback(session, record=record, label=body.label, note=body.note,
                          by=caller.name)
    return RecordPublic.of(record, variant)


@router.post("/{record_id}/promote", dependencies=[OperatorAccess],
             status_code=status.HTTP_201_CREATED, response_model=ImageUploaded,
             responses=problems(404, 409, 413))
def promote(record_id: RecordId, body: PromoteCreate, session: SessionDep,
            settings: SettingsDep) -> ImageUploaded:
    """Add the record's kept image to its variant's images as ``good`` or ``defect`` (the next
    training uses it; training itself stays with admins). The same image twice is stored
    once (``created: false``)."""
    record, variant_name = service.get_record(session, record_id=record_id)
    image = service.get_record_image(session, record=record)
    upload = image_service.Upload(filename=f"record-{record.id}", data=bytes(image.data))
    (checked,) = image_service.check_uploads([upload], max_pixels=settings.max_image_pixels)
    variant = variant_service.get_variant(session, name=variant_name)
    (stored,) = image_service.add_images(session, variant=variant, uploads=[checked],
                                         label=body.label,
                                         max_images=settings.max_images_per_variant)
    return ImageUploaded(**ImagePublic.of(stored.image).model_dump(), created=stored.created)
