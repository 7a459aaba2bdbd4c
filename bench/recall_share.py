"""What calibrating without test labels costs, per candidate, set and k, from ``nominal
evaluate --json`` files (BENCHMARKS.md, "Tolerance of allowed variations"):

    python -m bench.recall_share [--yardstick PREFIX] NAME=PREFIX [NAME=PREFIX ...]

Each PREFIX names files ``PREFIX.<set>.json``; a name may be given several times (k = 1 and
16 in one folder, k = 2 in another). Per draw: the calibrated threshold's FRR on test/good
and its recall, against the recall of a threshold set on the test split at the FRR a line
tolerates (``recall_at_line_frr``, 10 % from one image, 5 % from more); the share is their
ratio, averaged over the draws (a draw whose yardstick is 0 has none). Files written
before evaluate reported that yardstick take it from ``--yardstick``'s file of the same set,
k and seed: right only where both models score every image alike (threshold views change
the threshold alone, for a fixed preset).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench import common
from bench.tolerance_table import SETS, load


def _draws(prefix: str, data: str) -> list[dict[str, Any]]:
    payload = load(prefix, data)
    return payload["results"] if payload else []


def rows(candidates: list[tuple[str, str]], yardstick: str | None) -> list[list[Any]]:
    out = []
    for name in dict.fromkeys(n for n, _ in candidates):
        for data in SETS:
            reference = {(r["k"], r["seed"]): r.get("recall_at_line_frr")
                         for r in (_draws(yardstick, data) if yardstick else [])}
            draws = [r for n, prefix in candidates if n == name for r in _draws(prefix, data)]
            for k in sorted({r["k"] for r in draws}):
                group = [r for r in draws if r["k"] == k]
                frr = common.median([r["false_reject_rate"] for r in group])
                shares, sticks = [], []
                for r in group:
                    stick = r.get("recall_at_line_frr", reference.get((k, r["seed"])))
                    if stick is not None:
                        sticks.append(stick)
                        if stick > 0:
                            shares.append(r["defect_recall"] / stick)
                recall = sum(r["defect_recall"] for r in group) / len(group)
                out.append([
                    name, data, k, len(group),
                    f"{sum(r['false_reject_rate'] for r in group) / len(group):.3f}",
                    f"{frr:.3f}", f"{recall:.3f}",
                    f"{sum(sticks) / len(sticks):.3f}" if sticks else "-",
                    f"{sum(shares) / len(shares):.2f}" if shares else "-",
                ])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yardstick", default=None,
                        help="prefix whose recall_at_line_frr serves files without one")
    parser.add_argument("candidates", nargs="+", metavar="NAME=PREFIX")
    args = parser.parse_args(argv)
    candidates = [(name, prefix) for name, prefix in
                  (c.split("=", 1) for c in args.candidates)]
    print(common.markdown_table(
        ["candidate", "data", "k", "draws", "FRR (test good)", "median FRR", "recall",
         "recall at line FRR, test threshold", "share"],
        rows(candidates, args.yardstick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
