"""The greedy coreset with and without triangle-inequality pruning (BENCHMARKS.md, "Training").

    python -m bench.coreset [--sets mvtec_bottle_512 ...] [--shots 16] [--rounds 3]
        [--set variation_views=2]

On each set the first k training images go through the default configuration's feature
extractor (as ``Detector.fit`` builds its bank, without augmentation, ignore masks or the
cap of ``MAX_CORESET_CANDIDATES`` patches, which none of the four sets' 16 images reach), then
``greedy_coreset`` runs on those patches with ``prune`` on and off in interleaved rounds
(order reversed every other round), at the bank size the fit would choose. Reported: the
median seconds of each, their ratio, and whether both chose the same indices (they must).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from bench import common


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.detector.config import DetectorConfig
    from app.detector.engine import Detector, bank_size, resize_plan
    from app.detector.memory import greedy_coreset
    from app.detector.runtime import RuntimeOptions
    from app.detector.variations import variation_views
    from app.evaluation.evaluate import parse_settings

    machine = common.machine_info(args.threads)
    detector = Detector(common.MODELS_DIR, RuntimeOptions(threads=args.threads))
    config = DetectorConfig.from_dict(parse_settings(args.set))
    sets = [common.DEFAULT_DATASET.name] if args.quick else args.sets
    k = 2 if args.quick else args.shots
    rounds = 1 if args.quick else args.rounds
    results = []
    for name in sets:
        images = [common.decode(p) for p in common.train_paths(args.dataset.parent / name, k)]
        extractor = detector.extractor(config, resize_plan(config, images))
        views = [view for i, image in enumerate(images)
                 for view in [image, *variation_views(image, config.variation_views, seed=0,
                                                      stream=i + 1)]]
        patches = np.concatenate([extractor(view).patches for view in views])
        size = bank_size(len(patches), config)
        times: dict[str, list[float]] = {"pruned": [], "unpruned": []}
        chosen: dict[str, np.ndarray] = {}
        for n in range(rounds):
            for label in (["pruned", "unpruned"] if n % 2 == 0 else ["unpruned", "pruned"]):
                t0 = time.perf_counter()
                chosen[label] = greedy_coreset(patches, size, seed=0, prune=label == "pruned")
                times[label].append(time.perf_counter() - t0)
        median = {label: common.median(values) for label, values in times.items()}
        results.append({
            "set": name, "k": k, "patches": len(patches), "bank": size, "median_s": median,
            "speedup": median["unpruned"] / median["pruned"], "runs_s": times,
            "same_selection": bool(np.array_equal(chosen["pruned"], chosen["unpruned"])),
        })
        print(f"{name} k={k}: {len(patches)} patches -> {size}: pruned {median['pruned']:.2f} s,"
              f" unpruned {median['unpruned']:.2f} s", flush=True)
    return {"bench": "coreset", "machine": machine,
            "params": {"shots": k, "sets": sets, "rounds": rounds, "settings": args.set},
            "results": results}


def report(data: dict[str, Any]) -> str:
    rows = [[r["set"], r["k"], r["patches"], r["bank"], f"{r['median_s']['unpruned']:.2f}",
             f"{r['median_s']['pruned']:.2f}", f"{r['speedup']:.2f}x",
             "yes" if r["same_selection"] else "NO"] for r in data["results"]]
    return common.markdown_table(
        ["set", "k", "patches", "bank", "unpruned (median s)", "pruned (median s)", "speed-up",
         "same selection"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--sets", nargs="+", default=list(common.SETS), choices=common.SETS)
    parser.add_argument("--shots", type=int, default=16, help="training images")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a detector setting (repeatable), e.g. variation_views=2")
    args = parser.parse_args(argv)
    return common.run_and_record("coreset", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
