"""The candidates of BENCHMARKS.md "Tolerance of allowed variations" side by side, from
``nominal evaluate --perturb --json`` files (bench/tolerance.sh; candidate A is today's
default, bench/results/baseline/lite0.*.json):

    python -m bench.tolerance_table A=bench/results/baseline/lite0 B=bench/results/tolerance/B ...

Per candidate and data set: each perturbation's false-reject rate (recall in brackets) at
16 shots, and how many perturbations meet the issue's criteria (FRR at most 5 %, recall at
most 5 points below the unperturbed recall); then the k = 1 and k = 16 rows of every set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.baseline_table import summary_row

SETS = ("mvtec_bottle_512", "mvtec_screw_512", "bsdata_pitting", "magnetic_tile")
MAX_FRR = 0.05
MAX_RECALL_DROP = 0.05


def load(prefix: str, data: str) -> dict[str, Any] | None:
    """The ``nominal evaluate --json`` file ``<prefix>.<data>.json``, None where it is missing."""
    path = Path(f"{prefix}.{data}.json")
    return json.loads(path.read_text()) if path.exists() else None


def criteria_met(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(perturbations meeting both criteria, perturbations), ``none`` excluded."""
    reference = rows[0]["recall"] or 0.0
    perturbed = rows[1:]
    met = sum(1 for r in perturbed
              if r["false_reject_rate"] <= MAX_FRR and r["recall"] >= reference - MAX_RECALL_DROP)
    return met, len(perturbed)


def candidate(argument: str) -> tuple[str, str]:
    """``NAME=PREFIX`` as (name, prefix)."""
    name, sep, prefix = argument.partition("=")
    if not sep or not name or not prefix:
        raise argparse.ArgumentTypeError(f"expected NAME=PREFIX, got {argument!r}")
    return name, prefix


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", nargs="+", type=candidate, metavar="NAME=PREFIX",
                        help="a candidate's name and the prefix of its <prefix>.<set>.json files")
    candidates = parser.parse_args(arguments).candidates
    names = None
    for name, prefix in candidates:
        for data in SETS:
            payload = load(prefix, data)
            if payload is None or not payload.get("perturbations"):
                continue
            rows = payload["perturbations"]
            if names is None:
                names = [r["name"] for r in rows]
                print("| candidate | data | " + " | ".join(names) + " | criteria met |")
                print("|---|---|" + "---|" * (len(names) + 1))
            met, total = criteria_met(rows)
            cells = [f"{r['false_reject_rate']:.3f} ({r['recall']:.2f})" for r in rows]
            print(f"| {name} | {data} | " + " | ".join(cells) + f" | {met}/{total} |")
    print("\n| candidate | data | k | image AUROC | pixel AUROC | PRO | FRR | recall | ms/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, prefix in candidates:
        for data in SETS:
            payload = load(prefix, data)
            if payload is None:
                continue
            for row in payload.get("summary", []):
                print(summary_row(name, payload, row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
