"""Alembic owns the schema: every migration is reversible, and head matches the SQLAlchemy
models (autogenerate finds nothing to do), on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from app.db.migrate import alembic_config, current_revision, downgrade_to_base, upgrade_to_head
from app.db.models import Base
from app.detector.config import DetectorConfig
from app.services.variants import effective_settings

TABLES = {"variant", "image", "model", "model_artifact", "api_key", "inspection_record",
          "record_image"}


def differences(url: str) -> list[Any]:
    """What ``alembic revision --autogenerate`` would put in a new migration."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_schema_matches_models(database_url: str) -> None:
    assert differences(database_url) == []


def test_round_trip_from_an_empty_database(empty_database_url: str) -> None:
    """empty -> upgrade head -> downgrade base -> upgrade head, models agreeing at each head."""
    url = empty_database_url
    assert tables(url) == set()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    upgrade_to_head(url)
    assert tables(url) == TABLES and current_revision(url) == head
    assert differences(url) == []
    downgrade_to_base(url)
    assert tables(url) == set() and current_revision(url) is None
    upgrade_to_head(url)
    assert tables(url) == TABLES and current_revision(url) == head
    assert differences(url) == []


def test_every_revision_steps_up_and_down(empty_database_url: str) -> None:
    """Each migration alone, both ways: a broken downgrade in the middle of the chain shows up
    here even when base -> head -> base happens to pass."""
    url = empty_database_url
    config = alembic_config(url)
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]
    revisions.reverse()  # oldest first
    seen: list[set[str]] = [tables(url)]
    for revision in revisions:
        command.upgrade(config, revision)
        assert current_revision(url) == revision
        seen.append(tables(url))
    for index in range(len(revisions) - 1, -1, -1):
        command.downgrade(config, "-1")
        assert current_revision(url) == (revisions[index - 1] if index else None)
        assert tables(url) == seen[index], revisions[index]


def test_upgrade_is_idempotent_and_reversible(database_url: str) -> None:
    upgrade_to_head(database_url)  # already at head: no-op
    engine = create_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        downgrade_to_base(database_url)
        assert not TABLES & set(inspect(engine).get_table_names())
        upgrade_to_head(database_url)
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_constraints_have_explicit_names(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        inspector = inspect(engine)
        for table in TABLES:
            for fk in inspector.get_foreign_keys(table):
                assert fk["name"] and fk["name"].startswith("fk_"), (table, fk)
            for uq in inspector.get_unique_constraints(table):
                assert uq["name"] and uq["name"].startswith("uq_"), (table, uq)
    finally:
        engine.dispose()


def test_operator_keys_become_inspector_keys_below_0004(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade_to_head(url)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO api_key (name, role, lookup, key_hash, created_at) VALUES "
                "('shift-lead', 'operator', 'abcdefabcdef', :h, CURRENT_TIMESTAMP)"),
                {"h": "0" * 64})
        command.downgrade(alembic_config(url), "0003")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT role FROM api_key")).scalar_one() == \
                "inspector"
    finally:
        engine.dispose()
    upgrade_to_head(url)


def _insert_variant(connection: Any, settings: dict[str, Any], last_model_version: int) -> None:
    """Variant 1 ("bolt") with these stored settings, in raw SQL (the models may be newer)."""
    connection.execute(text(
        "INSERT INTO variant (id, name, description, settings, last_model_version, "
        "created_at, updated_at) VALUES (1, 'bolt', '', :s, :v, CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP)"), {"s": json.dumps(settings), "v": last_model_version})


def _insert_model(connection: Any, version: int, config: dict[str, Any]) -> None:
    """A ready model of variant 1 with this stored configuration, in raw SQL."""
    connection.execute(text(
        "INSERT INTO model (variant_id, version, status, progress, seed, activate, config, "
        "cancel_requested, created_at) VALUES (1, :v, 'ready', 1, 0, true, :c, false, "
        "CURRENT_TIMESTAMP)"), {"v": version, "c": json.dumps(config)})


