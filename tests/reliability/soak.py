"""Bounded soak: fixed-rate inspect load on loopback against a real ``nominal serve``.

    python -m tests.reliability.soak [SECONDS] [RATE_PER_S]

Samples the server's RSS every 5 s; prints requests, errors, latency and RSS start/end; exits 1
on any non-200 answer or transport error, or when RSS grew by more than 50 MB (the start is
taken after a warm-up, so model loading is not counted).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import good_png
from tests.reliability._server import Server, vm_kib, wait_model

MAX_GROWTH_MB = 50.0


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    tmp = Path(tempfile.mkdtemp(prefix="nominal-soak-"))
    server = Server(tmp, f"sqlite:///{tmp / 'nominal.db'}").start()
    try:
        with server.client(timeout=30) as client:
            client.post("/v1/variants", json={"name": "bolt", "settings": {"resolution": 64}})
            files = [("files", (f"g{i}.png", good_png(i), "image/png")) for i in range(3)]
            assert client.post("/v1/variants/bolt/images", files=files).status_code == 201
            job = client.post("/v1/variants/bolt/models", json={"seed": 0}).json()
            assert wait_model(client, "bolt", job["version"])["status"] == "ready"
            probes = [good_png(100 + i) for i in range(8)]
            for data in probes * 5:  # warm-up: model load, allocator pools
                client.post("/v1/variants/bolt/inspect", content=data,
                            headers={"content-type": "image/png"})
            rss: list[tuple[float, int]] = [(0.0, vm_kib(server.pid, "VmRSS"))]
            stop = threading.Event()
            started = time.monotonic()

            def sample() -> None:
                while not stop.wait(5.0):
                    rss.append((time.monotonic() - started, vm_kib(server.pid, "VmRSS")))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            sent = errors = 0
            latencies: list[float] = []
            interval = 1.0 / rate
            next_at = started
            while time.monotonic() - started < seconds:
                next_at += interval
                t0 = time.monotonic()
                try:
                    response = client.post("/v1/variants/bolt/inspect",
                                           content=probes[sent % len(probes)],
                                           headers={"content-type": "image/png"})
                    if response.status_code != 200:
                        errors += 1
                        print(f"error: {response.status_code} {response.text[:200]}")
                except Exception as exc:  # transport errors count as errors
                    errors += 1
                    print(f"error: {exc!r}")
                latencies.append(time.monotonic() - t0)
                sent += 1
                time.sleep(max(0.0, next_at - time.monotonic()))
            stop.set()
            sampler.join()
            rss.append((time.monotonic() - started, vm_kib(server.pid, "VmRSS")))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    start_mb, end_mb = rss[0][1] / 1024, rss[-1][1] / 1024
    peak_mb = max(kib for _, kib in rss) / 1024
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000
    print(f"soak: {seconds:g} s at {rate:g}/s: {sent} requests, {errors} errors, "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"RSS start {start_mb:.1f} MB, end {end_mb:.1f} MB, peak {peak_mb:.1f} MB, "
          f"growth {end_mb - start_mb:+.1f} MB ({len(rss)} samples)")
    print("RSS samples (s, MB): " + ", ".join(f"{t:.0f}:{k / 1024:.1f}" for t, k in rss))
    if errors or end_mb - start_mb > MAX_GROWTH_MB:
        print("FAIL")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
