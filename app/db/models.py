"""Tables. Everything a replica needs lives here, blobs included, so that any replica can serve
any variant and a database backup is a backup of everything.

    variant ─┬─< image                  uploaded bytes, one row per distinct sha256 per variant
             ├─< model ──1 model_artifact   training job + result; the ONNX blob apart
             └── active_model_id ─> model   the version inspect uses (NULL until one is ready)
             └─< inspection_record ──1 record_image   every verdict; the image when kept
    api_key                         callers: a role and the sha256 of a random key, never the key

Blobs (``image.data``, ``model_artifact.onnx``, ``record_image.data``) are deferred or in
their own table, so listing rows never reads megabytes.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column
from sqlalchemy.types import TypeDecorator

# Explicit constraint names: Alembic can then drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores naive strings)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store UTC-aware timestamps only")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store them naive, all in UTC, so that they sort.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ImageLabel(enum.StrEnum):
    good = "good"
    defect = "defect"


class ModelStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    ready = "ready"
    failed = "failed"
    cancelled = "cancelled"


class Variant(Base):
    """A product variant: one kind of part, inspected by its own models."""

    __tablename__ = "variant"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # Detector settings as given (omitted keys take the detector's defaults at training time).
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Regions of interest and ignore masks (app.detector.layout.Layout.to_dict); None: none.
    layout: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Inspection records: the retention policy as given (app.services.records.RecordPolicy;
    # omitted keys take its defaults).
    records: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Bytes of its kept record images, kept up to date with them: the byte budget is checked
    # without summing every image.
    record_image_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # use_alter: variant and model reference each other.
    active_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("model.id", ondelete="SET NULL", use_alter=True), nullable=True
    )
    # Last model version handed out: versions are never reused, even after a deletion, so a
    # downloaded "v2" always means the same file.
    last_model_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow,
                                                 onupdate=utcnow)


class Image(Base):
    """An uploaded image, stored as sent (validated at upload, decoded again at training)."""

    __tablename__ = "image"
    __table_args__ = (
        UniqueConstraint("variant_id", "sha256"),
        CheckConstraint("label IN ('good', 'defect')", name="label"),
        Index("ix_image_variant_id_label", "variant_id", "label"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variant.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(16), default=ImageLabel.good.value)
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Model(Base):
    """One training job and, once ready, the model it produced (``version`` per variant)."""

    __tablename__ = "model"
    __table_args__ = (
        UniqueConstraint("variant_id", "version"),
        CheckConstraint("status IN ('queued', 'running', 'ready', 'failed', 'cancelled')",
                        name="status"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        Index("ix_model_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variant.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.queued.value)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    activate: Mapped[bool] = mapped_column(Boolean, default=True)
    # Full detector configuration used (defaults resolved at job creation).
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The layout the model was built with (its ONNX file holds the same); None: none.
    layout: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The quality report from its training images (detector.quality.QualityReport.to_dict);
    # None for models trained before reports existed.
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    bank_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_good_images: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_defect_images: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelArtifact(Base):
    """The shippable single-file ONNX model of a ready ``model`` (kept apart: megabytes)."""

    __tablename__ = "model_artifact"

    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"),
                                          primary_key=True)
    onnx: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FeedbackLabel(enum.StrEnum):
    """What an operator says of a verdict: ``good`` (a false reject), ``defect`` (a confirmed
    defect), ``missed`` (a defect the model passed)."""

    good = "good"
    defect = "defect"
    missed = "missed"


class InspectionRecord(Base):
    """One verdict, as answered: kept for "what did station 3 reject last night, and why"."""

    __tablename__ = "inspection_record"
    __table_args__ = (
        CheckConstraint("feedback IS NULL OR feedback IN ('good', 'defect', 'missed')",
                        name="feedback"),
        # The filters of GET /v1/records, newest first (id order is insertion order).
        Index("ix_inspection_record_variant_id_id", "variant_id", "id"),
        Index("ix_inspection_record_created_at", "created_at"),
        Index("ix_inspection_record_anomalous", "is_anomalous", "id"),
        Index("ix_inspection_record_variant_anomalous", "variant_id", "is_anomalous", "id"),
        Index("ix_inspection_record_variant_version", "variant_id", "model_version", "id"),
        Index("ix_inspection_record_part_id", "part_id", "id"),
        Index("ix_inspection_record_station", "station", "is_anomalous", "id"),
        Index("ix_inspection_record_feedback", "feedback", "id"),
        # Ids are never reused (SQLite would hand out a deleted variant's last ids again): a
        # record id a client kept never comes to mean another part.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variant.id", ondelete="CASCADE"))
    model_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    score: Mapped[float] = mapped_column(Float)
    normalized_score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    is_anomalous: Mapped[bool] = mapped_column(Boolean)
    # The verdict's defect regions and per-region verdicts, as the API answered them.
    regions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    regions_of_interest: Mapped[list[Any]] = mapped_column(JSON, default=list)
    latency_ms: Mapped[float] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # What the caller said of the part (inspect's query parameters).
    part_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    station: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lot: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    image_kept: Mapped[bool] = mapped_column(Boolean, default=False)
    feedback: Mapped[str | None] = mapped_column(String(16), nullable=True)
    feedback_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    feedback_by: Mapped[str | None] = mapped_column(String(63), nullable=True)
    feedback_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RecordImage(Base):
    """The inspected image of a record, when the variant's retention policy kept it."""

    __tablename__ = "record_image"
    __table_args__ = (Index("ix_record_image_variant_id_created_at", "variant_id", "created_at"),)

    record_id: Mapped[int] = mapped_column(
        ForeignKey("inspection_record.id", ondelete="CASCADE"), primary_key=True)
    # Here too, for the byte budget per variant without a join.
    variant_id: Mapped[int] = mapped_column(ForeignKey("variant.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    data: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))


class ApiKeyRole(enum.StrEnum):
    """What a key may do: ``admin`` everything; ``operator`` read everything, inspection
    records included, give feedback and add a record's image to the variant; ``inspector``
    read and inspect, change nothing."""

    admin = "admin"
    operator = "operator"
    inspector = "inspector"


class ApiKey(Base):
    """A caller's credential. The key itself is shown once at creation and never stored: only
    ``lookup`` (the public part embedded in the key, to find the row without scanning) and the
    sha256 of the whole key, compared in constant time."""

    __tablename__ = "api_key"
    __table_args__ = (
        UniqueConstraint("lookup"),
        CheckConstraint("role IN ('admin', 'operator', 'inspector')", name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(16))
    lookup: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
