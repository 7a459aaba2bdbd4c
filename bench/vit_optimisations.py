"""The ViT path's speed changes, side by side, with what they do to the scores (BENCHMARKS.md,
"ViT optimisations").

For ViT-S blocks 6+9 at 224 (the screening's C1) and at 336: the float32 model and one
fitted with 8-bit arithmetic (``precision: int8``, the matrix products of the ViT blocks
included), and with ``--before DIR`` the float32 models fitted on the backbone files of DIR
(a change to how the backbones are built, side by side with the files before it), each timed
in the same interleaved rounds as the ``fast`` preset (``bench.presets.time_side_by_side``).
Then every side scores the whole test split: image AUROC, and the largest relative score
change against the float32 model of the same configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.presets import fit_candidates, time_side_by_side

CONFIGS: dict[str, dict[str, Any]] = {
    "fast": {"preset": "fast"},
    "vit224": {"backbone": "vit_small_l6_l9"},
    "vit224-int8": {"backbone": "vit_small_l6_l9", "precision": "int8"},
    "vit336": {"backbone": "vit_small_l6_l9", "resolution": 336},
    "vit336-int8": {"backbone": "vit_small_l6_l9", "resolution": 336, "precision": "int8"},
}


def test_split(dataset: Any, limit: int | None) -> tuple[list[Any], np.ndarray]:
    items = []
    for folder in sorted((dataset / "test").iterdir()):
        if folder.is_dir():
            items += [(p, folder.name != "good") for p in common.images_in(folder)]
    items = items[:limit] if limit else items
    return [common.decode(p) for p, _ in items], np.array([bad for _, bad in items])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.detector.runtime import CompiledModel, RuntimeOptions
    from app.evaluation.metrics import auroc

    machine = common.machine_info(args.threads)
    k = 2 if args.quick else args.shots
    configs = dict(CONFIGS)
    if args.quick:
        configs = {n: c for n, c in configs.items() if "336" not in n}
    fits = fit_candidates(configs, args.dataset, k, args.threads, args.quick)
    options = RuntimeOptions(threads=args.threads)
    sides = {name: CompiledModel(fits[name]["fitted"].onnx_bytes, options) for name in configs}
    if args.before:
        float32 = {n: c for n, c in configs.items() if n != "fast" and "int8" not in n}
        before = fit_candidates(float32, args.dataset, k, args.threads, args.quick,
                                models_dir=args.before)
        for name, fit in before.items():
            fits[f"{name} before"] = fit
            sides[f"{name} before"] = CompiledModel(fit["fitted"].onnx_bytes, options)
    image = common.decode(common.test_paths(args.dataset, 1)[0])
    rounds = args.rounds or (1 if args.quick else 8)
    per_round = args.per_round or (1 if args.quick else 4)
    timed = time_side_by_side(sides, image, rounds, per_round, "fast")

    images, bad = test_split(args.dataset, 4 if args.quick else args.max_test)
    scores = {n: np.array([m.score(x) for x in images]) for n, m in sides.items()}
    results: dict[str, Any] = {}
    for name in sides:
        reference = scores[name.removesuffix("-int8").removesuffix(" before")]
        results[name] = {
            **timed[name], "config": fits[name]["config"],
            "image_auroc": round(float(auroc(scores[name], bad)), 4) if bad.any() and
            not bad.all() else None,
            "max_rel_score_change": float(np.max(np.abs(scores[name] - reference)
                                                 / np.abs(reference))),
        }
    return {"bench": "vit_optimisations", "machine": machine,
            "params": {"dataset": str(args.dataset), "k": k, "rounds": rounds,
                       "per_round": per_round, "test_images": len(images),
                       "image": list(image.shape)},
            "results": results}


def report(data: dict[str, Any]) -> str:
    rows = [[name, common.fmt(r["ms"]["median"]), f"{r['median_round_ratio']:.2f}",
             common.fmt(r["image_auroc"], 4), f"{r['max_rel_score_change']:.1e}"]
            for name, r in data["results"].items()]
    p = data["params"]
    return (f"Models fitted on {p['k']} images; time per {p['image'][1]} x {p['image'][0]} "
            f"image (JSON verdict, batch 1, {data['machine']['threads']} threads, "
            f"{p['rounds']} rounds x {p['per_round']}); scores over {p['test_images']} test "
            "images\n\n" + common.markdown_table(
                ["side", "median ms", "x fast", "image AUROC",
                 "largest score change vs float32"], rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--shots", type=int, default=16, help="training images of each model")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (8)")
    parser.add_argument("--per-round", type=int, default=None, help="images per side, round")
    parser.add_argument("--before", type=Path, default=None, metavar="DIR",
                        help="also fit the float32 models on the backbone files in DIR")
    parser.add_argument("--max-test", type=int, default=None,
                        help="score at most this many test images (default: the whole split)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run_and_record("vit_optimisations", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
