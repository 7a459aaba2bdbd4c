"""bench.calibration_rules on a hand-made evaluate file: a draw's own rule gives back its stored
threshold (or the script stops), and a narrower prior lowers a two-image threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from app.detector.calibration import ScorePrior, threshold_from_good

ROOT = Path(__file__).resolve().parents[2]
GOOD = [10.0, 10.6]  # the held-out training scores the draw was calibrated from
TEST_GOOD = [8.0 + 0.5 * i for i in range(20)]  # test/good 8.0 .. 17.5
TEST_DEFECTS = [11.0 + i for i in range(10)]  # 11 .. 20
# How the draw was calibrated: from GOOD, by the prior of the declared baseline.
CALIBRATION = {"method": "leave-one-out", "good_scores": GOOD, "n_parts": 2,
               "target_false_reject_rate": 0.01, "prior_log_spread": 0.2, "prior_weight": 8}


def _write(prefix: Path, stored_threshold: float, k: int = 2) -> None:
    evidence = {"k": k, "seed": 0, "threshold": stored_threshold,
                "calibration": CALIBRATION,
                "test_scores": TEST_GOOD + TEST_DEFECTS,
                "test_is_defect": [False] * len(TEST_GOOD) + [True] * len(TEST_DEFECTS)}
    Path(f"{prefix}.mvtec_bottle_512.json").write_text(json.dumps({"draw_evidence": [evidence]}))


def _run(*prefixes: Path) -> subprocess.CompletedProcess[str]:
    # As a person runs it (tests/bench shadows the bench package inside pytest).
    return subprocess.run(
        [sys.executable, "-m", "bench.calibration_rules", *map(str, prefixes)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)


def _cells(stdout: str) -> list[list[str]]:
    table = stdout.split("\nchosen: ")[1].split("\n\n", 1)[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def _rows(stdout: str) -> dict[str, list[str]]:
    return {row[0]: row for row in _cells(stdout)}


def test_rules_are_replayed_on_the_stored_scores(tmp_path: Path) -> None:
    today = threshold_from_good(np.asarray(GOOD), 0.01, 2, ScorePrior(0.2, 8))
    _write(tmp_path / "run", today)
    proc = _run(tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    good, defects = np.array(TEST_GOOD), np.array(TEST_DEFECTS)
    expected_frr = float(np.mean(good > today))
    assert rows["spread 0.20, weight 8, target 1 %"][4] == f"{expected_frr:.3f}"
    assert rows["spread 0.20, weight 8, target 1 %"][5] == f"{np.mean(defects > today):.3f}"
    # The test split's own threshold at 5 % FRR sits at its second-highest good score (17.0).
    assert rows["spread 0.20, weight 8, target 1 %"][6] == f"{np.mean(defects > 17.0):.3f}"
    frr_wide = float(rows["spread 0.20, weight 8, target 1 %"][4])
    frr_narrow = float(rows["spread 0.10, weight 4, target 3 %"][4])
    assert frr_narrow > frr_wide  # a narrower prior and a higher target: a lower threshold


def test_a_stored_threshold_the_rule_does_not_give_back_stops_the_script(tmp_path: Path) -> None:
    _write(tmp_path / "run", 1.5 * threshold_from_good(np.asarray(GOOD), 0.01, 2,
                                                       ScorePrior(0.2, 8)))
    proc = _run(tmp_path / "run")
    assert proc.returncode != 0
    assert "its own rule gives" in proc.stderr


def test_several_prefixes_join_their_draws_per_set(tmp_path: Path) -> None:
    today = threshold_from_good(np.asarray(GOOD), 0.01, 2, ScorePrior(0.2, 8))
    _write(tmp_path / "few", today, k=2)
    _write(tmp_path / "more", today, k=4)
    proc = _run(tmp_path / "few", tmp_path / "more")
    assert proc.returncode == 0, proc.stderr
    baseline = [row for row in _cells(proc.stdout) if row[0] == "spread 0.20, weight 8, target 1 %"]
    assert [(row[1], row[2]) for row in baseline] == [("mvtec_bottle_512", "2"),
                                                      ("mvtec_bottle_512", "4")]


def test_a_draw_found_twice_stops_the_script(tmp_path: Path) -> None:
    today = threshold_from_good(np.asarray(GOOD), 0.01, 2, ScorePrior(0.2, 8))
    _write(tmp_path / "run", today)
    proc = _run(tmp_path / "run", tmp_path / "run")
    assert proc.returncode != 0
    assert "appears twice" in proc.stderr


def test_a_rules_allowed_variation_criteria_are_replayed_on_the_views(tmp_path: Path) -> None:
    """Good JPEG views just under today's threshold: today's rule meets the criterion, a
    narrower prior at a higher target rejects them all."""
    today = threshold_from_good(np.asarray(GOOD), 0.01, 2, ScorePrior(0.2, 8))
    lower = threshold_from_good(np.asarray(GOOD), 0.03, 2, ScorePrior(0.1, 4))
    assert lower < today
    between = [(lower + today) / 2] * 10
    evidence = {"k": 2, "seed": 0, "threshold": today,
                "calibration": CALIBRATION,
                "views": [{"name": "none", "good_scores": [1.0] * 10,
                           "defect_scores": [100.0] * 10},
                          {"name": "jpeg_70", "good_scores": between,
                           "defect_scores": [100.0] * 10},
                          # defects a flatter light brings between the two thresholds
                          {"name": "contrast_0.8", "good_scores": [1.0] * 10,
                           "defect_scores": between}]}
    _write(tmp_path / "run", today)
    path = Path(f"{tmp_path / 'run'}.mvtec_bottle_512.json")
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "perturbation_evidence": [evidence]}))
    proc = _run(tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("Allowed-variation criteria met under each rule")[1]
    rows = {row[0]: row[1] for row in
            ([c.strip() for c in line.strip("|").split("|")] for line in
             table.strip().splitlines()[3:])}
    # The higher threshold keeps JPEG's good views and misses the flat light's defects (a
    # recall drop); the lower one catches those and rejects the JPEG views.
    assert rows["spread 0.20, weight 8, target 1 %"] == "1/2"
    assert rows["spread 0.10, weight 4, target 3 %"] == "1/2"
    payload = json.loads(Path(proc.args[-1] + ".mvtec_bottle_512.json").read_text())
    evidence["views"] = evidence["views"][1:]  # no unperturbed reference first
    path.write_text(json.dumps({**payload, "perturbation_evidence": [evidence]}))
    assert "'none' first" in _run(tmp_path / "run").stderr
