"""Threshold rules replayed on the scores of real draws, without refitting (BENCHMARKS.md,
"Calibration rules"):

    python -m bench.calibration_rules PREFIX [PREFIX ...] [--out FILE]

Each PREFIX names ``nominal evaluate --json`` files ``PREFIX.<set>.json`` whose
``draw_evidence`` holds, per draw, the good scores the model was calibrated from and every
test image's score (several prefixes: one configuration's runs at other shot counts, their
draws joined per set).
A rule (prior spread and weight, target false-reject rate) changes the threshold alone, so
each declared candidate's threshold is recomputed from the same good scores and judged on the
same test scores: its false-reject rate on test/good, its recall, and that recall's share of
the recall of a threshold set on the test split at the FRR a line tolerates (10 % from one
image, 5 % from more). Each draw's own rule (recorded with its calibration) is replayed
first and must give back its stored threshold, or the script stops. Files of evaluations
with ``--perturb`` also hold ``perturbation_evidence`` (every allowed-variation view's score,
since 2026-12-06): each rule's allowed-variation criteria are then replayed too and reported
beside the choice.

Choice, declared before measuring: over the four sets and k = 2, 4, 8, 16, a cell (set, k)
passes when its mean FRR is at most 5 % and its mean share at least 0.8 (a cell whose every
yardstick is 0 passes on share: nothing is caught at that FRR). The rule with the most
passing cells wins; ties go to fewer cells above 5 % FRR, then to the higher mean share
(each cell's capped at 1), then to the rule at the declaration (``DECLARED_BASELINE``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from app.detector.calibration import ScorePrior, threshold_from_good
from app.evaluation.evaluate import line_false_reject_rate
from app.evaluation.metrics import recall_at_false_reject_rate
from bench import common
from bench.tolerance_table import SETS, criteria_met, load

MAX_FRR = 0.05
MIN_SHARE = 0.8
CHOSEN_FROM_K = 2  # one image: no rule can hold (BENCHMARKS.md, "Tolerance"); reported only


@dataclass(frozen=True)
class Rule:
    """A candidate threshold rule: the prior on good-score spread and the target FRR."""

    prior: ScorePrior
    target_false_reject_rate: float

    @property
    def name(self) -> str:
        return (f"spread {self.prior.log_spread:.2f}, weight {self.prior.weight}, "
                f"target {100 * self.target_false_reject_rate:.0f} %")


# The rule when the candidates were declared (2026-12-02): first, so that it wins full ties.
DECLARED_BASELINE = Rule(ScorePrior(0.2, 8), 0.01)
CANDIDATES = [DECLARED_BASELINE] + [
    rule for rule in (Rule(ScorePrior(spread, weight), target)
                      for spread in (0.2, 0.15, 0.1) for weight in (8, 4)
                      for target in (0.01, 0.02, 0.03))
    if rule != DECLARED_BASELINE
]


def _threshold(evidence: dict[str, Any], rule: Rule) -> float:
    calibration = evidence["calibration"]
    return threshold_from_good(np.asarray(calibration["good_scores"]),
                               rule.target_false_reject_rate, calibration["n_parts"], rule.prior)


def rule_of(evidence: dict[str, Any]) -> Rule:
    """The rule the draw was calibrated with: as recorded, or (evidence from before the prior
    was recorded) the declared baseline's prior."""
    calibration = evidence["calibration"]
    recorded = calibration.get("prior_log_spread")
    prior = (DECLARED_BASELINE.prior if recorded is None
             else ScorePrior(recorded, calibration["prior_weight"]))
    return Rule(prior, calibration["target_false_reject_rate"])


@dataclass(frozen=True)
class Replay:
    """One draw under one rule: FRR on test/good, recall, the test-split yardstick, share."""

    frr: float
    recall: float
    yardstick: float
    share: float | None  # None where the yardstick is 0


def replay(evidence: dict[str, Any], rule: Rule) -> Replay:
    scores = np.asarray(evidence["test_scores"], dtype=np.float64)
    defect = np.asarray(evidence["test_is_defect"], dtype=bool)
    flagged = scores > _threshold(evidence, rule)
    recall = float(flagged[defect].mean())
    stick = recall_at_false_reject_rate(scores, defect, line_false_reject_rate(evidence["k"]))
    return Replay(float(flagged[~defect].mean()), recall, stick,
                  recall / stick if stick > 0 else None)


def _check_replay(evidence: dict[str, Any], data: str) -> None:
    replayed = _threshold(evidence, rule_of(evidence))
    if not np.isclose(replayed, evidence["threshold"], rtol=1e-5):
        raise SystemExit(f"{data} k={evidence['k']} seed={evidence['seed']}: its own rule gives "
                         f"{replayed:.6g}, the draw stored {evidence['threshold']:.6g}")


def cells(prefixes: Sequence[str]) -> list[dict[str, Any]]:
    """Every (rule, set, k) cell: means over the draws of every prefix's file of the set
    (a draw, k and seed, found twice stops the script: it would count twice)."""
    out = []
    for data in SETS:
        draws = _evidence(prefixes, data, "draw_evidence")
        seen = [(d["k"], d["seed"]) for d in draws]
        if len(set(seen)) < len(seen):
            raise SystemExit(f"{data}: a draw (k, seed) appears twice among {list(prefixes)}")
        for evidence in draws:
            _check_replay(evidence, data)
        for rule in CANDIDATES:
            for k in sorted({d["k"] for d in draws}):
                replays = [replay(d, rule) for d in draws if d["k"] == k]
                shares = [r.share for r in replays if r.share is not None]
                out.append({
                    "rule": rule.name, "data": data, "k": k, "draws": len(replays),
                    "frr": fmean([r.frr for r in replays]),
                    "recall": fmean([r.recall for r in replays]),
                    "yardstick": fmean([r.yardstick for r in replays]),
                    "share": fmean(shares) if shares else None,
                })
    return out


