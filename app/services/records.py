"""Inspection records: every verdict as answered, the images a variant's policy keeps, and what
operators say of them.

A record is written in the request that answers the verdict and committed before the answer
leaves (``store_records``), so a 200 means the record is stored (on SQLite, as far as the
write-ahead log survives: a crashed process, not a power cut; RELIABILITY.md). Images are
kept by the variant's ``RecordPolicy``: every anomalous one, a sampled share of the good ones,
within a byte budget and an age per variant, oldest removed first (at each kept image, when
the policy changes, and by the periodic ``sweep``). The heatmap is never stored: it is
rendered from a kept image when asked for.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    FeedbackLabel,
    InspectionRecord,
    RecordImage,
    Variant,
    utcnow,
)
from app.db.session import Database
from app.detector.verdict import Verdict, region_dict, region_of_interest_dict
from app.errors import ConflictError, InvalidInputError, NotFoundError

MiB = 1024 * 1024
RecordSelect = Select[InspectionRecord, str]
# Rows read per page when records are streamed out (export): bounded memory at any size.
EXPORT_PAGE = 500
# Images removed per statement by the retention policy.
RETENTION_BATCH = 200


class RecordPolicy(BaseModel):
    """What a variant keeps of its inspections. Omitted fields take these defaults."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"enabled": True, "keep_good_fraction": 0.01, "max_image_bytes": 512 * MiB,
         "max_image_age_days": 30}]})

    enabled: bool = Field(default=True, description="store a record of every inspection")
    keep_anomalous_images: bool = Field(default=True,
                                        description="keep the image of every anomalous verdict")
    keep_good_fraction: float = Field(default=0.01, ge=0, le=1,
                                      description="share of good verdicts whose image is kept")
    max_image_bytes: int = Field(default=512 * MiB, ge=0, le=2**44,
                                 description="kept images per variant at most, oldest removed "
                                             "first")
    max_image_age_days: float = Field(default=30, gt=0, le=36500,
                                      description="kept images older than this are removed")

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> RecordPolicy:
        return cls.model_validate(stored or {})


@dataclass(frozen=True)
class CallerContext:
    """What the caller said of the part (inspect's query parameters) and the request id."""

    part_id: str | None = None
    station: str | None = None
    lot: str | None = None
    tags: tuple[str, ...] = ()
    request_id: str | None = None


@dataclass(frozen=True)
class Inspected:
    """One verdict to record, with the bytes that were sent."""

    verdict: Verdict
    model_version: int
    latency_ms: float
    width: int
    height: int
    data: bytes
    format: str


def _keeps(policy: RecordPolicy, verdict: Verdict, draw: float) -> bool:
    if verdict.is_anomalous:
        return policy.keep_anomalous_images
    return draw < policy.keep_good_fraction


def store_records(session: Session, *, variant_id: int, policy: RecordPolicy,
                  inspected: Sequence[Inspected], context: CallerContext,
                  rng: random.Random | None = None) -> list[int]:
    """Record ``inspected`` (one request's verdicts) and the images the policy keeps, then
    apply the policy's budget; committed when this returns. The ids, in order."""
    if not policy.enabled or not inspected:
        return []
    rng = rng or random.Random()
    now = utcnow()
    rows = []
    for item in inspected:
        v = item.verdict
        rows.append(InspectionRecord(
            variant_id=variant_id, model_version=item.model_version, created_at=now,
            score=v.score, normalized_score=v.normalized_score, threshold=v.threshold,
            is_anomalous=v.is_anomalous,
            regions=[region_dict(r, v.threshold) for r in v.regions],
            regions_of_interest=[region_of_interest_dict(r) for r in v.regions_of_interest],
            latency_ms=item.latency_ms, request_id=context.request_id, width=item.width,
            height=item.height, part_id=context.part_id, station=context.station,
            lot=context.lot, tags=list(context.tags),
            image_kept=_keeps(policy, v, rng.random())))
    session.add_all(rows)
    session.flush()
    ids = [row.id for row in rows]
    kept = [(row, item) for row, item in zip(rows, inspected, strict=True) if row.image_kept]
    if kept:
        session.add_all([RecordImage(record_id=row.id, variant_id=variant_id,
                                     format=item.format, size_bytes=len(item.data),
                                     created_at=now, data=item.data) for row, item in kept])
        _add_bytes(session, variant_id, sum(len(item.data) for _, item in kept))
        enforce_retention(session, variant_id=variant_id, policy=policy)
    session.commit()
    return ids


