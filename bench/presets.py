"""Time per 512 x 512 image of each candidate configuration, side by side (BENCHMARKS.md,
"Presets"): the latency budget of the default is 6x the ``fast`` preset's, measured in the
same run.

Each candidate (``bench.candidates``) is fitted on the first k training images and compiled as
the service loads it; then rounds, in an order reversed every other round, time the JSON
verdict of one test image (``CompiledModel.inspect`` without a heatmap: what a line's gateway
asks for) at batch 1. Reported: median and p95 ms per image, and the ratio to the reference's
median (also the median of the per-round ratios, which shrugs off a slow round).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.candidates import CANDIDATES, LATENCY_BUDGET, REFERENCE


def fit_candidates(candidates: dict[str, dict[str, Any]], dataset: Path, k: int,
                   threads: int, quick: bool, models_dir: Path | None = None) -> dict[str, Any]:
    """Each of ``candidates`` (name -> variant settings) fitted on the first ``k`` training
    images, with the backbones of ``models_dir`` (default: the project's):
    ``{"fitted": FittedModel, "fit_s", "config"}`` by name."""
    from app.detector.config import DetectorConfig
    from app.detector.engine import Detector
    from app.detector.runtime import RuntimeOptions

    detector = Detector(models_dir or common.MODELS_DIR, RuntimeOptions(threads=threads))
    good = [common.decode(p) for p in common.train_paths(dataset, k)]
    fits: dict[str, Any] = {}
    for name, given in candidates.items():
        settings = dict(given)
        if quick:  # the smoke test: tiny inputs, every candidate's code path
            vit = DetectorConfig.from_dict(settings).backbone.startswith("vit")
            settings["resolution"] = 70 if vit else 64
        config = DetectorConfig.from_dict(settings)
        started = time.perf_counter()
        fitted = detector.fit(good, config, seed=0)
        fit_s = time.perf_counter() - started
        fits[name] = {"fitted": fitted, "fit_s": fit_s, "config": config.to_dict()}
        print(f"{name}: fitted in {fit_s:.1f} s ({config.backbone}, resolution "
              f"{config.resolution}, {config.resize}, {config.precision})", flush=True)
    return fits


def time_side_by_side(models: dict[str, Any], image: Any, rounds: int, per_round: int,
                      reference: str) -> dict[str, dict[str, Any]]:
    """Interleaved rounds of ``model.inspect(image)`` (order reversed every other round):
    each side's ms summary, and its ratio to ``reference`` (of the medians, and the median
    of the per-round ratios)."""
    names = list(models)
    for model in models.values():  # warm-up: first runs allocate
        model.inspect(image)
    times: dict[str, list[float]] = {name: [] for name in names}
    round_ratios: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        medians: dict[str, float] = {}
        for name in names if r % 2 == 0 else names[::-1]:
            taken = []
            for _ in range(per_round):
                started = time.perf_counter()
                models[name].inspect(image)
                taken.append((time.perf_counter() - started) * 1e3)
            times[name] += taken
            medians[name] = common.median(taken)
        for name in names:
            round_ratios[name].append(medians[name] / medians[reference])
    base = common.median(times[reference])
    return {name: {"ms": common.summary(times[name]),
                   "ratio_of_medians": round(common.median(times[name]) / base, 3),
                   "median_round_ratio": round(common.median(round_ratios[name]), 3)}
            for name in names}


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info(args.threads)
    names = args.candidates or list(CANDIDATES)
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    k = 2 if args.quick else args.shots
    rounds = args.rounds or (1 if args.quick else 8)
    per_round = args.per_round or (1 if args.quick else 4)
    image = common.decode(common.test_paths(args.dataset, 1)[0])
    from app.detector.runtime import CompiledModel, RuntimeOptions

    models = fit_candidates({n: CANDIDATES[n] for n in names}, args.dataset, k, args.threads,
                            args.quick)
    options = RuntimeOptions(threads=args.threads)
    compiled = {n: CompiledModel(models[n]["fitted"].onnx_bytes, options) for n in names}
    timed = time_side_by_side(compiled, image, rounds, per_round, REFERENCE)
    results = {
        name: {"settings": CANDIDATES[name], "config": models[name]["config"],
               "fit_s": round(models[name]["fit_s"], 2), **timed[name]}
        for name in names
    }
    return {"bench": "presets", "machine": machine,
            "params": {"dataset": str(args.dataset), "k": k, "rounds": rounds,
                       "per_round": per_round, "image": list(image.shape),
                       "reference": REFERENCE, "budget": LATENCY_BUDGET},
            "results": results}


def report(data: dict[str, Any]) -> str:
    params = data["params"]
    rows = []
    for name, r in data["results"].items():
        within = "yes" if r["median_round_ratio"] <= params["budget"] else "no"
        c = r["config"]
        rows.append([name, c["backbone"], c["resolution"] or "default", c["resize"],
                     common.fmt(r["ms"]["median"]), common.fmt(r["ms"]["p95"]),
                     f"{r['ratio_of_medians']:.2f}", f"{r['median_round_ratio']:.2f}", within])
    shape = params["image"]
    head = (f"Time per {shape[1]} x {shape[0]} image, JSON verdict at batch 1, "
            f"{data['machine']['threads']} threads, {params['rounds']} rounds x "
            f"{params['per_round']}, models fitted on {params['k']} images")
    return head + "\n\n" + common.markdown_table(
        ["candidate", "backbone", "resolution", "resize", "median ms", "p95 ms",
         f"x {params['reference']} (medians)", "median round ratio",
         f"within {params['budget']:g}x"], rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("candidates", nargs="*", metavar="CANDIDATE",
                        help=f"of {', '.join(CANDIDATES)} (default: all; {REFERENCE} always)")
    parser.add_argument("--shots", type=int, default=16, help="training images of each model")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (8)")
    parser.add_argument("--per-round", type=int, default=None,
                        help="images per candidate and round (4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(args.candidates) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; declared: {', '.join(CANDIDATES)}")
    return common.run_and_record("presets", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
