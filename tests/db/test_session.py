"""Engine behaviour the service relies on: SQLite pragmas, cascades, timestamps in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from app.db.models import Image, Model, Variant
from app.db.session import Database


def test_sqlite_pragmas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with db.engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        db.dispose()


def test_deleting_a_variant_cascades_and_timestamps_are_utc(database_url: str) -> None:
    db = Database(database_url)
    try:
        with db.writing() as session:
            variant = Variant(name="v", description="", settings={})
            session.add(variant)
            session.flush()
            session.add(Image(variant_id=variant.id, sha256="0" * 64, label="good", format="PNG",
                              width=8, height=8, size_bytes=3, data=b"abc"))
            model = Model(variant_id=variant.id, version=1, config={}, status="ready")
            session.add(model)
            session.flush()
            variant.active_model_id = model.id
        with db.reading() as session:
            stored = session.scalar(select(Variant))
            assert stored is not None and stored.created_at.tzinfo is UTC
            assert abs((datetime.now(UTC) - stored.created_at).total_seconds()) < 60
        with db.writing() as session:
            session.execute(text("UPDATE variant SET active_model_id = NULL"))
            session.execute(text("DELETE FROM variant"))
        with db.reading() as session:
            assert session.scalar(select(func.count()).select_from(Image)) == 0
            assert session.scalar(select(func.count()).select_from(Model)) == 0
    finally:
        db.dispose()


def test_naive_timestamps_are_refused(database_url: str) -> None:
    db = Database(database_url)
    try:
        with pytest.raises(Exception, match="naive"), db.writing() as session:
            session.add(Variant(name="v", description="", settings={},
                                created_at=datetime(2025, 1, 1)))
    finally:
        db.dispose()