def _drop_images(session: Session, variant_id: int, images: Sequence[tuple[int, int]]) -> None:
    """Remove kept images ``(record id, bytes)``; their records stay, without image."""
    if not images:
        return
    record_ids = [record_id for record_id, _ in images]
    session.execute(delete(RecordImage).where(RecordImage.record_id.in_(record_ids)))
    session.execute(update(InspectionRecord).where(InspectionRecord.id.in_(record_ids))
                    .values(image_kept=False))
    _add_bytes(session, variant_id, -sum(size for _, size in images))


def _add_bytes(session: Session, variant_id: int, change: int) -> None:
    """Move the variant's running total of kept image bytes (not its ``updated_at``: that
    dates configuration changes, not inspections)."""
    session.execute(update(Variant).where(Variant.id == variant_id).values(
        record_image_bytes=Variant.record_image_bytes + change, updated_at=Variant.updated_at))


def enforce_retention(session: Session, *, variant_id: int, policy: RecordPolicy) -> int:
    """Remove the variant's kept images past the policy's age, then the oldest until the rest
    fit its byte budget (the records stay, without image), a bounded batch at a time. Returns
    how many were removed."""
    cutoff = utcnow() - timedelta(days=policy.max_image_age_days)
    images = select(RecordImage.record_id, RecordImage.size_bytes).where(
        RecordImage.variant_id == variant_id)
    removed = 0
    while old := session.execute(images.where(RecordImage.created_at < cutoff)
                                 .limit(RETENTION_BATCH)).all():
        _drop_images(session, variant_id, [(r, n) for r, n in old])
        removed += len(old)
    total = session.scalar(select(Variant.record_image_bytes).where(Variant.id == variant_id))
    if total is not None and total > policy.max_image_bytes:
        # Over the budget (rare: the running total keeps the common case free of sums), the
        # stored bytes themselves decide, so a total that drifted (a manual cleanup, a
        # restore) is put right before anything is removed for it.
        real = int(session.scalar(select(func.coalesce(func.sum(RecordImage.size_bytes), 0))
                                  .where(RecordImage.variant_id == variant_id)) or 0)
        _add_bytes(session, variant_id, real - total)
        total = real
    while total is not None and total > policy.max_image_bytes:
        oldest = session.execute(images.order_by(RecordImage.created_at, RecordImage.record_id)
                                 .limit(RETENTION_BATCH)).all()
        if not oldest:
            break
        drop = []
        for record_id, size in oldest:
            if total <= policy.max_image_bytes:
                break
            drop.append((record_id, size))
            total -= size
        _drop_images(session, variant_id, drop)
        removed += len(drop)
    return removed


def sweep(database: Database) -> int:
    """Apply every variant's retention policy (images past their age, or over a budget that
    was lowered, go even where no new image is kept). Returns how many images went."""
    with database.reading() as session:
        variants = session.execute(select(Variant.id, Variant.records)).all()
    removed = 0
    for variant_id, stored in variants:
        with database.writing() as session:
            removed += enforce_retention(session, variant_id=variant_id,
                                         policy=RecordPolicy.of(stored))
    return removed