def _variant_and_model(engine: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Variant 1's stored settings and its one model's stored configuration."""
    return (_stored_json(engine, "SELECT settings FROM variant"),
            _stored_json(engine, "SELECT config FROM model"))


def _stored_json(engine: Any, query: str) -> dict[str, Any]:
    """The one JSON value ``query`` selects (SQLite hands back text, PostgreSQL a dict)."""
    with engine.connect() as connection:
        value = connection.execute(text(query)).scalar_one()
    return json.loads(value) if isinstance(value, str) else value  # type: ignore[no-any-return]


def test_variants_keep_their_configuration_across_0005(empty_database_url: str) -> None:
    """0005 records the preset ("fast") in variant settings and model configs; nothing
    resolves differently, and the way down leaves what revision 0004's code reads."""
    url = empty_database_url
    config = alembic_config(url)
    command.upgrade(config, "0004")
    defaults = ScriptDirectory.from_config(config).get_revision("0005").module.DEFAULTS_0004
    full = {**defaults, "coreset_ratio": 0.2, "resolution": 256}
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _insert_variant(connection, full, 1)
            _insert_model(connection, 1, full)

        command.upgrade(config, "0005")
        settings, stored_config = _variant_and_model(engine)
        assert settings == stored_config == {**full, "preset": "fast"}
        # Resolved as before (settings added since take their preset's values, fast's).
        later = DetectorConfig.from_dict({"preset": "fast"}).to_dict()
        assert effective_settings(settings) == {**later, **full, "preset": "fast"}
        assert DetectorConfig.from_dict(stored_config).to_dict() == {**later, **full,
                                                                      "preset": "fast"}

        with engine.begin() as connection:  # what a newer model may hold
            connection.execute(text("UPDATE model SET config = :c"),
                               {"c": json.dumps({**full, "preset": "fast",
                                                 "distance": "euclidean"})})
        command.downgrade(config, "0004")
        assert _variant_and_model(engine) == (full, full)
    finally:
        engine.dispose()
    upgrade_to_head(url)


def test_variants_from_before_0006_keep_activating_every_model(empty_database_url: str) -> None:
    """0006 turns the quality gate off for the variants that existed (they activated every
    finished model); the way down drops what 0005's code does not know."""
    url = empty_database_url
    config = alembic_config(url)
    command.upgrade(config, "0005")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _insert_variant(connection, {"preset": "fast"}, 0)

        def settings() -> dict[str, Any]:
            return _stored_json(engine, "SELECT settings FROM variant")

        command.upgrade(config, "0006")
        assert settings() == {"preset": "fast", "min_expected_auroc": 0.0}
        assert effective_settings(settings())["min_expected_auroc"] == 0.0
        with engine.begin() as connection:
            connection.execute(text("UPDATE variant SET settings = :s"), {"s": json.dumps(
                {"preset": "auto", "min_expected_auroc": 0.9, "auto_latency_budget": 6.0,
                 "background": "auto", "coreset_ratio": 0.2})})
        command.downgrade(config, "0005")
        assert settings() == {"preset": "fast", "coreset_ratio": 0.2}
    finally:
        engine.dispose()
    upgrade_to_head(url)


def test_balanced_becomes_accurate_across_0007(empty_database_url: str) -> None:
    """0007 renames the preset balanced (EfficientNet-Lite2) accurate in variants and model
    configurations; one on the old accurate keeps its stored ViT-S backbone, so nothing
    resolves differently; the way down names Lite2's accurate balanced again."""
    url = empty_database_url
    config = alembic_config(url)
    command.upgrade(config, "0006")
    lite2 = {**DetectorConfig().to_dict(), "preset": "balanced"}
    vit = {**lite2, "preset": "accurate", "backbone": "vit_small_l6_l9"}
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _insert_variant(connection, lite2, 2)
            for version, model_config in ((1, lite2), (2, vit)):
                _insert_model(connection, version, model_config)

        def stored() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            return _stored_json(engine, "SELECT settings FROM variant"), _model_configs(engine)

        command.upgrade(config, "0007")
        renamed = {**lite2, "preset": "accurate"}
        assert stored() == (renamed, [renamed, vit])
        assert effective_settings(stored()[0]) == DetectorConfig().to_dict()
        assert DetectorConfig.from_dict(vit).backbone == "vit_small_l6_l9"
        command.downgrade(config, "0006")
        assert stored() == (lite2, [lite2, vit])
    finally:
        engine.dispose()
    upgrade_to_head(url)


def test_configurations_record_no_threshold_views_across_0008(empty_database_url: str) -> None:
    """0008 writes threshold_views 0 into variants and model configurations that predate it
    (what they resolved and trained with); the way down drops it again."""
    url = empty_database_url
    config = alembic_config(url)
    command.upgrade(config, "0007")
    before = {k: v for k, v in DetectorConfig().to_dict().items() if k != "threshold_views"}
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _insert_variant(connection, before, 1)
            _insert_model(connection, 1, before)

        command.upgrade(config, "0008")
        after = {**before, "threshold_views": 0}
        assert _variant_and_model(engine) == (after, after)
        assert effective_settings(_variant_and_model(engine)[0])["threshold_views"] == 0
        command.downgrade(config, "0007")
        assert _variant_and_model(engine) == (before, before)
    finally:
        engine.dispose()
    upgrade_to_head(url)


def test_lite2_configurations_keep_their_288_px_across_0009(empty_database_url: str) -> None:
    """0009 writes the 288 px that a null resolution meant for EfficientNet-Lite2 before its
    default became 384, so a stored variant trains next, and a stored model says it was
    trained, as before; a model on another backbone keeps its null; the way down reads null."""
    url = empty_database_url
    config = alembic_config(url)
    command.upgrade(config, "0008")
    lite2 = {**DetectorConfig().to_dict(), "resolution": None, "max_bank_size": 16384}
    vit = {**lite2, "backbone": "vit_small_l6_l9"}
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _insert_variant(connection, lite2, 2)
            _insert_model(connection, 1, lite2)
            _insert_model(connection, 2, vit)

        command.upgrade(config, "0009")
        after = {**lite2, "resolution": 288}
        assert _stored_json(engine, "SELECT settings FROM variant") == after
        assert _model_configs(engine) == [after, vit]
        assert DetectorConfig.from_dict(effective_settings(after)).resolution == 288
        command.downgrade(config, "0008")
        assert _stored_json(engine, "SELECT settings FROM variant") == lite2
        assert _model_configs(engine) == [lite2, vit]
    finally:
        engine.dispose()
    upgrade_to_head(url)


@pytest.mark.parametrize(("revision", "name", "before", "default", "stated"), [
    ("0010", "jpeg_copy_light", 0.0, 0.2, 0.3),  # C16's re-lit JPEG copies
    ("0011", "edge_reach", "finest", "coarsest", "coarsest"),  # C17's wider edge band
    ("0012", "light", "keep", "contrast", "normalise"),  # C18's contrast matching
])
def test_configurations_keep_what_they_trained_with_across_a_new_default(
    empty_database_url: str, revision: str, name: str, before: Any, default: Any, stated: Any,
) -> None:
    """The revision writes the setting's old value into variants and model configurations
    stored without it (what they resolved and trained with), so the new default does not
    reach them; one that states the setting keeps it."""
    url = empty_database_url
    config = alembic_config(url)
    previous = f"{int(revision) - 1:04d}"
    command.upgrade(config, previous)
    without = {k: v for k, v in DetectorConfig().to_dict().items() if k != name}
    with_own = {**without, name: stated}
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _insert_variant(connection, without, 2)
            _insert_model(connection, 1, without)
            _insert_model(connection, 2, with_own)

        command.upgrade(config, revision)
        after = {**without, name: before}
        assert _stored_json(engine, "SELECT settings FROM variant") == after
        assert _model_configs(engine) == [after, with_own]
        assert getattr(DetectorConfig.from_dict(effective_settings(after)), name) == before
        assert getattr(DetectorConfig.from_dict(effective_settings(without)), name) == default
        command.downgrade(config, previous)
        assert _model_configs(engine) == [after, with_own]
    finally:
        engine.dispose()
    upgrade_to_head(url)


def _model_configs(engine: Any) -> list[dict[str, Any]]:
    """Every stored model configuration, by version."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT config FROM model ORDER BY version")).scalars()
        return [json.loads(v) if isinstance(v, str) else v for v in rows]
