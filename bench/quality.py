"""The quality report's figures and cost on real data (BENCHMARKS.md, "Quality report"): the
default fitted on the first k training images of each set, its report, and the report's share
of the fit time.

    python -m bench.quality [--sets mvtec_bottle_512 ...] [--shots 1,16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import common

SETS = ("mvtec_bottle_512", "magnetic_tile", "mvtec_screw_512", "bsdata_pitting")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.detector.config import DetectorConfig
    from app.detector.engine import Detector
    from app.detector.runtime import RuntimeOptions

    detector = Detector(common.MODELS_DIR, RuntimeOptions(threads=args.threads))
    shots = [int(k) for k in args.shots.split(",")]
    sets = [common.DEFAULT_DATASET.name] if args.quick else args.sets
    results = []
    for name in sets:
        folder = args.dataset.parent / name
        for k in ([2] if args.quick else shots):
            images = [common.decode(p) for p in common.train_paths(folder, k)]
            fitted = detector.fit(images, DetectorConfig(), seed=0)
            t = fitted.timings
            results.append({"set": name, "k": k, "quality": fitted.quality.to_dict(),
                            "quality_s": t["quality_s"], "fit_s": t["total_s"],
                            "added": t["quality_s"] / (t["total_s"] - t["quality_s"])})
            print(f"{name} k={k}: {fitted.quality.to_dict()}", flush=True)
    return {"bench": "quality", "machine": common.machine_info(args.threads),
            "params": {"shots": shots, "sets": sets}, "results": results}


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
                     f"{100 * r['added']:.0f} %", len(q["warnings"])])
    return common.markdown_table(
        ["set", "k", "expected image AUROC", "the same, large defects", "expected pixel AUROC",
         "estimated FRR", "the same, line variations",
         "smallest caught px", "report s", "added to the fit", "warnings"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--shots", default="1,16", help="comma-separated k values")
    args = parser.parse_args(argv)
    args.dataset = Path(args.dataset)
    data = run(args)
    print(report(data), flush=True)
    common.write_results(args.out or common.default_out("quality", args.quick), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