# ---------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class RecordFilter:
    """The filters of ``GET /v1/records``; None: any."""

    variant_id: int | None = None
    is_anomalous: bool | None = None
    since: datetime | None = None
    until: datetime | None = None
    model_version: int | None = None
    part_id: str | None = None
    station: str | None = None
    feedback: str | None = None  # a FeedbackLabel, "none" (no feedback yet) or "any"

    def __post_init__(self) -> None:
        allowed = {*(label.value for label in FeedbackLabel), "none", "any"}
        if self.feedback is not None and self.feedback not in allowed:
            raise InvalidInputError(f"feedback must be one of {sorted(allowed)}, got "
                                    f"{self.feedback!r}")
        for moment in (self.since, self.until):
            if moment is not None and (moment.tzinfo is None or not 1 < moment.year < 9999):
                raise InvalidInputError("since and until need a time zone and a year within "
                                        "2..9998, for example 2026-12-01T08:00:00Z")

    def apply(self, statement: RecordSelect) -> RecordSelect:
        """``statement`` narrowed to the records these filters let through."""
        r = InspectionRecord
        conditions = []
        if self.variant_id is not None:
            conditions.append(r.variant_id == self.variant_id)
        if self.is_anomalous is not None:
            conditions.append(r.is_anomalous == self.is_anomalous)
        if self.since is not None:
            conditions.append(r.created_at >= self.since)
        if self.until is not None:
            conditions.append(r.created_at < self.until)
        if self.model_version is not None:
            conditions.append(r.model_version == self.model_version)
        if self.part_id is not None:
            conditions.append(r.part_id == self.part_id)
        if self.station is not None:
            conditions.append(r.station == self.station)
        if self.feedback == "none":
            conditions.append(r.feedback.is_(None))
        elif self.feedback == "any":
            conditions.append(r.feedback.is_not(None))
        elif self.feedback is not None:
            conditions.append(r.feedback == self.feedback)
        return statement.where(*conditions)


def _page_query(filters: RecordFilter, before: int | None, limit: int) -> RecordSelect:
    statement = select(InspectionRecord, Variant.name).join(
        Variant, Variant.id == InspectionRecord.variant_id)
    statement = filters.apply(statement)
    if before is not None:
        statement = statement.where(InspectionRecord.id < before)
    return statement.order_by(InspectionRecord.id.desc()).limit(limit)


def list_records(session: Session, *, filters: RecordFilter, cursor: str | None,
                 limit: int) -> tuple[list[tuple[InspectionRecord, str]], str | None]:
    """A page of records newest first, with their variant's name, and the cursor of the next
    page (None: this is the last)."""
    before = parse_cursor(cursor)
    rows = [(record, name) for record, name in
            session.execute(_page_query(filters, before, limit + 1)).all()]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (str(rows[-1][0].id) if more and rows else None)


def parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not re.fullmatch(r"[0-9]{1,19}", cursor) or int(cursor) > 2**63 - 1:
        raise InvalidInputError("cursor must be the next_cursor of a previous page")
    return int(cursor)


def iter_records(database: Database, *, filters: RecordFilter
                 ) -> Iterator[tuple[InspectionRecord, str]]:
    """Every record matching ``filters``, newest first, read a page at a time in short
    transactions (bounded memory; records written meanwhile after the first page are not
    included, as they are newer)."""
    before: int | None = None
    while True:
        with database.reading() as session:
            rows = session.execute(_page_query(filters, before, EXPORT_PAGE)).all()
            session.expunge_all()
        if not rows:
            return
        yield from ((record, name) for record, name in rows)
        before = rows[-1][0].id
        if len(rows) < EXPORT_PAGE:
            return


def get_record(session: Session, *, record_id: int) -> tuple[InspectionRecord, str]:
    row = session.execute(select(InspectionRecord, Variant.name)
                          .join(Variant, Variant.id == InspectionRecord.variant_id)
                          .where(InspectionRecord.id == record_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"inspection record {record_id} not found")
    return row[0], row[1]


def get_record_image(session: Session, *, record: InspectionRecord) -> RecordImage:
    """The kept image of ``record``, or ``ConflictError`` (409) when it was not kept or has
    been removed by the retention policy."""
    image = session.scalar(select(RecordImage).where(RecordImage.record_id == record.id)
                           .execution_options(populate_existing=True))
    if image is None:
        raise ConflictError(f"inspection record {record.id} has no image: the variant's "
                            "retention policy did not keep it, or has removed it since")
    return image


def give_feedback(session: Session, *, record: InspectionRecord, label: FeedbackLabel,
                  note: str | None, by: str) -> InspectionRecord:
    """What an operator says of a verdict (a later call replaces it)."""
    record.feedback = label.value
    record.feedback_note = note
    record.feedback_by = by[:63]
    record.feedback_at = utcnow()
    session.commit()
    return record
