"""The record store on a real database: what a policy keeps, and the age and byte budget."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.db.models import InspectionRecord, RecordImage, Variant, utcnow
from app.db.session import Database
from app.detector.verdict import Verdict
from app.services.records import (
    CallerContext,
    Inspected,
    RecordPolicy,
    enforce_retention,
    store_records,
    sweep,
)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def _variant(database: Database) -> int:
    with database.writing() as session:
        variant = Variant(name="bolt", description="", settings={})
        session.add(variant)
        session.commit()
        return variant.id


def _inspected(anomalous: bool, size: int = 100) -> Inspected:
    verdict = Verdict(score=2.0 if anomalous else 0.5, normalized_score=0.5, threshold=1.0,
                      is_anomalous=anomalous)
    return Inspected(verdict=verdict, model_version=1, latency_ms=1.0, width=8, height=8,
                     data=b"x" * size, format="PNG")


def _store(database: Database, variant_id: int, policy: RecordPolicy,
           items: list[Inspected], seed: int = 0) -> list[int]:
    with database.writing() as session:
        return store_records(session, variant_id=variant_id, policy=policy, inspected=items,
                             context=CallerContext(), rng=random.Random(seed))


def _kept(database: Database) -> int:
    with database.reading() as session:
        return session.scalar(select(func.count()).select_from(RecordImage)) or 0


def test_anomalous_images_kept_and_a_share_of_good_ones(database: Database) -> None:
    variant = _variant(database)
    policy = RecordPolicy(keep_good_fraction=0.2)
    ids = _store(database, variant, policy, [_inspected(False) for _ in range(500)])
    assert len(ids) == 500
    assert 70 <= _kept(database) <= 130  # 20 % of 500, seeded
    _store(database, variant, policy, [_inspected(True) for _ in range(10)])
    with database.reading() as session:
        flagged = session.scalars(select(InspectionRecord.image_kept)
                                  .where(InspectionRecord.is_anomalous)).all()
    assert flagged == [True] * 10
    off = RecordPolicy(keep_anomalous_images=False, keep_good_fraction=0.0)
    before = _kept(database)
    _store(database, variant, off, [_inspected(True) for _ in range(5)])
    assert _kept(database) == before
    assert _store(database, variant, RecordPolicy(enabled=False), [_inspected(True)]) == []


def test_images_past_the_age_go_and_their_records_stay(database: Database) -> None:
    variant = _variant(database)
    policy = RecordPolicy(max_image_age_days=30)
    old = _store(database, variant, policy, [_inspected(True) for _ in range(3)])
    with database.writing() as session:
        session.execute(update(RecordImage).where(RecordImage.record_id.in_(old[:2]))
                        .values(created_at=utcnow() - timedelta(days=31)))
        session.commit()
    with database.writing() as session:
        assert enforce_retention(session, variant_id=variant, policy=policy) == 2
        session.commit()
    with database.reading() as session:
        kept = dict(session.execute(select(InspectionRecord.id, InspectionRecord.image_kept)
                                    ).all())
    assert kept == {old[0]: False, old[1]: False, old[2]: True}


def test_the_byte_budget_is_per_variant(database: Database) -> None:
    first = _variant(database)
    with database.writing() as session:
        other = Variant(name="nut", description="", settings={})
        session.add(other)
        session.commit()
        second = other.id
    policy = RecordPolicy(max_image_bytes=250)
    _store(database, first, policy, [_inspected(True) for _ in range(5)])
    _store(database, second, policy, [_inspected(True) for _ in range(2)])
    with database.reading() as session:
        per_variant = dict(session.execute(
            select(RecordImage.variant_id, func.sum(RecordImage.size_bytes))
            .group_by(RecordImage.variant_id)).all())
    assert per_variant == {first: 200, second: 200}


def test_the_sweep_applies_policies_where_nothing_new_arrives(database: Database) -> None:
    variant = _variant(database)
    policy = RecordPolicy(max_image_age_days=30)
    ids = _store(database, variant, policy, [_inspected(True) for _ in range(3)])
    with database.writing() as session:
        session.execute(update(RecordImage).values(created_at=utcnow() - timedelta(days=31)))
        session.commit()
    assert sweep(database) == 3 and _kept(database) == 0
    with database.reading() as session:
        assert session.scalar(select(Variant.record_image_bytes)) == 0
        assert len(session.scalars(select(InspectionRecord.id)).all()) == len(ids)


def test_a_running_total_above_what_is_stored_heals(database: Database) -> None:
    variant = _variant(database)
    policy = RecordPolicy(max_image_bytes=1000)
    _store(database, variant, policy, [_inspected(True) for _ in range(2)])
    with database.writing() as session:  # as after a manual cleanup
        session.execute(update(Variant).values(record_image_bytes=10_000))
        session.commit()
    _store(database, variant, policy, [_inspected(True)])
    with database.reading() as session:
        total = session.scalar(select(Variant.record_image_bytes))
        real = session.scalar(select(func.sum(RecordImage.size_bytes)))
    assert total == real == 300  # nothing removed for bytes that were not there
