"""bench.recall_share on hand-made evaluate files: shares per draw, and the yardstick borrowed
from another file where a file predates it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, draws: list[dict[str, float]]) -> None:
    path.write_text(json.dumps({"results": draws}))


def test_shares_average_over_draws_and_borrow_a_missing_yardstick(tmp_path: Path) -> None:
    _write(tmp_path / "new.mvtec_bottle_512.json", [
        {"k": 2, "seed": 0, "false_reject_rate": 0.0, "defect_recall": 0.4,
         "recall_at_line_frr": 0.8},
        {"k": 2, "seed": 1, "false_reject_rate": 0.1, "defect_recall": 0.9,
         "recall_at_line_frr": 0.9},
    ])
    _write(tmp_path / "old.mvtec_bottle_512.json", [
        {"k": 2, "seed": 0, "false_reject_rate": 0.0, "defect_recall": 0.2},
        {"k": 2, "seed": 1, "false_reject_rate": 0.0, "defect_recall": 0.45},
    ])
    # As a person runs it (tests/bench shadows the bench package inside pytest).
    proc = subprocess.run(
        [sys.executable, "-m", "bench.recall_share", "--yardstick", str(tmp_path / "new"),
         f"new={tmp_path / 'new'}", f"old={tmp_path / 'old'}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=60, check=True)
    table = [[cell.strip() for cell in line.strip("|").split("|")]
             for line in proc.stdout.splitlines()[2:]]
    by_name = {row[0]: row for row in table}
    assert by_name["new"][1:4] == ["mvtec_bottle_512", "2", "2"]
    assert by_name["new"][-1] == "0.75"  # (0.4 / 0.8 + 0.9 / 0.9) / 2
    assert by_name["new"][4] == "0.050"
    assert by_name["old"][-2:] == ["0.850", "0.38"]  # (0.2 / 0.8 + 0.45 / 0.9) / 2
