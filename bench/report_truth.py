"""Does the quality report predict the truth? (BENCHMARKS.md, "Quality report")

For each configuration with real figures on a set (the evaluation JSONs of the baseline and
the screening: whole test split, 3 draws), fit it again on the same draws of k training
images (the evaluation's seeded draw) and read its quality report. Per set: the Spearman
correlation over configurations between the expected and the real image AUROC; and the
estimated against the real false-reject rate on test/good.

    python -m bench.report_truth [--k 16] [--profile E0] [--draws 3] [--sets ...] [--candidates ...]
        [--merge EARLIER.json ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from app.detector.presets import DEFAULT_PRESET, auto_pick
from bench import common
from bench.candidates import CANDIDATES, PRESET_CANDIDATES
from bench.screen import FULL_SHOTS, SHORT, result_path

# Declared before measuring (BENCHMARKS.md, "Quality report"): the quality report's synthetic
# defects, as the default (E0) and the alternatives compared with it.
PROFILES: dict[str, dict[str, Any]] = {
    "E0": {"auroc_from": 1 / 20},
    "E1": {"auroc_from": 1 / 20, "strength": 0.5},
    "E2": {"auroc_from": 1 / 20, "strength": 0.25},
    "E3": {"auroc_from": 0.0},  # chosen by the rule: the report's default (DEFAULT_PROFILE)
    "E4": {"auroc_from": 1 / 20, "kinds": ("cutpaste", "missing")},
    # Declared after E0-E4's 3-draw runs, before its own: E3's defects four to an image in
    # every training image, each judged as the image it would make alone (four times the
    # defects for about the same extractions).
    "E5": {"auroc_from": 0.0, "together": 4, "hosts": 16, "passes": 1},
}


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below three pairs or when
    one side is constant."""
    if len(a) < 3:
        return None

    def ranks(values: list[float]) -> np.ndarray:
        order = np.argsort(values, kind="mergesort")
        r = np.empty(len(values))
        r[order] = np.arange(len(values))
        for v in set(values):  # ties share their mean rank
            same = np.asarray(values) == v
            r[same] = r[same].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def real_results(candidate: str, dataset: str, k: int) -> list[dict[str, Any]]:
    """The evaluation's per-draw rows of ``candidate`` on ``dataset`` at ``k`` shots, from
    any of the screening's runs (k = 1, 16; 2, 8; 4) or a run at that shot count alone."""
    runs = dict.fromkeys([*FULL_SHOTS, str(k)])
    for path in (result_path(candidate, dataset, shots) for shots in runs):
        if path.exists():
            real = [r for r in json.loads(path.read_text())["results"] if r["k"] == k]
            if real:
                return real
    return []


