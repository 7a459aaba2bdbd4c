"""Scaling: inspect latency against memory-bank size, and process RSS against loaded variants.

    python -m bench.scaling                     # ~1-2 min on 2 cores (+1 min to fit k = 200)
    python -m bench.scaling --ks 1,4,16 --variants 1,10
    python -m bench.scaling --quick             # smoke test

Latency: models fitted on k = 1, 4, 16, 64, 200 good images (banks of k x 1024 patches up to
``min_bank_size`` 4096, then 10 % of the patches, capped at ``max_bank_size`` 16384) are
loaded as ``CompiledModel`` objects in one worker process and timed in interleaved rounds on a
decoded 512 x 512 test image: ``score`` (what ``/inspect`` runs without a heatmap) and ``map``
(score + anomaly map). Models come from the bench cache when ``bench.training`` left them
there, else they are fitted first (k = 200 takes minutes).

Memory: one fresh process per count holds 1, 10 or 50 ``CompiledModel`` objects of a 4-image
model (one per variant, as the service's model cache does), scores one image with each, and
reports its RSS against its RSS before the first model was loaded, with onnxruntime's CPU
arena shared by the process's sessions (the default) and with one arena per session (before).
The service keeps at most ``NOMINAL_MODEL_CACHE_SIZE`` (default 16) models loaded.

Runtime options A/B (the k = 16 model, interleaved in one process): the current defaults
against each choice reverted -- idle threads spinning, one arena per session, the whole file
in one session (so score-only calls also build the anomaly map) -- and all three reverted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import common


def latency_worker(args: argparse.Namespace) -> dict[str, Any]:
    from app.detector.runtime import CompiledModel

    image = common.decode(Path(args.image))
    models = [CompiledModel(Path(p).read_bytes(), runtime_options(args.threads))
              for p in args.models]
    for model in models:  # warm-up
        model.run(image)
        model.score(image)
    timings: dict[tuple[int, str], list[float]] = {
        (i, mode): [] for i in range(len(models)) for mode in ("score", "map")}
    for r in range(args.rounds):
        order = list(range(len(models)))
        order = order if r % 2 == 0 else order[::-1]
        for i in order:
            models[i].score(image)  # untimed: the model's weights back in cache after a switch
            for mode in ("score", "map") if r % 2 == 0 else ("map", "score"):
                fn = models[i].score if mode == "score" else models[i].run
                for _ in range(args.per_round):
                    t0 = time.perf_counter()
                    fn(image)
                    timings[(i, mode)].append((time.perf_counter() - t0) * 1000)
    return {"results": [{"model": args.models[i], "mode": mode, "ms": common.summary(ms)}
                        for (i, mode), ms in timings.items()],
            "peak_rss_mib": common.peak_rss_mib()}


def runtime_options(threads: int, **overrides: Any) -> Any:
    """``RuntimeOptions(threads=...)`` with the given fields changed; None when this version
    of ``RuntimeOptions`` has no such field (the variant is then skipped)."""
    import dataclasses

    from app.detector.runtime import RuntimeOptions

    fields = {f.name for f in dataclasses.fields(RuntimeOptions)}
    if set(overrides) - fields:
        return None
    return RuntimeOptions(threads=threads, **overrides)


class _WholeFile:
    """The model file in one plain session, as ``CompiledModel`` ran it before the score / map
    split (onnxruntime then builds the anomaly map on score-only calls too)."""

    def __init__(self, data: bytes, options: Any) -> None:
        self.session = options.session(data)

    def score(self, image: Any) -> float:
        return float(self.session.run(["score"], {"image": image})[0][0])


# Variants of the runtime compared by ``--worker options``: name -> (whole file?, overrides).
OPTION_VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {
    "current defaults": (False, {}),
    "spinning on": (False, {"spinning": True}),
    "per-session arena": (False, {"shared_arena": False}),
    "whole file, one session": (True, {}),
    "before (all three)": (True, {"spinning": True, "shared_arena": False}),
}


def options_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved A/B of the runtime's choices on one model: score latency and CPU time of
    one stream, and the throughput of two threads on two models at once (the service's two
    inference workers)."""
    import threading

    from app.detector.runtime import CompiledModel

    image = common.decode(Path(args.image))
    data = Path(args.models[0]).read_bytes()
    models: dict[str, list[Any]] = {}
    for name, (whole, overrides) in OPTION_VARIANTS.items():
        options = runtime_options(args.threads, **overrides)
        if options is None:
            continue
        make = _WholeFile if whole else CompiledModel
        models[name] = [make(data, options) for _ in range(2)]
    for pair in models.values():
        for model in pair:
            model.score(image)
    names = list(models)
    wall: dict[str, list[float]] = {m: [] for m in names}
    cpu: dict[str, list[float]] = {m: [] for m in names}
    pairs: dict[str, list[float]] = {m: [] for m in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            models[name][0].score(image)  # untimed: back in cache after the switch
            for _ in range(args.per_round):
                t0, c0 = time.perf_counter(), time.process_time()
                models[name][0].score(image)
                cpu[name].append((time.process_time() - c0) * 1000)
                wall[name].append((time.perf_counter() - t0) * 1000)

            def loop(model: Any) -> None:
                for _ in range(args.per_round):
                    model.score(image)

            threads = [threading.Thread(target=loop, args=(m,)) for m in models[name]]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            pairs[name].append(2 * args.per_round / (time.perf_counter() - t0))
    return {name: {"ms": common.summary(wall[name]), "cpu_ms": common.summary(cpu[name]),
                   "two_streams_images_per_s": round(common.median(pairs[name]), 2)}
            for name in names}


def rss_worker(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    from app.detector.runtime import CompiledModel

    image = common.decode(Path(args.image))
    model_path = Path(args.models[0])
    gc.collect()
    base = common.proc_status()
    models = []
    t0 = time.perf_counter()
    for _ in range(args.n):
        data = model_path.read_bytes()  # as the service: bytes from storage, then dropped
        model = CompiledModel(data, runtime_options(
            args.threads, **({} if args.arena == "shared" else {"shared_arena": False})))
        model.score(image)
        models.append(model)
        del data
    load_s = time.perf_counter() - t0
    gc.collect()
    loaded = common.proc_status()
    t0 = time.perf_counter()
    for model in models:  # a second pass: each variant inspected again
        model.score(image)
    per_inspect_ms = (time.perf_counter() - t0) * 1000 / len(models)
    end = common.proc_status()
    return {"variants": args.n, "arena": args.arena, "rss_base_mib": base["vmrss_mib"],
            "rss_loaded_mib": loaded["vmrss_mib"], "rss_end_mib": end["vmrss_mib"],
            "peak_rss_mib": common.peak_rss_mib(),
            "per_variant_mib": round((end["vmrss_mib"] - base["vmrss_mib"]) / args.n, 1),
            "load_and_first_inspect_s": round(load_s, 2),
            "second_pass_ms_per_inspect": round(per_inspect_ms, 1),
            "model_bytes": model_path.stat().st_size}


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info(args.threads)
    if args.quick:
        ks, resolution, variants, rss_k, rounds, per_round = [1, 2], 128, [1, 2], 1, 1, 2
    else:
        ks = [int(x) for x in args.ks.split(",")]
        variants = [int(x) for x in args.variants.split(",")]
        resolution, rss_k, rounds, per_round = args.resolution, args.rss_k, args.rounds, \
            args.per_round
    image = common.test_paths(args.dataset, 1)[0]
    paths: dict[int, Path] = {}
    fits: dict[int, Any] = {}
    for k in sorted(set(ks) | {rss_k}):
        print(f"  model k={k} ...", flush=True)
        paths[k], fits[k] = common.cached_model(args.dataset, k, resolution, args.threads,
                                                args.seed)
    from app.detector.engine import bank_from_model

    banks = {k: int(bank_from_model(paths[k].read_bytes()).shape[0]) for k in paths}

    print("  timing inspect against bank size (interleaved) ...", flush=True)
    base_cmd = ["--threads", str(args.threads), "--image", str(image)]
    latency = common.run_json(common.python_cmd(
        "bench.scaling", "--worker", "latency", *base_cmd, "--rounds", str(rounds),
        "--per-round", str(per_round), "--models", *[str(paths[k]) for k in ks]), timeout_s=1800)
    by_path = {str(paths[k]): k for k in ks}
    lat_rows = []
    for k in ks:
        row: dict[str, Any] = {"k": k, "bank_size": banks[k],
                               "onnx_mib": round(paths[k].stat().st_size / common.MiB, 2)}
        for r in latency["results"]:
            if by_path[r["model"]] == k:
                row[f"{r['mode']}_ms"] = r["ms"]
        lat_rows.append(row)

    arenas = ["shared", "per-session"] if args.compare_options else ["shared"]
    rss_rows = []
    for n in variants:
        for arena in arenas:
            print(f"  RSS with {n} variants loaded ({arena} arena) ...", flush=True)
            rss_rows.append(common.run_json(common.python_cmd(
                "bench.scaling", "--worker", "rss", *base_cmd, "--n", str(n), "--arena", arena,
                "--models", str(paths[rss_k])), timeout_s=1800))
    options_ab = None
    if args.compare_options:
        print("  runtime options: latency A/B (interleaved) ...", flush=True)
        ab_k = 16 if 16 in paths else max(paths)
        options_ab = {"k": ab_k, "variants": common.run_json(common.python_cmd(
            "bench.scaling", "--worker", "options", *base_cmd, "--rounds", str(rounds * 2),
            "--per-round", str(per_round), "--models", str(paths[ab_k])), timeout_s=1800)}
    return {
        "bench": "scaling",
        "machine": machine,
        "params": {"dataset": str(args.dataset), "ks": ks, "resolution": resolution,
                   "threads": args.threads, "seed": args.seed, "rounds": rounds,
                   "per_round": per_round, "variants": variants, "rss_model_k": rss_k,
                   "image": image.name, "quick": args.quick},
        "fits": {str(k): v for k, v in fits.items()},
        "latency": lat_rows,
        "latency_worker_peak_rss_mib": latency["peak_rss_mib"],
        "rss": rss_rows,
        "options_ab": options_ab,
    }


def report(data: dict[str, Any]) -> str:
    p = data["params"]
    rows = [[r["k"], r["bank_size"], common.fmt(r["onnx_mib"], 2),
             common.fmt(r["score_ms"]["median"]), common.fmt(r["score_ms"]["p95"]),
             common.fmt(r["map_ms"]["median"])] for r in data["latency"]]
    out = [f"### Inspect latency against memory-bank size (512 x 512 image, resolution "
           f"{p['resolution']}, {p['threads']} threads; medians of interleaved rounds)",
           common.markdown_table(["k images", "bank rows", "model MiB", "score ms", "score p95",
                                  "score + map ms"], rows), ""]
    rrows = [[r["variants"], r.get("arena", "-"), common.fmt(r["rss_base_mib"], 0),
              common.fmt(r["rss_end_mib"], 0), common.fmt(r["peak_rss_mib"], 0),
              common.fmt(r["per_variant_mib"])] for r in data["rss"]]
    out += [f"### Process RSS with N variants loaded ({p['rss_model_k']}-image model each)",
            common.markdown_table(["variants", "ONNX Runtime arena", "RSS before MiB",
                                   "RSS loaded MiB", "peak RSS MiB", "MiB per variant"], rrows)]
    ab = data.get("options_ab")
    if ab:
        arows = [[name, common.fmt(v["ms"]["median"]), common.fmt(v["ms"]["p95"]),
                  common.fmt(v["cpu_ms"]["median"]), common.fmt(v["two_streams_images_per_s"], 2)]
                 for name, v in ab["variants"].items()]
        out += ["", f"### Runtime options A/B on the k={ab['k']} model (score only, interleaved, "
                    "one process)",
                common.markdown_table(["variant", "ms (median)", "p95", "CPU ms (median)",
                                       "2 threads x 2 models images/s"], arows)]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--ks", default="1,4,16,64,200", help="training images per model")
    parser.add_argument("--variants", default="1,10,50", help="loaded model counts")
    parser.add_argument("--rss-k", type=int, default=4, help="k of the model loaded N times")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--no-compare-options", dest="compare_options", action="store_false",
                        help="skip the runtime options A/B and the per-session-arena RSS rows")
    parser.add_argument("--worker", choices=["latency", "rss", "options"], help=argparse.SUPPRESS)
    parser.add_argument("--arena", choices=["shared", "per-session"], default="shared",
                        help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        worker = {"latency": latency_worker, "rss": rss_worker, "options": options_worker}[
            args.worker]
        print(json.dumps(worker(args)), flush=True)
        return 0
    data = run(args)
    print()
    print(report(data))
    common.write_results(args.out or common.default_out("scaling", args.quick), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
