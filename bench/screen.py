"""Screening of the declared candidates (BENCHMARKS.md, "Presets"): ``nominal evaluate`` of each
on the four shared sets at k = 1 and 16, 3 draws, whole test split, and the screening table.

    python -m bench.screen run C6 C7 [--sets magnetic_tile ...] [--threads 2]
    python -m bench.screen run C0 C1 --shots 4     # other shot counts (the quality report's check)
    python -m bench.screen table
    python -m bench.screen full C9 C0                # finalists: k = 1, 2, 4, 8, 16

Results go to bench/results/screening/<candidate>.<set>.json; the candidates the baseline
already measured (same configuration) are read from bench/results/baseline/. Runs at other
shot counts than the screening's 1 and 16 go to bench/results/screening/k<shots>/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import common
from bench.candidates import CANDIDATES, evaluate_args

SHORT = {"mvtec_bottle_512": "bottle", "magnetic_tile": "tile", "mvtec_screw_512": "screw",
         "bsdata_pitting": "bsdata"}
OUT = common.RESULTS_DIR / "screening"
# Candidates whose configuration as shipped today an earlier run measured (same seeds and
# protocol): the ViT entries by the baseline; fast by the tolerance issue's candidate E, the
# default since (edge_weight 0.5; the baseline's Lite0 rows predate it); C14-C18 by their
# tolerance runs (bench/tolerance.sh, k = 1 and 16 with the allowed-variation table).
MEASURED = {"C0": "tolerance/E", "C1": "baseline/vit_l6_l9",
            "C2": "baseline/vit_l6_l9_336_square", "C3": "baseline/vit_l8",
            "C4": "baseline/vit_l5", "C14": "tolerance/C14",
            "C15": "tolerance/C15", "C16": "tolerance/C16", "C17": "tolerance/C17",
            "C18": "tolerance/C18"}


SCREENING_SHOTS = "1,16"


def result_path(candidate: str, dataset: str, shots: str = SCREENING_SHOTS) -> Path:
    """Where the evaluation of ``candidate`` on ``dataset`` at ``shots`` lies."""
    if shots != SCREENING_SHOTS:
        return OUT / f"k{shots.replace(',', '_')}" / f"{candidate}.{dataset}.json"
    if candidate in MEASURED:
        return common.RESULTS_DIR / f"{MEASURED[candidate]}.{dataset}.json"
    return OUT / f"{candidate}.{dataset}.json"


def run(args: argparse.Namespace) -> int:
    for candidate in args.candidates:
        for dataset in args.sets:
            path = result_path(candidate, dataset, args.shots)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and not args.again:
                print(f"{candidate} {dataset}: done already ({path})", flush=True)
                continue
            cmd = [sys.executable, "-m", "app.cli", "evaluate", str(args.data / dataset),
                   "--shots", args.shots, "--seeds", "3", "--threads", str(args.threads),
                   "--json", str(path),
                   *evaluate_args(candidate)]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=common.ROOT)
    return 0


def auroc_by_k(path: Path) -> dict[int, float]:
    payload: dict[str, Any] = json.loads(path.read_text())
    return {row["k"]: row["image_auroc"] for row in payload["summary"]}


def table(args: argparse.Namespace) -> int:
    print("| candidate | " + " | ".join(SHORT[s] for s in common.SETS) + " | four-set mean |")
    print("|---|" + "---|" * (len(common.SETS) + 1))
    for candidate in CANDIDATES:
        cells, means = [], []
        for dataset in common.SETS:
            path = result_path(candidate, dataset)
            if not path.exists():
                cells.append("")
                continue
            by_k = auroc_by_k(path)
            mean = (by_k[1] + by_k[16]) / 2
            means.append(mean)
            cells.append(f"{by_k[1]:.3f} / {by_k[16]:.3f} ({mean:.3f})")
        overall = f"{sum(means) / len(means):.3f}" if len(means) == len(common.SETS) else ""
        if means:
            print(f"| {candidate} | " + " | ".join(cells) + f" | {overall} |")
    return 0


FULL_SHOTS = ("1,16", "2,8", "4", "2,4,8")  # the runs a finalist's full table is read from
FULL_METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("pro", "PRO"),
                ("false_reject_rate", "FRR"), ("defect_recall", "recall"))


def latency_runs() -> list[tuple[str, str, dict[str, Any]]]:
    """``(file, dataset, timings by candidate)`` of every recorded ``bench.presets`` run."""
    runs = []
    for path in sorted(common.RESULTS_DIR.glob("bench_presets*.json")):
        measured = json.loads(path.read_text())
        runs.append((path.name, measured["params"]["dataset"], measured["results"]))
    return runs


def full(args: argparse.Namespace) -> int:
    """Each finalist's table over k = 1, 2, 4, 8, 16 on the four sets (from the runs of
    ``FULL_SHOTS``), with its time per image and ratio to C0 from every ``bench.presets`` run
    that timed it."""
    runs = latency_runs()
    for candidate in args.candidates:
        costs = [f"{timing[candidate]['ms']['median']:.1f} ms per 512 x 512 image, "
                 f"{timing[candidate]['ratio_of_medians']:.2f}x C0 on {Path(data).name} ({name})"
                 for name, data, timing in runs if candidate in timing]
        print(f"\n{candidate}" + "".join(f", {cost}" for cost in costs) + "\n")
        print("| data | k | " + " | ".join(name for _, name in FULL_METRICS) + " |")
        print("|---|---|" + "---|" * len(FULL_METRICS))
        for dataset in common.SETS:
            rows: dict[int, dict[str, Any]] = {}
            for shots in FULL_SHOTS:
                path = result_path(candidate, dataset, shots)
                if path.exists():
                    rows.update({row["k"]: row for row in json.loads(path.read_text())["summary"]})
            for k in sorted(rows):
                cells = [common.fmt(rows[k].get(key), 3) for key, _ in FULL_METRICS]
                print(f"| {SHORT[dataset]} | {k} | " + " | ".join(cells) + " |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run", help="evaluate candidates on the shared sets")
    runner.add_argument("candidates", nargs="+", choices=list(CANDIDATES))
    runner.add_argument("--sets", nargs="+", default=list(common.SETS), choices=common.SETS)
    runner.add_argument("--data", type=Path, default=common.DEFAULT_DATASET.parent)
    runner.add_argument("--threads", type=int, default=2)
    runner.add_argument("--shots", default=SCREENING_SHOTS,
                        help="comma-separated shot counts (not 1,16: a k<shots> folder)")
    runner.add_argument("--again", action="store_true", help="rerun what is there already")
    runner.set_defaults(func=run)
    sub.add_parser("table", help="the screening table, image AUROC at k = 1 / 16 (mean)"
                   ).set_defaults(func=table)
    finals = sub.add_parser("full", help="finalists' tables over k = 1, 2, 4, 8, 16")
    finals.add_argument("candidates", nargs="+", choices=list(CANDIDATES))
    finals.set_defaults(func=full)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
