"""Each benchmark script runs end to end in its ``--quick`` mode (tiny counts) and writes its
results JSON. Figures are not checked: timings belong in the benchmark reports, never in
unit tests. Each script runs in a subprocess, as a person would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATASET = (ROOT / ".." / "shared" / "datasets" / "mvtec_bottle_512").resolve()

pytestmark = pytest.mark.skipif(
    not (DATASET / "train" / "good").is_dir() or not (DATASET / "test" / "good").is_dir(),
    reason=f"the bottle dataset is not at {DATASET}",
)


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh model cache shared by the scripts of this module (the engine's 2-image model
    is reused by the scaling run), so the fitting path is always exercised."""
    env = dict(os.environ)
    env["NOMINAL_BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_quick(script: str, tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    out = tmp_path / f"bench_{script}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--quick", "--dataset", str(DATASET),
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "|---" in proc.stdout  # the markdown table
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["bench"] == script
    machine = data["machine"]
    for key in ("cpu_model", "cores", "python", "onnxruntime", "numpy", "threads"):
        assert machine[key] is not None, key
    return data


def test_engine_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("engine", tmp_path, bench_env)
    for side in ("onnx", "onnx-int8"):  # float32 and 8-bit backbones, same rounds
        assert data["results"][f"{side}/map/b1"]["images_per_s"] > 0
        assert data["workers"][side]["peak_rss_mib"] > 0
    assert data["model"]["onnx_bytes"] > 0 and data["model"]["int8_onnx_bytes"] > 0
    if data["torch_skipped"] is None:  # torch installed: both sides ran and agree
        assert data["ratios"]["onnx/b1"]["onnx_over_torch_images_per_s"] > 0
        assert data["ratios"]["onnx-int8/b1"]["onnx_over_torch_images_per_s"] > 0
        assert data["parity"]["rel_diff"] < 1e-3
    assert data["onnx_profile"]["by_op_type"] and data["onnx_int8_profile"]["by_op_type"]


def test_training_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("training", tmp_path, bench_env)
    assert [row["k"] for row in data["fit"]] == [1, 2]
    for row in data["fit"]:
        assert row["peak_rss_mib_max"] > 0
        assert set(row["timings_median"]) == {"features_s", "coreset_s", "calibration_s",
                                              "export_s"}
    assert data["api"]["runs"][0]["post_to_ready_s"] > 0


def test_scaling_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("scaling", tmp_path, bench_env)
    assert [row["k"] for row in data["latency"]] == [1, 2]
    assert all(row["score_ms"]["median"] > 0 for row in data["latency"])
    assert sorted({row["variants"] for row in data["rss"]}) == [1, 2]
    assert data["options_ab"]["variants"]["current defaults"]["ms"]["median"] > 0


def test_http_load_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("http_load", tmp_path, bench_env)
    assert data["total_errors"] == 0
    assert {level["clients"] for level in data["inspect"]} == {1, 2}
    assert data["server"]["memory_mib"]["one_variant_loaded"]["vmrss_mib"] > 0


def test_regions_latency_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("regions_latency", tmp_path, bench_env)
    assert set(data["ms"]) == {"score", "verdict", "verdict, layout"}
    assert all(row["median"] > 0 for row in data["ms"].values())
    assert data["ratio_median"]["score"] == 1.0


def test_ignore_text_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("ignore_text", tmp_path, bench_env)
    assert set(data["summary"]) == {"no mask", "mask, new version", "mask, trained with it"}
    for figures in data["summary"].values():
        assert all(0.0 <= v <= 1.0 for v in figures.values())


def test_records_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("records", tmp_path, bench_env)
    assert data["load"]["errors"] == 0
    assert data["load"]["ms"]["records on"]["median"] > 0
    assert data["load"]["records_listed"] > 0
    (sqlite,) = data["growth"]
    assert sqlite["bytes_per_record"] > 0 and sqlite["bytes_per_kept_image"] > 0


def test_presets_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("presets", tmp_path, bench_env)
    results = data["results"]
    assert results[data["params"]["reference"]]["ratio_of_medians"] == 1.0
    for name, r in results.items():
        assert r["ms"]["median"] > 0 and r["median_round_ratio"] > 0, name


def test_vit_optimisations_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("vit_optimisations", tmp_path, bench_env)
    results = data["results"]
    assert results["vit224"]["max_rel_score_change"] == 0.0
    assert results["vit224-int8"]["ms"]["median"] > 0


def test_quality_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("quality", tmp_path, bench_env)
    (result,) = data["results"]
    assert result["k"] == 2 and result["quality"]["n_defects"] > 0 and result["quality_s"] > 0


def test_auto_cost_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("auto_cost", tmp_path, bench_env)
    (result,) = data["results"]
    assert result["chosen"] in result["candidates"] and len(result["candidates"]) >= 2
    assert result["median_s"]["auto"] > 0 and result["sum_of_candidates_s"] > 0


def test_coreset_quick(tmp_path: Path, bench_env: dict[str, str]) -> None:
    data = run_quick("coreset", tmp_path, bench_env)
    (result,) = data["results"]
    assert result["same_selection"] and result["bank"] <= result["patches"]
    assert result["median_s"]["pruned"] > 0 and result["median_s"]["unpruned"] > 0
