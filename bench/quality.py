"""The quality report's figures and cost on real data (BENCHMARKS.md, "Quality report"): the
default fitted on the first k training images of each set, its report, and the report's share
of the fit time.

    python -m bench.quality [--sets mvtec_bottle_512 ...] [--shots 1,16] [--repeats 3]

The share is ``quality_s / (total_s - quality_s)`` of one fit, the median over ``--repeats``
fits of the same images and seed in this process (the first fit of a set also builds its
sessions and is not counted). It moves with the machine's load: under a concurrent
evaluation the backbone's threads wait on each other and the report's 20 extractions slow
more than the coreset's arithmetic, so record it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench import common


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.detector.config import DetectorConfig
    from app.detector.engine import Detector
    from app.detector.runtime import RuntimeOptions

    machine = common.machine_info(args.threads)  # the load as the run starts
    detector = Detector(common.MODELS_DIR, RuntimeOptions(threads=args.threads))
    shots = [int(k) for k in args.shots.split(",")]
    sets = [common.DEFAULT_DATASET.name] if args.quick else args.sets
    repeats = 1 if args.quick else args.repeats
    results = []
    for name in sets:
        folder = args.dataset.parent / name
        for k in ([2] if args.quick else shots):
            images = [common.decode(p) for p in common.train_paths(folder, k)]
            detector.fit(images[:1], DetectorConfig(), seed=0)  # sessions built, not counted
            runs = []
            for _ in range(repeats):
                fitted = detector.fit(images, DetectorConfig(), seed=0)
                t = dict(fitted.timings)
                t["added"] = t["quality_s"] / (t["total_s"] - t["quality_s"])
                runs.append(t)
            median = {key: common.median([r[key] for r in runs]) for key in runs[0]}
            results.append({"set": name, "k": k, "quality": fitted.quality.to_dict(),
                            "quality_s": median["quality_s"], "fit_s": median["total_s"],
                            "added": median["added"],
                            "added_range": [min(r["added"] for r in runs),
                                            max(r["added"] for r in runs)],
                            "runs": runs})
            print(f"{name} k={k}: {fitted.quality.to_dict()}", flush=True)
    return {"bench": "quality", "machine": machine,
            "params": {"shots": shots, "sets": sets, "repeats": repeats}, "results": results}


def report(data: dict[str, Any]) -> str:
    rows = []
    for r in data["results"]:
        q = r["quality"]
        rows.append([r["set"], r["k"], common.fmt(q["expected_image_auroc"], 3),
                     common.fmt(q.get("expected_image_auroc_large"), 3),
                     common.fmt(q["expected_pixel_auroc"], 3),
                     common.fmt(q["estimated_false_reject_rate"], 3),
                     common.fmt(q.get("variation_false_reject_rate"), 3),
                     q["smallest_caught_px"] or "-", f"{r['quality_s']:.2f}",
                     _share(r), len(q["warnings"])])
    return common.markdown_table(
        ["set", "k", "expected image AUROC", "the same, large defects", "expected pixel AUROC",
         "estimated FRR", "the same, line variations",
         "smallest caught px", "report s", "added to the fit (median, range)", "warnings"], rows)


def _share(result: dict[str, Any]) -> str:
    low, high = result.get("added_range", (result["added"], result["added"]))
    spread = f" ({100 * low:.0f}-{100 * high:.0f})" if high > low else ""
    return f"{100 * result['added']:.0f} %{spread}"


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--sets", nargs="+", default=list(common.SETS), choices=common.SETS)
    parser.add_argument("--shots", default="1,16", help="comma-separated k values")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fits per set and k; the report's share is their median")
    args = parser.parse_args(argv)
    return common.run_and_record("quality", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
