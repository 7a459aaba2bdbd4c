"""What ``"preset": "auto"`` costs against the fits of its candidates (BENCHMARKS.md, "Quality
report"): on each set, the first k training images fitted with ``auto`` and with each preset
it fits, in interleaved rounds (auto, then the presets; the order reversed every other
round), wall time of ``Detector.fit``; medians over the rounds.

    python -m bench.auto_cost [--sets mvtec_bottle_512 ...] [--shots 16] [--rounds 3]

auto fits its candidates one after another and keeps one, so it should cost their sum and
no more: the ratio ``auto / sum of the candidates`` says what the choosing itself adds.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench import common


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.detector.config import DetectorConfig
    from app.detector.engine import Detector
    from app.detector.runtime import RuntimeOptions

    machine = common.machine_info(args.threads)
    detector = Detector(common.MODELS_DIR, RuntimeOptions(threads=args.threads))
    sets = [common.DEFAULT_DATASET.name] if args.quick else args.sets
    k = 2 if args.quick else args.shots
    rounds = 1 if args.quick else args.rounds
    auto = DetectorConfig.from_dict({"preset": "auto"})
    results = []
    for name in sets:
        images = [common.decode(p) for p in common.train_paths(args.dataset.parent / name, k)]
        first = detector.fit(images[:1], auto, seed=0)  # every session built, not counted
        assert first.quality.choice is not None
        presets = [c["preset"] for c in first.quality.choice["candidates"]]
        times: dict[str, list[float]] = {"auto": [], **{p: [] for p in presets}}
        chosen = ""
        for n in range(rounds):
            order = ["auto", *presets]
            for label in (order if n % 2 == 0 else order[::-1]):
                config = auto if label == "auto" else DetectorConfig.from_dict({"preset": label})
                t0 = time.perf_counter()
                fitted = detector.fit(images, config, seed=0)
                times[label].append(time.perf_counter() - t0)
                if label == "auto" and fitted.quality.choice is not None:
                    chosen = fitted.quality.choice["chosen"]
        median = {label: common.median(values) for label, values in times.items()}
        total = sum(median[p] for p in presets)
        results.append({"set": name, "k": k, "chosen": chosen, "candidates": presets,
                        "median_s": median, "sum_of_candidates_s": total,
                        "ratio": median["auto"] / total, "runs_s": times})
        print(f"{name} k={k}: auto {median['auto']:.2f} s, candidates {total:.2f} s", flush=True)
    return {"bench": "auto_cost", "machine": machine,
            "params": {"shots": k, "sets": sets, "rounds": rounds}, "results": results}


def report(data: dict[str, Any]) -> str:
    rows = []
    for r in data["results"]:
        fits = ", ".join(f"{p} {r['median_s'][p]:.2f}" for p in r["candidates"])
        rows.append([r["set"], r["k"], fits, f"{r['sum_of_candidates_s']:.2f}",
                     f"{r['median_s']['auto']:.2f}", f"{r['ratio']:.2f}", r["chosen"]])
    return common.markdown_table(
        ["set", "k", "candidates' fits (median s)", "their sum (s)", "auto (median s)",
         "auto / sum", "auto kept"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--sets", nargs="+", default=list(common.SETS), choices=common.SETS)
    parser.add_argument("--shots", type=int, default=16, help="training images per fit")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)
    return common.run_and_record("auto_cost", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
