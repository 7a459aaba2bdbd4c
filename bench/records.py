"""What inspection records cost: the inspect path with records on and off, side by side, and
how much the database grows per 10,000 records.

    python -m bench.records                  # ~3 min on 2 busy cores
    python -m bench.records --quick          # smoke test

Load: a real ``nominal serve`` (SQLite, its embedded default), the default model fitted on
bottle's first 16 training images; 4 concurrent clients send 512 x 512 bottle test images
(its good ones and, one in six, a defect) as raw PNG bodies. Rounds alternate the variant's
record policy (PATCH: on at its defaults, off, off, on, ...), each client sending a fixed
number of requests per round; p50 and p99 of the client-side latency per side over all rounds.

Growth: records stored through ``records.store_records`` (the service's own function, the
verdicts of real inspections replayed) into a fresh SQLite file and, with ``--postgres URL``, a
PostgreSQL database: bytes per 10,000 records without images, and per kept image.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import common

VARIANT = "bench-records"


def _payloads(dataset: Path, n: int) -> list[bytes]:
    good = common.images_in(dataset / "test" / "good")
    defects = sorted(p for folder in (dataset / "test").iterdir()
                     if folder.is_dir() and folder.name != "good"
                     for p in common.images_in(folder))
    chosen = [defects[i // 6 % len(defects)] if i % 6 == 5 else good[i % len(good)]
              for i in range(n)]
    return [p.read_bytes() for p in chosen]


def _round(server: common.Server, payloads: list[bytes], clients: int,
           per_client: int) -> tuple[list[float], int]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients)

    def loop(i: int) -> None:
        with server.client() as client:
            barrier.wait()
            for j in range(per_client):
                data = payloads[(i * per_client + j) % len(payloads)]
                started = time.perf_counter()
                response = client.post(f"/v1/variants/{VARIANT}/inspect", content=data,
                                       headers={"Content-Type": "image/png"})
                latencies[i].append(1000 * (time.perf_counter() - started))
                errors[i] += response.status_code != 200

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for per in latencies for x in per], sum(errors)


def load(args: argparse.Namespace) -> dict[str, Any]:
    payloads = _payloads(args.dataset, 24)
    times: dict[str, list[float]] = {"records on": [], "records off": []}
    errors = 0
    with common.Server(threads=args.threads) as server:
        with server.client() as client:
            common.create_variant(client, VARIANT,
                                  common.QUICK_VARIANT_SETTINGS if args.quick else None)
            common.upload_good(client, VARIANT, common.train_paths(args.dataset, args.k))
            common.train_until_ready(client, VARIANT, seed=0)
            for data in payloads[:4]:  # load the model, warm the decoders
                common.expect(client.post(f"/v1/variants/{VARIANT}/inspect", content=data,
                                          headers={"Content-Type": "image/png"}), 200)
        for r in range(args.rounds):
            side = ("records on", "records off")[(r + r // 2) % 2]  # on, off, off, on, ...
            with server.client() as client:
                common.expect(client.patch(f"/v1/variants/{VARIANT}", json={
                    "records": {"enabled": side == "records on"}}), 200)
            latencies, failed = _round(server, payloads, args.clients, args.per_client)
            times[side] += latencies
            errors += failed
            print(f"  round {r} {side}: p50 {common.percentile(latencies, 50):.1f} ms",
                  flush=True)
        with server.client() as client:
            stored = common.expect(client.get("/v1/records", params={"limit": 500}), 200)
            n_listed = len(stored.json()["items"])
    summary = {side: common.summary(values, 1) for side, values in times.items()}
    on, off = summary["records on"], summary["records off"]
    return {"clients": args.clients, "per_client": args.per_client, "rounds": args.rounds,
            "errors": errors, "ms": summary, "records_listed": n_listed,
            "p50_ratio": round(on["median"] / off["median"], 3),
            "p99_ratio": round(on["p99"] / off["p99"], 3)}


def _database_bytes(url: str) -> int:
    from sqlalchemy import create_engine, text

    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "WHERE c.relname IN ('inspection_record', 'record_image') AND c.relkind = 'r'"
            )).scalar_one())
    finally:
        engine.dispose()


def growth(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """Bytes per record and per kept image, ``url`` a fresh database at head."""
    from app.db.migrate import upgrade_to_head
    from app.db.models import Variant
    from app.db.session import Database
    from app.detector.config import DetectorConfig
    from app.detector.engine import Detector
    from app.detector.runtime import CompiledModel
    from app.services.records import CallerContext, Inspected, RecordPolicy, store_records

    upgrade_to_head(url)
    detector = Detector(common.MODELS_DIR)
    model = CompiledModel(detector.fit(
        [common.decode(p) for p in common.train_paths(args.dataset, 4)],
        DetectorConfig(resolution=128) if args.quick else DetectorConfig()).onnx_bytes)
    payloads = _payloads(args.dataset, 12)
    verdicts = [model.inspect(common.decode_bytes(data)) for data in payloads]
    database = Database(url)
    context = CallerContext(part_id="SN-2291-0042", station="line-3", lot="L-1126",
                            tags=("night-shift",), request_id="7f4c2a9e0b6d4f1a8c3e5b7d9f1a2c4e")
    with database.writing() as session:
        variant = Variant(name="growth", description="", settings={})
        session.add(variant)
        session.commit()
        variant_id = variant.id

    def add(n: int, policy: RecordPolicy) -> int:
        before = _database_bytes(url)
        rng = random.Random(0)
        for start in range(0, n, 10):  # ten verdicts a transaction, as a batch would
            items = [Inspected(verdict=verdicts[(start + i) % len(verdicts)], model_version=1,
                               latency_ms=20.0, width=512, height=512,
                               data=payloads[(start + i) % len(payloads)], format="PNG")
                     for i in range(min(10, n - start))]
            with database.writing() as session:
                store_records(session, variant_id=variant_id, policy=policy, inspected=items,
                              context=context, rng=rng)
        return _database_bytes(url) - before

    n_records = 1000 if args.quick else 10_000
    n_images = 20 if args.quick else 200
    without = add(n_records, RecordPolicy(keep_anomalous_images=False, keep_good_fraction=0.0))
    with_images = add(n_images, RecordPolicy(keep_good_fraction=1.0,
                                             max_image_bytes=2**40))
    database.dispose()
    image_bytes = sum(len(payloads[i % len(payloads)]) for i in range(n_images)) / n_images
    per_record = without / n_records
    per_kept = with_images / n_images - per_record
    return {"backend": url.split(":", 1)[0], "records": n_records, "kept_images": n_images,
            "bytes_per_record": round(per_record, 1),
            "mib_per_10000_records": round(per_record * 10_000 / common.MiB, 2),
            "bytes_per_kept_image": round(per_kept), "mean_png_bytes": round(image_bytes),
            "mib_per_10000_records_all_images_kept": round(
                (per_record + per_kept) * 10_000 / common.MiB, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--postgres", default=os.environ.get("NOMINAL_BENCH_POSTGRES"),
                        help="a PostgreSQL URL of an empty database for the growth figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.per_client, args.rounds = 2, 2, 2

    result = load(args)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [growth(args, f"sqlite:///{tmp}/growth.db")]
    if args.postgres:
        sizes.append(growth(args, args.postgres))
    ms = result["ms"]
    print(common.markdown_table(
        ["side", "requests", "p50 ms", "p99 ms"],
        [[side, ms[side]["n"], ms[side]["median"], ms[side]["p99"]] for side in ms]))
    print(f"\nrecords on / off: p50 x{result['p50_ratio']}, p99 x{result['p99_ratio']}; "
          f"{result['errors']} errors\n")
    print(common.markdown_table(
        ["database", "MiB per 10,000 records", "bytes per kept image (PNG bytes)",
         "MiB per 10,000 records, every image kept"],
        [[s["backend"], s["mib_per_10000_records"],
          f"{s['bytes_per_kept_image']} ({s['mean_png_bytes']})",
          s["mib_per_10000_records_all_images_kept"]] for s in sizes]))
    common.write_results(args.out or common.default_out("records", args.quick), {
        "bench": "records", "machine": common.machine_info(args.threads),
        "dataset": str(args.dataset), "load": result, "growth": sizes})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
