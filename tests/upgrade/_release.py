"""A released database, loaded at its own (old) revision on SQLite or PostgreSQL.

``tests/fixtures/upgrade/<release>.sqlite.gz`` is what a release left in a SQLite database
(``scripts/build_upgrade_fixture.py`` wrote it with that release's code), and
``<release>.json`` the manifest: commit, Alembic revision, rows, API keys and what that release
answered for the probe images in ``<release>/<variant>/``.

On SQLite the file is the database. PostgreSQL gets the same rows: the code under test migrates
an empty schema up to the fixture's revision (not to head), then every table of the SQLite file
is copied row by row, and the id sequences are moved past the copied ids. Both backends then
start from what the release would have left there.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import Engine, MetaData, Table, create_engine, func, select, text
from sqlalchemy.types import DateTime

from app.db.migrate import alembic_config, current_revision
from tests.conftest import fresh_database

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upgrade"


def releases() -> list[str]:
    """The pinned releases (manifest stems), oldest name first."""
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


def manifest(release: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{release}.json").read_text())
    return data


def probe_bytes(release: str, variant: dict[str, Any]) -> dict[str, bytes]:
    """The variant's probe images by file name (what the manifest's answers refer to)."""
    folder = FIXTURES / variant["probes_dir"]
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.png"))}


def unpack_sqlite(release: str, target: Path) -> Path:
    """The release's SQLite database, gunzipped to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(FIXTURES / manifest(release)["database"], "rb") as source, \
            open(target, "wb") as out:
        shutil.copyfileobj(source, out)
    return target


@contextmanager
def release_database(kind: str, release: str, tmp_path: Path) -> Iterator[str]:
    """A database of ``kind`` (``sqlite``, ``postgresql``) holding the release's rows at the
    release's revision. PostgreSQL: a fresh schema, dropped afterwards (skipped, or failed
    under NOMINAL_TEST_REQUIRE_POSTGRES, when no server answers)."""
    pinned = manifest(release)
    sqlite_file = unpack_sqlite(release, tmp_path / f"{release}.db")
    sqlite_url = f"sqlite:///{sqlite_file}"
    assert current_revision(sqlite_url) == pinned["alembic_revision"], \
        "fixture and manifest disagree"
    if kind == "sqlite":
        yield sqlite_url
        return
    with fresh_database(kind, tmp_path) as url:
        command.upgrade(alembic_config(url), pinned["alembic_revision"])
        assert current_revision(url) == pinned["alembic_revision"]
        source, target = create_engine(sqlite_url), create_engine(url)
        try:
            copy_rows(source, target)
        finally:
            source.dispose()
            target.dispose()
        yield url


def _insert_order(tables: dict[str, Table]) -> list[tuple[Table, set[str]]]:
    """Tables in an order where every NOT NULL foreign key points at a table copied before,
    each with the nullable foreign-key columns that point at a table not copied yet (itself
    included): those go in as NULL and are filled in once every row is there (``variant`` and
    ``model`` refer to each other)."""
    order: list[tuple[Table, set[str]]] = []
    done: set[str] = set()
    remaining = dict(sorted(tables.items()))
    while remaining:
        for name, table in remaining.items():
            later = {fk for fk in table.foreign_keys if fk.column.table.name not in done}
            if all(fk.parent.nullable for fk in later):
                order.append((table, {fk.parent.name for fk in later}))
                done.add(name)
                del remaining[name]
                break
        else:
            raise AssertionError(f"no insert order for {sorted(remaining)}: a cycle of NOT NULL "
                                 "foreign keys")
    return order


def _convert(value: Any, column_type: Any) -> Any:
    # SQLite holds UTC timestamps naive (app.db.models.UTCDateTime); PostgreSQL's timestamptz
    # would read a naive value in the session's time zone.
    if isinstance(value, datetime) and value.tzinfo is None and isinstance(column_type, DateTime) \
            and column_type.timezone:
        return value.replace(tzinfo=UTC)
    return value


def copy_rows(source: Engine, target: Engine) -> dict[str, int]:
    """Copy every table of ``source`` but ``alembic_version`` into the same, empty tables of
    ``target`` (which must have exactly the same columns); returns the row counts."""
    source_meta, target_meta = MetaData(), MetaData()
    source_meta.reflect(source)
    target_meta.reflect(target)
    names = set(source_meta.tables) - {"alembic_version"}
    assert names == set(target_meta.tables) - {"alembic_version"}, (
        "the current migrations up to the release's revision do not create the release's tables")
    for name in names:
        ours = {c.name for c in target_meta.tables[name].columns}
        theirs = {c.name for c in source_meta.tables[name].columns}
        assert ours == theirs, f"{name}: columns {sorted(ours ^ theirs)} differ at this revision"
    counts: dict[str, int] = {}
    fill_in: list[tuple[Table, set[str], list[dict[str, Any]]]] = []
    with source.connect() as reading, target.begin() as writing:
        for table, deferred in _insert_order({n: target_meta.tables[n] for n in names}):
            rows = [
                {c.name: _convert(row[c.name], c.type) for c in table.columns}
                for row in reading.execute(select(source_meta.tables[table.name])).mappings()
            ]
            counts[table.name] = len(rows)
            if deferred:
                fill_in.append((table, deferred, rows))
                rows = [{**row, **dict.fromkeys(deferred)} for row in rows]
            for row in rows:  # one by one: model artefacts are megabytes each
                writing.execute(table.insert().values(row))
        for table, deferred, rows in fill_in:
            key = list(table.primary_key.columns)
            for row in rows:
                values = {name: row[name] for name in deferred if row[name] is not None}
                if values:
                    writing.execute(table.update()
                                    .where(*(c == row[c.name] for c in key)).values(values))
        for name in names:
            table = target_meta.tables[name]
            key = list(table.primary_key.columns)
            if len(key) != 1:
                continue
            sequence = writing.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                      {"t": name, "c": key[0].name})
            if sequence is not None:
                highest = writing.scalar(select(func.max(key[0])))
                writing.execute(text("SELECT setval(:s, :v, :called)"),
                                {"s": sequence, "v": highest or 1, "called": highest is not None})
    return counts
