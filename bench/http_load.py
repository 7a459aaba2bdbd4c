"""HTTP load: a real ``nominal serve`` process under a bounded load of concurrent clients.

    python -m bench.http_load                   # full run, ~1-2 min on 2 busy cores
    python -m bench.http_load --clients 1,4 --requests-per-client 20,10
    python -m bench.http_load --quick           # smoke test

Starts the server on a free loopback port with a temporary SQLite database and a bootstrap
admin key (sent as X-API-Key), creates a variant, uploads the first 16 bottle training images,
trains and waits until the model is ready. The server is then restarted on the same database,
so that the served process holds one variant and no training leftovers (its RSS is the
"one variant loaded" figure), and loaded:

- ``POST /v1/variants/{name}/inspect`` with a 900 x 900 image as the raw body (``image/png``
  and ``image/jpeg``, made by upscaling a bottle test image with Pillow), by 1, 4 and 16
  concurrent clients (threads, one httpx client each), each sending a fixed number of requests
  and stopping; throughput, p50 / p95 / p99 latency and errors (anything but 200);
- ``POST /v1/variants/{name}/inspect/batch`` with 8 files, one client.

Every request loop is bounded in count; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import common

VARIANT = "bench-bottle"


def make_payloads(dataset: Path, size: int) -> dict[str, bytes]:
    """A bottle test image upscaled to ``size`` x ``size``, as PNG and as JPEG (quality 90)."""
    from PIL import Image

    source = common.test_paths(dataset, 1)[0]
    with Image.open(source) as im:
        big = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    out = {}
    for fmt, kwargs in (("png", {}), ("jpeg", {"quality": 90})):
        buf = io.BytesIO()
        big.save(buf, format=fmt.upper(), **kwargs)
        out[fmt] = buf.getvalue()
    return out


def load_level(server: common.Server, payload: bytes, media_type: str, clients: int,
               per_client: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``per_client`` requests back to back."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    server_ms: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    path = f"/v1/variants/{VARIANT}/inspect"

    def client_loop(i: int) -> None:
        with server.client(timeout_s=300) as client:
            barrier.wait()
            for _ in range(per_client):
                started = time.perf_counter()
                try:
                    response = client.post(path, content=payload,
                                           headers={"Content-Type": media_type})
                except Exception as exc:  # a failed request is an error, not a crash
                    errors[i].append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                latencies[i].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    errors[i].append(f"{response.status_code}: {response.text[:200]}")
                else:
                    server_ms[i].append(float(response.json()["latency_ms"]))

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = [x for per in latencies for x in per]
    srv = [x for per in server_ms for x in per]
    errs = [x for per in errors for x in per]
    ok = len(srv)
    p50, p99 = common.percentile(lat, 50), common.percentile(lat, 99)
    return {
        "clients": clients, "requests": clients * per_client, "ok": ok, "errors": len(errs),
        "error_samples": errs[:5], "wall_s": round(wall, 3),
        "throughput_rps": round(ok / wall, 2) if wall > 0 else None,
        "latency_ms": common.summary(lat, 1), "server_latency_ms": common.summary(srv, 1),
        "p99_over_p50": round(p99 / p50, 2) if lat else None,
    }


def batch_level(server: common.Server, payloads: list[bytes], media_type: str,
                requests: int) -> dict[str, Any]:
    latencies, errors = [], []
    files = [("files", (f"img{i}.{media_type.split('/')[1]}", data, media_type))
             for i, data in enumerate(payloads)]
    with server.client(timeout_s=600) as client:
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post(f"/v1/variants/{VARIANT}/inspect/batch", files=files)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200 or len(response.json()) != len(payloads):
                errors.append(f"{response.status_code}: {response.text[:200]}")
    med = common.median(latencies)
    return {"files": len(payloads), "requests": requests, "errors": len(errors),
            "error_samples": errors[:3], "latency_ms": common.summary(latencies, 1),
            "ms_per_image": round(med / len(payloads), 1),
            "images_per_s": round(1000 * len(payloads) / med, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info(args.threads)
    if args.quick:
        shots, size, clients, per_client, batch_files, batch_requests = 2, 256, [1, 2], [2, 2], 2, 1
        settings: dict[str, Any] | None = common.QUICK_VARIANT_SETTINGS
    else:
        shots, size = args.shots, args.size
        clients = [int(x) for x in args.clients.split(",")]
        per_client = [int(x) for x in args.requests_per_client.split(",")]
        if len(per_client) != len(clients):
            raise SystemExit("--requests-per-client needs one count per --clients entry")
        batch_files, batch_requests, settings = args.batch_files, args.batch_requests, None
    payloads = make_payloads(args.dataset, size)
    media = {"png": "image/png", "jpeg": "image/jpeg"}
    memory: dict[str, Any] = {}
    levels: list[dict[str, Any]] = []
    with common.Server(threads=args.threads) as server:
        memory["started"] = server.memory()
        startup_s = server.startup_s
        with server.client() as client:
            common.create_variant(client, VARIANT, settings)
            common.upload_good(client, VARIANT, common.train_paths(args.dataset, shots))
            train_s, model = common.train_until_ready(client, VARIANT, seed=0)
        memory["after_training_in_process"] = server.memory()
        print(f"trained {shots} images in {train_s:.1f} s (bank {model['bank_size']}); "
              "restarting the server", flush=True)
        server.restart()
        memory["restarted_idle"] = server.memory()
        with server.client() as client:
            for fmt in ("png", "jpeg"):  # loads the model into the cache; warms both decoders
                for _ in range(2):
                    common.expect(client.post(f"/v1/variants/{VARIANT}/inspect",
                                              content=payloads[fmt],
                                              headers={"Content-Type": media[fmt]}), 200)
        memory["one_variant_loaded"] = server.memory()
        for i, (c, n) in enumerate(zip(clients, per_client, strict=True)):
            order = ["png", "jpeg"] if i % 2 == 0 else ["jpeg", "png"]
            for fmt in order:
                level = load_level(server, payloads[fmt], media[fmt], c, n)
                level["format"] = fmt
                levels.append(level)
                lat = level["latency_ms"]
                print(f"  {fmt:4s} x{c:<2d}: {level['throughput_rps']} req/s, p50 "
                      f"{lat.get('median')} ms, p99 {lat.get('p99')} ms, errors "
                      f"{level['errors']}", flush=True)
        batches = [batch_level(server, [payloads[fmt]] * batch_files, media[fmt], batch_requests)
                   | {"format": fmt} for fmt in ("png", "jpeg")]
        memory["after_load"] = server.memory()
        log_tail = server.log_tail(2000)
    return {
        "bench": "http_load",
        "machine": machine,
        "params": {"dataset": str(args.dataset), "shots": shots, "image_size": size,
                   "clients": clients, "requests_per_client": per_client,
                   "batch_files": batch_files, "batch_requests": batch_requests,
                   "server_threads": args.threads, "quick": args.quick,
                   "payload_bytes": {k: len(v) for k, v in payloads.items()},
                   "server_settings": "defaults (NOMINAL_INFERENCE_WORKERS = max(2, cores))"},
        "server": {"startup_s": round(startup_s, 2), "train_s": round(train_s, 2),
                   "bank_size": model["bank_size"], "memory_mib": memory},
        "inspect": levels,
        "batch": batches,
        "total_errors": sum(lv["errors"] for lv in levels) + sum(b["errors"] for b in batches),
        "server_log_tail": log_tail if any(lv["errors"] for lv in levels) else None,
    }


def report(data: dict[str, Any]) -> str:
    p = data["params"]
    rows = []
    for lv in data["inspect"]:
        lat = lv["latency_ms"]
        rows.append([lv["format"], lv["clients"], lv["requests"], common.fmt(lv["throughput_rps"],
                     2), common.fmt(lat.get("median")), common.fmt(lat.get("p95")),
                     common.fmt(lat.get("p99")), common.fmt(lv["p99_over_p50"], 2),
                     common.fmt(lv["server_latency_ms"].get("median")), lv["errors"]])
    out = [f"### HTTP inspect, {p['image_size']} x {p['image_size']} raw body "
           f"(PNG {p['payload_bytes']['png'] // 1024} KiB, JPEG "
           f"{p['payload_bytes']['jpeg'] // 1024} KiB), {p['shots']}-shot model",
           common.markdown_table(["format", "clients", "requests", "req/s", "p50 ms", "p95 ms",
                                  "p99 ms", "p99/p50", "server p50 ms", "errors"], rows), ""]
    brows = [[b["format"], b["files"], b["requests"], common.fmt(b["latency_ms"].get("median")),
              common.fmt(b["ms_per_image"]), common.fmt(b["images_per_s"], 2), b["errors"]]
             for b in data["batch"]]
    out += [common.markdown_table(["batch format", "files", "requests", "p50 ms / request",
                                   "ms / image", "images/s", "errors"], brows), ""]
    mem = data["server"]["memory_mib"]
    mrows = [[stage.replace("_", " "), common.fmt(m.get("vmrss_mib")),
              common.fmt(m.get("vmhwm_mib"))] for stage, m in mem.items()]
    out += [common.markdown_table(["server process", "RSS MiB", "peak RSS MiB"], mrows),
            f"\nstartup {data['server']['startup_s']} s; training {p['shots']} images through the "
            f"API {data['server']['train_s']} s; errors in total: {data['total_errors']}"]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--size", type=int, default=900, help="side of the sent images (px)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--requests-per-client", default="40,15,5",
                        help="requests each client sends, per level")
    parser.add_argument("--batch-files", type=int, default=8)
    parser.add_argument("--batch-requests", type=int, default=6)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = run(args)
    print()
    print(report(data))
    common.write_results(args.out or common.default_out("http_load", args.quick), data)
    return 1 if data["total_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
