"""Engine speed: the shipped single-file ONNX model against the same maths in eager PyTorch.

    python -m bench.engine                      # full run, ~1 min on 2 busy cores
    python -m bench.engine --threads 1          # both sides single-threaded
    python -m bench.engine --omp-passive        # torch's idle OpenMP threads sleep too
    python -m bench.engine --quick              # smoke test

ONNX side: ``CompiledModel`` (the service's object) on the model fitted on the first 16
training images at resolution 256 (the ``fast`` preset's settings, EfficientNet-Lite0, the
backbone the PyTorch reference implements; ``--preset`` times another, without it), fed a
decoded 512 x 512 test image; ``map`` = score + anomaly map (``CompiledModel.run``),
``score`` = score only (the service's path without ``?heatmap``; ``CompiledModel`` then skips
the map part of the graph).
Batch 8 = 8 sequential calls (the model takes one image).

PyTorch side, what anomalib's PatchCore torch model does, on the same input and bank:
reference ``efficientnet_lite_pytorch`` Lite0 (same .pth, eval mode, static SAME padding for
this input size, only the blocks up to the stride-16 stage) -> ``AvgPool2d(3, 1, 1)`` ->
bilinear upsample -> concat -> ``|x|^2 - 2 x.y + |y|^2`` against the bank -> min -> max score,
``F.interpolate`` of the patch scores + Gaussian blur -> anomaly map. The resize, the
normalisation, the mirrored border and the blur follow the ONNX graph exactly (the average
pool excludes padding, as the graph does), so both sides must agree on the score: the run
checks it. Batch 8 is one batched forward.

Each side runs in its own subprocess (so its peak RSS is its own), and the parent interleaves
rounds (ONNX, torch, torch, ONNX, ...): drift in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import common

BATCH = 8


# --------------------------------------------------------------------------- workers


class _OnnxSide:
    def __init__(self, model_path: Path, images: list[Any], threads: int) -> None:
        from app.detector.runtime import CompiledModel, RuntimeOptions

        self.model = CompiledModel(model_path.read_bytes(), RuntimeOptions(threads=threads))
        self.images = images

    def call(self, mode: str, batch: int) -> None:
        fn = self.model.run if mode == "map" else self.model.score
        for image in self.images[:batch]:
            fn(image)

    def score(self) -> tuple[float, float]:
        score, anomaly_map = self.model.run(self.images[0])
        return score, float(anomaly_map.max())


class _TorchSide:
    """The eager PyTorch reference (see the module docstring)."""

    def __init__(self, model_path: Path, images: list[Any], threads: int) -> None:
        import numpy as np
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        from app.detector.backbones import get_backbone
        from app.detector.backbones.efficientnet_lite import efficientnet_lite0_weights_path
        from app.detector.engine import bank_from_model, plan_from_model
        from app.detector.runtime import METADATA_PREFIX

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        self.torch = torch
        data = model_path.read_bytes()
        import onnx

        props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        config = json.loads(props[METADATA_PREFIX + "config"])
        if config["backbone"] != "efficientnet_lite0":
            raise SystemExit("the torch reference is EfficientNet-Lite0 only")
        spec = get_backbone(config["backbone"])
        plan = plan_from_model(data)
        height, width = images[0].shape[:2]
        if any(im.shape != images[0].shape for im in images):
            raise SystemExit("the torch side batches images of one size")
        self.image_hw = (height, width)
        self.processed_hw = processed_size(plan, height, width, spec.size_multiple)
        self.pad = plan.border * spec.size_multiple
        self.crop = self.pad // spec.patch_stride
        self.mean, self.std = spec.mean[0], spec.std[0]
        self.top_fraction = float(config["score_top_fraction"])
        if self.top_fraction > 0:
            raise SystemExit("the torch reference implements the max score only")
        padded = (self.processed_hw[0] + 2 * self.pad, self.processed_hw[1] + 2 * self.pad)
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(efficientnet_lite0_weights_path()),
            image_size=padded).eval()
        # Same layers as the ONNX backbone: stem + blocks 0-10 (stride-16, 112-channel stage).
        model._blocks = model._blocks[:11]
        for unused in ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc"):
            if hasattr(model, unused):
                setattr(model, unused, torch.nn.Identity())
        self.model = model
        self.taps = (4, 10)  # last block of the stride-8 (40 ch) and stride-16 (112 ch) stages
        self.pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        bank = bank_from_model(data)
        self.bank = torch.from_numpy(np.array(bank, dtype=np.float32))
        self.bank_sq = (self.bank.double() ** 2).sum(1).float()
        sigma = float(config["blur_sigma"])
        self.kernel = gaussian_kernel(torch, sigma) if sigma > 0 else None
        self.batch1 = torch.from_numpy(np.ascontiguousarray(images[0]))[None]
        self.batches = {len(images): torch.from_numpy(np.stack(images))}

    def forward(self, batch: Any) -> tuple[Any, Any]:
        torch = self.torch
        functional = torch.nn.functional
        x = batch.permute(0, 3, 1, 2).float()
        x = functional.interpolate(x, size=self.processed_hw, mode="bilinear",
                                   align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        if self.pad:
            x = functional.pad(x, (self.pad,) * 4, mode="reflect")
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(x)))
        fine = None
        for index, block in enumerate(m._blocks):
            x = block(x)
            if index == self.taps[0]:
                fine = x
        assert fine is not None
        fine, coarse = self.pool(fine), self.pool(x)
        coarse = functional.interpolate(coarse, size=fine.shape[-2:], mode="bilinear",
                                        align_corners=False)
        features = torch.cat([fine, coarse], 1)
        if self.crop:
            c = self.crop
            features = features[:, :, c:-c, c:-c]
        n, channels, h, w = features.shape
        embedding = features.permute(0, 2, 3, 1).reshape(-1, channels)
        # anomalib's euclidean_dist: |x|^2 - 2 x.y + |y|^2, clamped, square root; then min.
        d2 = ((embedding * embedding).sum(1, keepdim=True) - 2.0 * embedding @ self.bank.T
              + self.bank_sq[None, :])
        patch_scores = d2.clamp_min(0).sqrt().min(dim=1).values.reshape(n, 1, h, w)
        score = patch_scores.amax(dim=(1, 2, 3))
        anomaly = functional.interpolate(patch_scores, size=self.processed_hw, mode="bilinear",
                                         align_corners=False)
        if self.kernel is not None:
            r = len(self.kernel) // 2
            anomaly = functional.pad(anomaly, (r, r, r, r), mode="replicate")
            anomaly = functional.conv2d(anomaly, self.kernel.view(1, 1, -1, 1))
            anomaly = functional.conv2d(anomaly, self.kernel.view(1, 1, 1, -1))
        anomaly = functional.interpolate(anomaly, size=self.image_hw, mode="bilinear",
                                         align_corners=False)
        return score, anomaly[:, 0]

    def call(self, mode: str, batch: int) -> None:
        with self.torch.inference_mode():
            self.forward(self.batch1 if batch == 1 else self.batches[batch])

    def score(self) -> tuple[float, float]:
        with self.torch.inference_mode():
            score, anomaly = self.forward(self.batch1)
        return float(score[0]), float(anomaly.max())


def processed_size(plan: Any, height: int, width: int, multiple: int) -> tuple[int, int]:
    """The network input size the ONNX graph computes (``graph._target_size``), in float32."""
    import numpy as np

    f32 = np.float32
    if plan.policy == "square":
        side = max(4, round(plan.resolution / multiple)) * multiple
        return side, side
    hw = np.array([height, width], dtype=f32)
    if plan.policy == "shorter_side":
        scale = f32(plan.resolution) / hw.min()
    else:
        scale = f32(plan.resolution / float(plan.reference_side or 1.0))
    scale = min(scale, f32(float(plan.resolution) * plan.max_aspect) / hw.max())
    steps = np.maximum(np.round(hw * scale / f32(multiple)), f32(4.0))
    out = (steps * f32(multiple)).astype(np.int64)
    return int(out[0]), int(out[1])


def gaussian_kernel(torch: Any, sigma: float) -> Any:
    """1-D Gaussian, radius ``int(4 sigma + 0.5)`` (PatchCore's and the graph's)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def worker(args: argparse.Namespace) -> int:
    """Line protocol on the real stdout; everything else printed goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")

    started = time.perf_counter()
    images = [common.decode(Path(p)) for p in args.images]
    side_cls = _TorchSide if args.worker == "torch" else _OnnxSide
    side = side_cls(Path(args.model), images, args.threads)
    load_s = time.perf_counter() - started
    rss_loaded = common.proc_status()
    t0 = time.perf_counter()
    for batch in sorted({1, len(images)}):  # warm-up: first-call allocations and layouts
        for _ in range(2):
            side.call("map", batch)
    side.call("score", 1)
    send({"ready": True, "load_s": round(load_s, 3),
          "warmup_s": round(time.perf_counter() - t0, 3),
          "rss_after_load_mib": rss_loaded.get("vmrss_mib")})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "time":
            seconds = []
            for _ in range(cmd["n"]):
                t0 = time.perf_counter()
                side.call(cmd["mode"], cmd["batch"])
                seconds.append(time.perf_counter() - t0)
            send({"seconds": seconds})
        elif cmd["op"] == "score":
            score, map_max = side.score()
            send({"score": score, "map_max": map_max})
        elif cmd["op"] == "quit":
            send({"peak_rss_mib": common.peak_rss_mib(), **common.proc_status()})
            return 0
    return 1


def profile_worker(args: argparse.Namespace) -> int:
    """onnxruntime's profiler on the model: kernel time per op type and the top nodes."""
    import collections
    import tempfile

    import onnxruntime as ort

    from app.detector.runtime import RuntimeOptions

    image = common.decode(Path(args.images[0]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # As RuntimeOptions sets them (idle threads sleep unless it says otherwise).
    spinning = getattr(RuntimeOptions(), "spinning", True)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.enable_profiling = True
    tmp = tempfile.mkdtemp(prefix="nominal-ortprof-")
    options.profile_file_prefix = os.path.join(tmp, "profile")
    session = ort.InferenceSession(Path(args.model).read_bytes(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    outputs = ["score", "anomaly_map"]
    warmup = 2
    for _ in range(warmup + args.profile_runs):
        session.run(outputs, {"image": image})
    events = json.loads(Path(session.end_profiling()).read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    kept_runs = runs[warmup:]
    start = kept_runs[0]["ts"] if kept_runs else 0
    nodes = [e for e in nodes if e["ts"] >= start]
    by_type: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for e in nodes:
        by_type[e["args"]["op_name"]] += e["dur"]
        by_node[e["name"][: -len("_kernel_time")]] += e["dur"]
    total = sum(by_type.values()) or 1
    n = max(1, len(kept_runs))
    backbone = sum(v for k, v in by_node.items() if k.startswith("backbone/"))
    result = {
        "runs": len(kept_runs),
        "run_ms_median": common.median([e["dur"] / 1000 for e in kept_runs]),
        "kernel_ms_per_run": round(total / n / 1000, 2),
        "backbone_share": round(backbone / total, 3),
        "by_op_type": [{"op": k, "ms": round(v / n / 1000, 2), "share": round(v / total, 3)}
                       for k, v in by_type.most_common(12)],
        "top_nodes": [{"node": k, "ms": round(v / n / 1000, 2), "share": round(v / total, 3)}
                      for k, v in by_node.most_common(10)],
    }
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- parent


class Side:
    """A worker subprocess driven over its stdin/stdout."""

    def __init__(self, name: str, args: argparse.Namespace, model: Path, images: list[Path]
                 ) -> None:
        self.name = name
        cmd = common.python_cmd("bench.engine", "--worker", name, "--model", str(model),
                                "--threads", str(args.threads), "--images",
                                *[str(p) for p in images])
        env = common.subprocess_env()
        if name == "torch" and args.omp_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"  # idle OpenMP threads sleep instead of spinning
        self.proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self._recv()

    def _recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"{self.name} worker died ({self.proc.returncode}):\n{err[-4000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._recv()

    def close(self) -> dict[str, Any]:
        result = self.ask(op="quit")
        self.proc.wait(timeout=60)
        return result


def torch_missing() -> str | None:
    missing = [m for m in ("torch", "efficientnet_lite_pytorch") if importlib.util.find_spec(m)
               is None]
    if missing:
        return (f"{' and '.join(missing)} not installed: the eager PyTorch reference is skipped "
                "(install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 to compare)")
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info(args.threads)
    shots, resolution = (2, 128) if args.quick else (args.shots, args.resolution)
    rounds = args.rounds or (1 if args.quick else 8)
    per_round = args.per_round or (2 if args.quick else 5)
    batch = 2 if args.quick else BATCH
    images = common.test_paths(args.dataset, batch)

    print(f"fitting the model on {shots} images at resolution {resolution} ...", flush=True)
    model_path, fit = common.cached_model(args.dataset, shots, resolution, args.threads, args.seed,
                                          preset=args.preset)
    model_bytes = model_path.stat().st_size
    # The same model with an 8-bit backbone (precision=int8), measured in the same rounds.
    int8_path, int8_fit = common.cached_model(args.dataset, shots, resolution, args.threads,
                                              args.seed, precision="int8", preset=args.preset)
    from app.detector.engine import bank_from_model

    bank_shape = list(bank_from_model(model_path.read_bytes()).shape)
    backbone = common.detector_config(resolution, preset=args.preset).backbone
    reason = None if not args.no_torch else "--no-torch given"
    if reason is None and backbone != "efficientnet_lite0":
        reason = (f"the PyTorch reference is EfficientNet-Lite0 only (preset {args.preset}: "
                  f"{backbone})")
    reason = reason or torch_missing()
    if reason:
        print(f"NOTE: {reason}", flush=True)

    sides: dict[str, Side] = {"onnx": Side("onnx", args, model_path, images),
                              "onnx-int8": Side("onnx-int8", args, int8_path, images)}
    if reason is None:
        sides["torch"] = Side("torch", args, model_path, images)
    scores = {name: side.ask(op="score") for name, side in sides.items()}

    # Cases: (side, mode, batch). Interleaved by round, order reversed every other round.
    cases = [(side, mode, b) for side in ("onnx", "onnx-int8")
             for mode, b in (("map", 1), ("score", 1), ("map", batch))]
    if "torch" in sides:
        cases += [("torch", "map", 1), ("torch", "map", batch)]
    timings: dict[tuple[str, str, int], list[float]] = {c: [] for c in cases}
    per_round_ips: dict[tuple[str, str, int], list[float]] = {c: [] for c in cases}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            for case in [c for c in cases if c[0] == name]:
                _, mode, b = case
                n = per_round if b == 1 else max(1, per_round // 4)
                seconds = sides[name].ask(op="time", mode=mode, batch=b, n=n)["seconds"]
                timings[case] += seconds
                per_round_ips[case].append(b / common.median(seconds))
        print(f"  round {r + 1}/{rounds} done", flush=True)
    finals = {name: side.close() for name, side in sides.items()}

    print("profiling the ONNX model (onnxruntime SessionOptions.enable_profiling) ...", flush=True)
    profile, int8_profile = (common.run_json(common.python_cmd(
        "bench.engine", "--worker", "onnx-profile", "--model", str(path), "--threads",
        str(args.threads), "--profile-runs", str(2 if args.quick else 10), "--images",
        str(images[0])), timeout_s=600) for path in (model_path, int8_path))

    results: dict[str, Any] = {}
    for case in cases:
        name, mode, b = case
        ms = [s * 1000 / b for s in timings[case]]
        med = common.median(ms)
        results[f"{name}/{mode}/b{b}"] = {
            "side": name, "mode": mode, "batch": b, "ms_per_image": common.summary(ms),
            "images_per_s": round(1000 / med, 2),
        }
    ratios: dict[str, Any] = {}
    if "torch" in sides:
        for side in ("onnx", "onnx-int8"):
            for b in (1, batch):
                onnx_case, torch_case = (side, "map", b), ("torch", "map", b)
                of_medians = (common.median(timings[torch_case])
                              / common.median(timings[onnx_case]))
                paired = [o / t for o, t in zip(per_round_ips[onnx_case],
                                                per_round_ips[torch_case], strict=True)]
                ratios[f"{side}/b{b}"] = {
                    "side": side, "batch": b,
                    "onnx_over_torch_images_per_s": round(of_medians, 2),
                    "median_of_per_round_ratios": round(common.median(paired), 2),
                    "per_round": [round(x, 2) for x in paired]}
    parity = None
    if "torch" in scores:
        o, t = scores["onnx"]["score"], scores["torch"]["score"]
        parity = {"onnx_score": o, "torch_score": t, "rel_diff": abs(o - t) / max(abs(t), 1e-12),
                  "onnx_map_max": scores["onnx"]["map_max"],
                  "torch_map_max": scores["torch"]["map_max"],
                  "int8_score": scores["onnx-int8"]["score"]}
    return {
        "bench": "engine",
        "machine": machine,
        "params": {"dataset": str(args.dataset), "shots": shots, "resolution": resolution,
                   "seed": args.seed, "threads": args.threads, "rounds": rounds,
                   "torch_omp_wait_policy": "PASSIVE" if args.omp_passive else "default",
                   "per_round": per_round, "batch": batch, "quick": args.quick,
                   "test_images": [p.name for p in images],
                   "image_hw": list(common.decode(images[0]).shape[:2])},
        "model": {"preset": args.preset, "backbone": backbone,
                  "onnx_bytes": model_bytes, "onnx_mib": round(model_bytes / common.MiB, 2),
                  "bank_shape": bank_shape, "fit": fit,
                  "int8_onnx_bytes": int8_path.stat().st_size, "int8_fit": int8_fit},
        "torch_skipped": reason,
        "results": results,
        "ratios": ratios,
        "parity": parity,
        "workers": {name: {**sides[name].ready, **finals[name]} for name in sides},
        "onnx_profile": profile,
        "onnx_int8_profile": int8_profile,
    }


def report(data: dict[str, Any]) -> str:
    p = data["params"]
    rows = []
    for r in data["results"].values():
        ms = r["ms_per_image"]
        rows.append([r["side"], r["mode"], r["batch"], common.fmt(ms["median"]),
                     common.fmt(ms["p95"]), common.fmt(r["images_per_s"], 2), ms["n"]])
    out = [f"### Engine: {p['shots']}-shot model, resolution {p['resolution']}, bank "
           f"{data['model']['bank_shape']}, {p['threads']} threads",
           common.markdown_table(["side", "output", "batch", "ms/image (median)", "p95",
                                  "images/s", "n"], rows)]
    if data["ratios"]:
        out.append("")
        out.append(common.markdown_table(
            ["ONNX side", "batch", "ONNX / torch images/s (ratio of medians)",
             "median of per-round ratios"],
            [[v["side"], v["batch"], v["onnx_over_torch_images_per_s"],
              v["median_of_per_round_ratios"]] for v in data["ratios"].values()]))
    else:
        out.append(f"\ntorch side skipped: {data['torch_skipped']}")
    mem_rows = [[name, common.fmt(w.get("rss_after_load_mib")), common.fmt(w["peak_rss_mib"]),
                 common.fmt(w["load_s"], 2)] for name, w in data["workers"].items()]
    out += ["", f"Model file: {data['model']['onnx_mib']} MiB ({data['model']['onnx_bytes']} "
                "bytes)",
            common.markdown_table(["side", "RSS after load (MiB)", "peak RSS (MiB)", "load s"],
                                  mem_rows)]
    if data["parity"]:
        par = data["parity"]
        out.append(f"\nScore parity: ONNX {par['onnx_score']:.5f} vs torch "
                   f"{par['torch_score']:.5f} (relative difference {par['rel_diff']:.1e}); "
                   f"int8 backbone: {par['int8_score']:.5f}")
    for label, key in (("float32", "onnx_profile"), ("int8", "onnx_int8_profile")):
        prof = data[key]
        out.append(f"\nonnxruntime profile, {label}: {prof['kernel_ms_per_run']} ms of kernels "
                   f"per run, backbone {prof['backbone_share']:.0%}; by op type: "
                   + ", ".join(f"{o['op']} {o['share']:.0%}" for o in prof["by_op_type"][:6]))
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--shots", type=int, default=16, help="training images of the model")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (8)")
    parser.add_argument("--per-round", type=int, default=None,
                        help="batch-1 calls per side per round (5); batch-8 calls: a quarter")
    parser.add_argument("--preset", default="fast",
                        help="the preset whose settings the model takes (fast; the PyTorch "
                             "reference runs for EfficientNet-Lite0 models only)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--omp-passive", action="store_true",
                        help="run the torch side with OMP_WAIT_POLICY=PASSIVE (its idle OpenMP "
                             "threads sleep, as onnxruntime's do with spinning off)")
    # Worker mode (internal).
    parser.add_argument("--worker", choices=["onnx", "onnx-int8", "torch", "onnx-profile"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--images", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--profile-runs", type=int, default=10, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker == "onnx-profile":
        return profile_worker(args)
    if args.worker:
        return worker(args)
    data = run(args)
    print()
    print(report(data))
    common.write_results(args.out or common.default_out("engine", args.quick), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
