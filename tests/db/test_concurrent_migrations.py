"""Replicas that start together all run ``upgrade_to_head``: exactly one migrates, the others
wait for it and find the schema at head. (Processes, as replicas are: Alembic's module-level
context is not meant for several threads of one process.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from app.db.migrate import downgrade_to_base

ROOT = Path(__file__).resolve().parents[2]


def test_parallel_upgrades_from_several_processes(database_url: str) -> None:
    downgrade_to_base(database_url)
    code = "import sys; from app.db.migrate import upgrade_to_head; upgrade_to_head(sys.argv[1])"
    processes = [subprocess.Popen([sys.executable, "-c", code, database_url], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(3)]
    for process in processes:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()[-2000:]
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    finally:
        engine.dispose()
    assert len(versions) == 1