def auto_choice(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per set, the preset ``auto`` keeps by the mean expected image AUROC over the draws
    (the engine decides per draw), against the default's and the best preset's real image
    AUROC: the issue's test is chosen >= default and >= best - 0.01."""
    out = {}
    for dataset in common.SETS:
        by_preset = {preset: r for preset, candidate in PRESET_CANDIDATES.items()
                     for r in rows if r["set"] == dataset and r["candidate"] == candidate}
        if len(by_preset) < len(PRESET_CANDIDATES):
            continue
        chosen = auto_pick({p: r["expected_image_auroc"] for p, r in by_preset.items()})
        default = DEFAULT_PRESET
        real = {p: r["real_image_auroc"] for p, r in by_preset.items()}
        out[dataset] = {"chosen": chosen, "real": real[chosen], "default_real": real[default],
                        "best_real": max(real.values()),
                        "holds": real[chosen] >= real[default] and
                        real[chosen] >= max(real.values()) - 0.01}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.detector.config import DetectorConfig
    from app.detector.engine import Detector
    from app.detector.quality import DefectProfile
    from app.detector.runtime import RuntimeOptions
    from app.evaluation.dataset import load_dataset
    from app.evaluation.evaluate import training_draw

    profile = DefectProfile(**PROFILES[args.profile])
    detector = Detector(common.MODELS_DIR, RuntimeOptions(threads=args.threads))
    rows: list[dict[str, Any]] = []
    for dataset in args.sets:
        data = load_dataset(args.data / dataset)
        for candidate, settings in CANDIDATES.items():
            if args.candidates and candidate not in args.candidates:
                continue
            real = real_results(candidate, dataset, args.k)
            if not real:
                continue
            config = DetectorConfig.from_dict(settings)
            reports = [detector.fit(training_draw(data, args.k, r["seed"]), config,
                                    seed=r["seed"], quality_profile=profile).quality
                       for r in real[:args.draws]]
            row = {
                "set": dataset, "candidate": candidate, "draws": len(real),
                "expected_image_auroc": float(np.mean([q.expected_image_auroc or 0.0
                                                       for q in reports])),
                # The real figure over every draw of the evaluation (the truth to rank by).
                "real_image_auroc": float(np.mean([r["image_auroc"] for r in real])),
                "estimated_frr": float(np.mean([q.estimated_false_reject_rate or 0.0
                                                for q in reports])),
                "variation_frr": (None if reports[0].variation_false_reject_rate is None else
                                  float(np.mean([q.variation_false_reject_rate or 0.0
                                                 for q in reports]))),
                "real_frr": float(np.mean([r["false_reject_rate"] for r in real])),
            }
            rows.append(row)
            print(row, flush=True)
    rows = merged(rows, args.merge, args.k, args.profile)
    by_set = {}
    for dataset in args.sets:
        mine = [r for r in rows if r["set"] == dataset]
        by_set[dataset] = spearman([r["expected_image_auroc"] for r in mine],
                                   [r["real_image_auroc"] for r in mine])
    known = [v for v in by_set.values() if v is not None]
    return {"bench": "report_truth", "machine": common.machine_info(args.threads),
            "params": {"k": args.k, "sets": args.sets, "profile": args.profile,
                       "merged": [str(path) for path in args.merge],
                       "draws": args.draws}, "rows": rows,
            "spearman_by_set": by_set,
            "spearman_mean": float(np.mean(known)) if known else None,
            # The bound: the estimate within 5 points of the real rate on test/good.
            "auto": auto_choice(rows),
            "frr_error_max": max((abs(r["estimated_frr"] - r["real_frr"]) for r in rows),
                                 default=None)}


def merged(rows: list[dict[str, Any]], earlier: list[Path], k: int,
           profile: str) -> list[dict[str, Any]]:
    """``rows`` with the rows of ``earlier`` runs (same k and profile) of the configurations
    this run did not fit: one ranking over configurations reported in several runs (the
    report of an unchanged configuration is reproducible, its seeds being the evaluation's)."""
    seen = {(r["set"], r["candidate"]) for r in rows}
    out = list(rows)
    for path in earlier:
        data = json.loads(path.read_text())
        params = data["params"]
        if params["k"] != k or params["profile"] != profile:
            raise SystemExit(f"{path}: k = {params['k']}, profile {params['profile']}; this run "
                             f"is k = {k}, profile {profile}")
        for row in data["rows"]:
            if (row["set"], row["candidate"]) not in seen:
                seen.add((row["set"], row["candidate"]))
                out.append({**row, "from": str(path)})
    return out


def report(data: dict[str, Any]) -> str:
    table = common.markdown_table(
        ["set", "candidate", "expected image AUROC", "real image AUROC", "estimated FRR",
         "under line variations", "real FRR"],
        [[SHORT[r["set"]], r["candidate"], f"{r['expected_image_auroc']:.3f}",
          f"{r['real_image_auroc']:.3f}", f"{r['estimated_frr']:.3f}",
          common.fmt(r.get("variation_frr"), 3), f"{r['real_frr']:.3f}"]
         for r in data["rows"]])
    rho = ", ".join(f"{SHORT[s]} {'n/a' if v is None else f'{v:.2f}'}"
                    for s, v in data["spearman_by_set"].items())
    mean = data["spearman_mean"]
    params = data["params"]
    return (f"k = {params['k']}, profile {params['profile']}\n\n{table}\n\n"
            "Spearman (expected vs real image AUROC, "
            f"over candidates): {rho}; mean {'n/a' if mean is None else f'{mean:.2f}'}; "
            f"largest |estimated - real FRR| {common.fmt(data.get('frr_error_max'), 3)}\n\n"
            + "auto: " + "; ".join(
                f"{SHORT[d]} {a['chosen']} {a['real']:.3f} (default {a['default_real']:.3f}, "
                f"best {a['best_real']:.3f}, {'holds' if a['holds'] else 'fails'})"
                for d, a in data.get("auto", {}).items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--profile", default="E0", choices=list(PROFILES),
                        help="the synthetic defects (PROFILES)")
    parser.add_argument("--draws", type=int, default=3,
                        help="fit on the first this many of the evaluation's draws")
    parser.add_argument("--sets", nargs="+", default=list(common.SETS), choices=common.SETS)
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES),
                        help="only these (default: every one with real figures at k)")
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATASET.parent)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--merge", nargs="+", type=Path, default=[], metavar="JSON",
                        help="earlier runs' outputs (same k and profile) whose configurations "
                        "join this run's in the ranking")
    args = parser.parse_args(argv)
    data = run(args)
    print(report(data), flush=True)
    common.write_results(args.out or common.RESULTS_DIR
                         / f"bench_report_truth_k{args.k}_{args.profile}.json", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
