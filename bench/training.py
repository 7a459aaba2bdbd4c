"""Training time and memory against the number of good images k.

    python -m bench.training                    # k = 1, 4, 16, 64, 200; ~1.5-3 min on 2 cores
    python -m bench.training --ks 1,4,16 --no-api
    python -m bench.training --quick            # smoke test

``Detector.fit`` runs in a fresh subprocess per (k, repeat), which reports its peak RSS
(``VmHWM``) and the fit's own breakdown (``FittedModel.timings``: features, coreset,
calibration, export). The subprocess builds the feature extractor's ONNX session before the
fit (timed apart, as ``extractor_build_s``): a running service has it cached after its first
training. Repeats (k <= 16 only; larger k run once) are interleaved across k.

End to end through the API (k = 16 by default): a real ``nominal serve`` process, the images
uploaded, then ``POST /v1/variants/{name}/models`` -> poll every 20 ms until ``ready``; the
first run after start-up is cold (the extractor session is built), later ones warm. The
server's peak RSS (``VmHWM``) over the runs is reported.

The fitted models are left in the bench cache (``$TMPDIR/nominal-bench-cache``), where
``bench.scaling`` and ``bench.engine`` find them instead of fitting again.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench import common

STAGES = ("features_s", "coreset_s", "calibration_s", "export_s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info(args.threads)
    if args.quick:
        ks, resolution, repeats, api_k, api_runs = [1, 2], 128, 1, 2, 1
    else:
        ks = [int(x) for x in args.ks.split(",")]
        resolution, repeats, api_k, api_runs = (args.resolution, args.repeats, args.api_k,
                                                args.api_runs)
    fits: dict[int, list[dict[str, Any]]] = {k: [] for k in ks}
    for r in range(repeats):
        for k in ks:
            if r > 0 and k > args.repeat_max_k:
                continue
            cache = common.model_cache_path(args.dataset, k, resolution, args.seed)
            result = common.fit_in_subprocess(args.dataset, k, resolution, args.threads,
                                              args.seed, save=None if cache.exists() else cache)
            fits[k].append(result)
            stages = ", ".join(f"{s[:-2]} {result['timings'][s]:.2f}" for s in STAGES)
            print(f"  k={k:<3d} run {r + 1}: fit {result['fit_s']:.2f} s ({stages}), "
                  f"bank {result['bank_size']}, peak RSS {result['peak_rss_mib']:.0f} MiB",
                  flush=True)
    per_k = []
    for k in ks:
        runs = fits[k]
        per_k.append({
            "k": k, "runs": len(runs), "bank_size": runs[0]["bank_size"],
            "fit_s_median": round(common.median([r["fit_s"] for r in runs]), 3),
            "timings_median": {s: round(common.median([r["timings"][s] for r in runs]), 3)
                               for s in STAGES},
            "extractor_build_s_median": round(common.median(
                [r["extractor_build_s"] for r in runs]), 3),
            "decode_s_median": round(common.median([r["decode_s"] for r in runs]), 3),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
            "rss_before_fit_mib": runs[0]["rss_before_fit_mib"],
            "onnx_bytes": runs[0]["onnx_bytes"],
            "all_runs": runs,
        })

    api: dict[str, Any] | None = None
    if not args.no_api:
        settings = {"resolution": resolution} if resolution != 256 else None
        with common.Server(threads=args.threads) as server, server.client() as client:
            common.create_variant(client, "bench-train", settings)
            common.upload_good(client, "bench-train", common.train_paths(args.dataset, api_k))
            before = server.memory()
            runs_api: list[dict[str, Any]] = []
            for i in range(api_runs):
                wall, model = common.train_until_ready(client, "bench-train", seed=args.seed)
                mem = server.memory()
                runs_api.append({"run": i + 1, "cold": i == 0, "post_to_ready_s":
                                 round(wall, 3), "job_timings": model.get("timings"),
                                 "bank_size": model.get("bank_size"),
                                 "server_rss_mib": mem.get("vmrss_mib"),
                                 "server_peak_rss_mib": mem.get("vmhwm_mib")})
                print(f"  API k={api_k} run {i + 1}: POST -> ready {wall:.2f} s, server "
                      f"peak RSS {mem.get('vmhwm_mib')} MiB", flush=True)
        warm = [float(r["post_to_ready_s"]) for r in runs_api if not r["cold"]] or \
            [float(r["post_to_ready_s"]) for r in runs_api]
        api = {"k": api_k, "runs": runs_api, "server_before_training": before,
               "post_to_ready_s_median_warm": round(common.median(warm), 3),
               "post_to_ready_s_cold": runs_api[0]["post_to_ready_s"],
               "server_peak_rss_mib": max(r["server_peak_rss_mib"] or 0 for r in runs_api),
               "server_startup_s": round(server.startup_s, 2)}
    return {
        "bench": "training",
        "machine": machine,
        "params": {"dataset": str(args.dataset), "ks": ks, "resolution": resolution,
                   "seed": args.seed, "threads": args.threads, "repeats": repeats,
                   "repeat_max_k": args.repeat_max_k, "quick": args.quick},
        "fit": per_k,
        "api": api,
    }


def report(data: dict[str, Any]) -> str:
    p = data["params"]
    rows = []
    for r in data["fit"]:
        t = r["timings_median"]
        rows.append([r["k"], r["bank_size"], r["runs"], common.fmt(r["fit_s_median"], 2),
                     *(common.fmt(t[s], 2) for s in STAGES),
                     common.fmt(r["peak_rss_mib_max"], 0), common.fmt(r["rss_before_fit_mib"], 0)])
    out = [f"### Training through Detector.fit, resolution {p['resolution']}, "
           f"{p['threads']} threads (medians)",
           common.markdown_table(["k", "bank", "runs", "fit s", "features s", "coreset s",
                                  "calibration s", "export s", "peak RSS MiB",
                                  "RSS before fit MiB"], rows)]
    api = data["api"]
    if api:
        arows = [[r["run"], "cold" if r["cold"] else "warm", common.fmt(r["post_to_ready_s"], 2),
                  common.fmt((r["job_timings"] or {}).get("total_s"), 2),
                  common.fmt(r["server_peak_rss_mib"], 0)] for r in api["runs"]]
        out += ["", f"### Training k={api['k']} end to end through the API (POST models -> "
                    "ready)",
                common.markdown_table(["run", "", "POST -> ready s", "fit in job s",
                                       "server peak RSS MiB"], arows)]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--ks", default="1,4,16,64,200", help="numbers of training images")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per k (k <= --repeat-max-k)")
    parser.add_argument("--repeat-max-k", type=int, default=16)
    parser.add_argument("--api-k", type=int, default=16)
    parser.add_argument("--api-runs", type=int, default=3, help="first cold, the rest warm")
    parser.add_argument("--no-api", action="store_true", help="skip the end-to-end API runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = run(args)
    print()
    print(report(data))
    common.write_results(args.out or common.default_out("training", args.quick), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
