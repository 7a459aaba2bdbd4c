"""What defect regions and layouts cost a JSON verdict, side by side.

    python -m bench.regions_latency                              # this checkout only
    git worktree add /tmp/nominal-before 5ba2f66                 # the code before regions
    python -m bench.regions_latency --baseline /tmp/nominal-before
    python -m bench.regions_latency --quick                      # smoke test

Sides, each a call on one decoded image:

- ``before: score`` (with ``--baseline``): ``CompiledModel.score`` of the checkout given, on the
  model it fits itself (same images, seed and settings): the score-only path before regions;
- ``score``: ``CompiledModel.score`` of this checkout (its graph also computes the patch grid,
  the layout masks and the regions' scores);
- ``verdict``: ``CompiledModel.inspect``, the JSON verdict with its defect regions;
- ``verdict, layout``: the same model given three regions of interest and an ignore mask
  (``graph.with_layout``): one verdict per region.

Each checkout runs in its own worker subprocess, which fits the default model on the first
``--k`` training images, and the parent interleaves rounds (A, B, B, A, ...) over the same
test images (half good, half defects), so the machine's load hits every side alike. Figures:
medians of per-image medians over rounds, and the median of per-image ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import common

# The worker: only what every checkout has (Detector.fit, CompiledModel.score/inspect).
_WORKER = r"""
import json, sys, time
from pathlib import Path
from app.detector.config import DetectorConfig
from app.detector.engine import Detector
from app.detector.imaging import decode_image
from app.detector.runtime import CompiledModel, RuntimeOptions

args = json.loads(sys.argv[1])
decode = lambda p: decode_image(Path(p).read_bytes()).pixels
options = RuntimeOptions(threads=args["threads"])
detector = Detector(Path(args["models_dir"]), options)
fitted = detector.fit([decode(p) for p in args["train"]], DetectorConfig(), seed=0)
models = {"plain": CompiledModel(fitted.onnx_bytes, options)}
if args["layout"]:
    import onnx
    from app.detector.graph import with_layout
    from app.detector.layout import Layout
    graph = onnx.load_from_string(fitted.onnx_bytes)
    with_layout(graph, Layout.from_dict(args["layout"]))
    models["layout"] = CompiledModel(graph.SerializeToString(), options)
images = [decode(p) for p in args["test"]]
print(json.dumps({"ready": True, "threshold": fitted.threshold}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    model = models[cmd["model"]]
    call = model.score if cmd["call"] == "score" else model.inspect
    times, regions = [], 0
    for image in images:
        t0 = time.perf_counter()
        out = call(image)
        times.append(1000.0 * (time.perf_counter() - t0))
        regions += len(getattr(out, "regions", ()))
    print(json.dumps({"ms": times, "regions": regions}), flush=True)
"""

LAYOUT = {
    "regions_of_interest": [
        {"name": "left", "x": 0.0, "y": 0.0, "width": 0.33, "height": 1.0},
        {"name": "middle", "x": 0.33, "y": 0.0, "width": 0.34, "height": 1.0},
        {"name": "right", "x": 0.67, "y": 0.0, "width": 0.33, "height": 1.0},
    ],
    "ignore": [{"x": 0.0, "y": 0.9, "width": 0.3, "height": 0.1}],
}


class _Worker:
    def __init__(self, checkout: Path, args: argparse.Namespace, train: list[Path],
                 test: list[Path], layout: bool) -> None:
        env = {**common.subprocess_env(), "PYTHONPATH": str(checkout)}
        payload = {"threads": args.threads, "models_dir": str(common.MODELS_DIR),
                   "train": [str(p) for p in train], "test": [str(p) for p in test],
                   "layout": LAYOUT if layout else None}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(payload)],
                                     cwd=checkout, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.ready = self._recv()

    def _recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker exited with {self.proc.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def ask(self, model: str, call: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"model": model, "call": call}) + "\n")
        self.proc.stdin.flush()
        return self._recv()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _defect_paths(dataset: Path, n: int) -> list[Path]:
    folders = sorted(p for p in (dataset / "test").iterdir() if p.is_dir() and p.name != "good")
    pool = [path for folder in folders for path in common.images_in(folder)]
    return [pool[i % len(pool)] for i in range(n)] if pool else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of an earlier commit: its score-only path as 'before'")
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.images, args.rounds = 2, 4, 2

    half = args.images // 2
    test = common.test_paths(args.dataset, args.images - half) + _defect_paths(args.dataset, half)
    train = common.train_paths(args.dataset, args.k)
    current = _Worker(common.ROOT, args, train, test, layout=True)
    sides: dict[str, tuple[_Worker, str, str]] = {
        "score": (current, "plain", "score"),
        "verdict": (current, "plain", "inspect"),
        "verdict, layout": (current, "layout", "inspect"),
    }
    before = None
    if args.baseline is not None:
        before = _Worker(args.baseline.resolve(), args, train, test, layout=False)
        if abs(before.ready["threshold"] - current.ready["threshold"]) > 1e-3 * abs(
                current.ready["threshold"]):
            print(f"note: thresholds differ ({before.ready['threshold']:.4f} before, "
                  f"{current.ready['threshold']:.4f} now): the default settings changed")
        sides = {"before: score": (before, "plain", "score"), **sides}
    times: dict[str, list[list[float]]] = {name: [[] for _ in test] for name in sides}
    regions: dict[str, int] = {}
    for worker, model, call in sides.values():  # warm-up
        worker.ask(model, call)
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            worker, model, call = sides[name]
            answer = worker.ask(model, call)
            for i, ms in enumerate(answer["ms"]):
                times[name][i].append(ms)
            regions[name] = answer["regions"]
    current.close()
    if before is not None:
        before.close()

    per_image = {name: [common.median(t) for t in rows] for name, rows in times.items()}
    reference = "before: score" if before is not None else "score"
    ratios = {name: common.median([b / a for a, b in zip(per_image[reference], values,
                                                         strict=True)])
              for name, values in per_image.items()}
    rows = [[name, common.fmt(common.median(v), 2), common.fmt(common.percentile(v, 95), 2),
             f"{ratios[name]:.3f}", regions[name]] for name, v in per_image.items()]
    print(common.markdown_table(
        ["side", "median ms", "p95 ms", f"ratio to '{reference}'", "regions"], rows))
    common.write_results(args.out or common.default_out("regions_latency", args.quick), {
        "bench": "regions_latency",
        "machine": common.machine_info(args.threads),
        "dataset": str(args.dataset), "k": args.k, "images": len(test), "rounds": args.rounds,
        "baseline": str(args.baseline) if args.baseline else None,
        "baseline_commit": _commit(args.baseline) if args.baseline else None,
        "reference": reference,
        "ms": {name: common.summary(v) for name, v in per_image.items()},
        "ratio_median": {name: round(v, 4) for name, v in ratios.items()},
        "regions": regions,
    })
    return 0


def _commit(checkout: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, env=dict(os.environ)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
