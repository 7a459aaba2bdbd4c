"""What defect regions cost a JSON verdict: ``CompiledModel.inspect`` (score, patch grid,
regions: the service's path without ``?heatmap``) against ``CompiledModel.score`` (the score
alone, the path before regions), side by side.

    python -m bench.regions_latency              # bottle, k = 16, 40 images x 5 rounds
    python -m bench.regions_latency --quick      # smoke test

One process, one model (the default settings, fitted on the first 16 training images);
rounds alternate the two sides (A, B, B, A, ...) over decoded test images (good and defect
images, so that regions are found), so the machine's load hits both alike. Figures are
medians of per-call wall time; the ratio is the median of per-image ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench import common


def _defect_paths(dataset: Path, n: int) -> list[Path]:
    folders = sorted(p for p in (dataset / "test").iterdir() if p.is_dir() and p.name != "good")
    pool = [path for folder in folders for path in common.images_in(folder)]
    return [pool[i % len(pool)] for i in range(n)] if pool else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.images, args.rounds = 2, 4, 2

    from app.detector.runtime import CompiledModel, RuntimeOptions

    model_path, _ = common.cached_model(args.dataset, args.k, None, args.threads, seed=0)
    model = CompiledModel(model_path.read_bytes(), RuntimeOptions(threads=args.threads))
    half = args.images // 2
    paths = common.test_paths(args.dataset, args.images - half) + _defect_paths(
        args.dataset, half)
    images = [common.decode(p) for p in paths]
    sides = {"score only": model.score, "verdict with regions": model.inspect}
    times: dict[str, list[list[float]]] = {name: [[] for _ in images] for name in sides}
    regions_found = 0
    for image in images[:2]:  # warm-up
        for call in sides.values():
            call(image)
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            for i, image in enumerate(images):
                t0 = time.perf_counter()
                out: Any = sides[name](image)
                times[name][i].append(1000.0 * (time.perf_counter() - t0))
                if name == "verdict with regions" and r == 0:
                    regions_found += len(out.regions)
    per_image = {name: [common.median(t) for t in rows] for name, rows in times.items()}
    ratios = [b / a for a, b in zip(per_image["score only"], per_image["verdict with regions"],
                                    strict=True)]
    rows = [[name, common.fmt(common.median(v), 2), common.fmt(common.percentile(v, 95), 2)]
            for name, v in per_image.items()]
    print(common.markdown_table(["path", "median ms", "p95 ms"], rows))
    ratio = common.median(ratios)
    print(f"\nverdict with regions / score only, median of per-image ratios: {ratio:.3f}; "
          f"{regions_found} regions on {len(images)} images")
    common.write_results(args.out or common.default_out("regions_latency", args.quick), {
        "bench": "regions_latency",
        "machine": common.machine_info(args.threads),
        "dataset": str(args.dataset), "k": args.k, "images": len(images),
        "rounds": args.rounds, "regions_found": regions_found,
        "ms": {name: common.summary(v) for name, v in per_image.items()},
        "ratio_median": round(ratio, 4),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