def variation_cells(prefixes: Sequence[str]) -> list[dict[str, Any]]:
    """Per rule and set, the allowed-variation criteria met under the rule's threshold
    (``tolerance_table.criteria_met`` on the means over the draws), from the files'
    ``perturbation_evidence`` (evaluations with ``--perturb`` since it was recorded): what a
    rule does to the line's variations, reported beside the choice."""
    out = []
    for data in SETS:
        every = _evidence(prefixes, data, "perturbation_evidence")
        if not every:
            continue
        k = max(d["k"] for d in every)  # what the benchmark's table reads: one k
        draws = [d for d in every if d["k"] == k]
        names = [view["name"] for view in draws[0]["views"]]
        for evidence in draws:
            _check_replay(evidence, data)
            views = evidence["views"]
            if ([v["name"] for v in views] != names or names[0] != "none"
                    or not all(v["good_scores"] and v["defect_scores"] for v in views)):
                raise SystemExit(f"{data} k={k} seed={evidence['seed']}: the views must be "
                                 f"{names} with 'none' first, each with good and defect scores")
        for rule in CANDIDATES:
            judged = [(d, _threshold(d, rule)) for d in draws]
            # Every draw lists the same views in the same order (checked above).
            rows = [{"name": name,
                     "false_reject_rate": fmean(_above(d["views"][i]["good_scores"], cut)
                                                for d, cut in judged),
                     "recall": fmean(_above(d["views"][i]["defect_scores"], cut)
                                     for d, cut in judged)}
                    for i, name in enumerate(names)]
            met, of = criteria_met(rows)
            out.append({"rule": rule.name, "data": data, "k": k, "draws": len(draws),
                        "met": met, "of": of, "rows": rows})
    return out


def _evidence(prefixes: Sequence[str], data: str, key: str) -> list[dict[str, Any]]:
    """The draws under ``key`` of every prefix's file of ``data``, in prefix order."""
    payloads = [p for p in (load(prefix, data) for prefix in prefixes) if p is not None]
    return [d for p in payloads for d in p.get(key) or []]


def _above(scores: list[float], threshold: float) -> float:
    return float(np.mean(np.asarray(scores) > threshold))


def _passes(cell: dict[str, Any]) -> bool:
    return cell["frr"] <= MAX_FRR and (cell["share"] is None or cell["share"] >= MIN_SHARE)


def standings(all_cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule, the declared choice's keys, best first (the baseline wins full ties)."""
    out = []
    for order, rule in enumerate(CANDIDATES):
        judged = [c for c in all_cells if c["rule"] == rule.name and c["k"] >= CHOSEN_FROM_K]
        out.append({
            "rule": rule.name,
            "cells": len(judged),
            "passing": sum(_passes(c) for c in judged),
            "over_frr": sum(c["frr"] > MAX_FRR for c in judged),
            "mean_capped_share": fmean(
                [1.0 if c["share"] is None else min(1.0, c["share"]) for c in judged]),
            "order": order,
        })
    return sorted(out, key=lambda s: (-s["passing"], s["over_frr"], -s["mean_capped_share"],
                                      s["order"]))


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="+", metavar="PREFIX",
                        help="evaluate files PREFIX.<set>.json with draw_evidence")
    parser.add_argument("--out", type=Path, default=None, help="JSON of every cell and standing")
    args = parser.parse_args(argv)
    all_cells = cells(args.prefixes)
    if not all_cells:
        raise SystemExit("no evaluate file with draw_evidence at "
                         + ", ".join(f"{prefix}.<set>.json" for prefix in args.prefixes))
    ranked = standings(all_cells)
    print(common.markdown_table(
        ["rule", f"cells passing (k >= {CHOSEN_FROM_K})", "cells above 5 % FRR",
         "mean share (capped at 1)"],
        [[s["rule"], f"{s['passing']}/{s['cells']}", s["over_frr"],
          f"{s['mean_capped_share']:.3f}"] for s in ranked]))
    print(f"\nchosen: {ranked[0]['rule']}\n")
    print(common.markdown_table(
        ["rule", "data", "k", "draws", "FRR (test good)", "recall",
         "recall at line FRR, test threshold", "share"],
        [[c["rule"], c["data"], c["k"], c["draws"], _fmt(c["frr"], 3), _fmt(c["recall"], 3),
          _fmt(c["yardstick"], 3), _fmt(c["share"], 2)] for c in all_cells]))
    variations = variation_cells(args.prefixes)
    if variations:
        print("\nAllowed-variation criteria met under each rule (the largest k's views):\n")
        print(common.markdown_table(
            ["rule", *{c["data"]: None for c in variations}],
            [[rule.name, *(f"{c['met']}/{c['of']}" for c in variations
                           if c["rule"] == rule.name)] for rule in CANDIDATES]))
    if args.out:
        common.write_results(args.out, {"prefixes": args.prefixes, "standings": ranked,
                                        "cells": all_cells, "variation_cells": variations})
    return 0


if __name__ == "__main__":
    sys.exit(main())
