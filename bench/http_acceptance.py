"""End-to-end acceptance of a running Nominal server, through HTTP only.

Fresh run: create a variant, upload k good images drawn with the seed, train, inspect every
test image, and report image AUROC, false-reject rate, defect recall and latency; check that
the downloaded ONNX file scores like the API in plain onnxruntime; save one heatmap PNG.

    python bench/http_acceptance.py --url http://127.0.0.1:8000 \\
        --dataset ../shared/datasets/mvtec_bottle_512 --shots 4 --seed 0 --json /tmp/acc.json

Re-check after a restart (or on another replica): skip creation and training, verify that the
variant, its images and its active model are unchanged, and re-score every test image:

    python bench/http_acceptance.py --url http://127.0.0.1:8000 \\
        --dataset ../shared/datasets/mvtec_bottle_512 --reuse-variant NAME --compare /tmp/acc.json

The dataset uses the MVTec AD layout: ``train/good/*.png`` and ``test/<label>/*.png``, where
``test/good`` holds the good parts and every other folder a kind of defect.

Exit status: 0 when every check passes, 1 when one fails (AUROC below ``--min-auroc``, ONNX
parity, heatmap, or a ``--compare`` mismatch), 2 on an HTTP error or a failed training job.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.detector.roc import auroc

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PARITY_RTOL = 1e-3
RESCORE_RTOL = 1e-6


class HTTPFailure(RuntimeError):
    """An unexpected answer from the server (status and body kept for the report)."""


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def test_set(dataset: Path) -> list[tuple[str, int, Path]]:
    """(``label/file``, 0 good / 1 defect, path) for every test image, in a fixed order."""
    root = dataset / "test"
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in images_in(folder):
            items.append((f"{folder.name}/{path.name}", 0 if folder.name == "good" else 1, path))
    if not items:
        raise SystemExit(f"no test images under {root}")
    return items


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan


class Api:
    """Thin client of the /v1 API that raises ``HTTPFailure`` on an unexpected status."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = 200,
             **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, path, **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in expected:
            raise HTTPFailure(f"{method} {path} -> {response.status_code} "
                              f"{response.headers.get('content-type', '')}: "
                              f"{response.text[:1000]}")
        return response

    def inspect(self, name: str, data: bytes, heatmap: bool = False
                ) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        response = self.call("POST", f"/v1/variants/{name}/inspect",
                             params={"heatmap": "png"} if heatmap else None, content=data,
                             headers={"Content-Type": "image/png"})
        return response, (time.perf_counter() - started) * 1000.0


def wait_ready(api: Api, name: str, version: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        model = api.call("GET", f"/v1/variants/{name}/models/{version}").json()
        if (model["status"], round(model["progress"], 2)) != last:
            last = (model["status"], round(model["progress"], 2))
            print(f"  model v{version}: {model['status']} {model['progress']:.0%} "
                  f"{model.get('stage') or ''}", flush=True)
        if model["status"] == "ready":
            if model["activate"] and not model["is_active"]:
                # The answer that first says ready should already say active (one transaction
                # writes both); note it when it does not, and read again.
                print(f"  note: v{version} answered ready with is_active false", flush=True)
                model = api.call("GET", f"/v1/variants/{name}/models/{version}").json()
                model["ready_answer_inactive"] = True
            return model  # type: ignore[no-any-return]
        if model["status"] in ("failed", "cancelled"):
            raise HTTPFailure(f"training v{version} ended {model['status']}: {model.get('error')}")
        if time.monotonic() > deadline:
            raise HTTPFailure(f"training v{version} not ready after {timeout_s:.0f} s")
        time.sleep(0.5)


def onnx_parity(onnx_bytes: bytes, items: list[tuple[str, int, Path]],
                api_scores: dict[str, float], threshold: float) -> dict[str, Any]:
    """Score the first good and the first defect image in plain onnxruntime (PIL decode)."""
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    picks = [next(i for i in items if i[1] == 0), next(i for i in items if i[1] == 1)]
    checks = []
    for key, _, path in picks:
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        (score,) = session.run(["score"], {"image": image})
        local = float(score[0])
        remote = api_scores[key]
        rel = abs(local - remote) / max(abs(remote), 1e-12)
        checks.append({"image": key, "onnxruntime": local, "api": remote, "rel_diff": rel,
                       "ok": rel <= PARITY_RTOL})
    meta_threshold = float(meta["nominal.threshold"]) if "nominal.threshold" in meta else None
    threshold_ok = meta_threshold is not None and math.isclose(meta_threshold, threshold,
                                                               rel_tol=1e-9)
    return {"checks": checks, "metadata_threshold": meta_threshold,
            "threshold_ok": threshold_ok,
            "ok": threshold_ok and all(c["ok"] for c in checks)}


def heatmap_check(api: Api, name: str, item: tuple[str, int, Path], api_score: float,
                  out_dir: Path) -> dict[str, Any]:
    key, _, path = item
    response, _ = api.inspect(name, path.read_bytes(), heatmap=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-heatmap-{key.replace('/', '-')}"
    target.write_bytes(response.content)
    from PIL import Image

    with Image.open(io.BytesIO(response.content)) as png:
        size = png.size
        fmt = png.format
    header_score = float(response.headers.get("X-Anomaly-Score", "nan"))
    ok = (response.headers.get("content-type") == "image/png" and fmt == "PNG"
          and math.isclose(header_score, api_score, rel_tol=RESCORE_RTOL))
    return {"image": key, "path": str(target), "size": list(size), "bytes": len(response.content),
            "x_anomaly_score": header_score, "x_is_anomalous": response.headers.get(
                "X-Is-Anomalous"), "ok": ok}


def score_all(api: Api, name: str, items: list[tuple[str, int, Path]]
              ) -> tuple[dict[str, dict[str, Any]], list[float]]:
    results: dict[str, dict[str, Any]] = {}
    latencies = []
    for key, _, path in items:
        response, ms = api.inspect(name, path.read_bytes())
        body = response.json()
        results[key] = body
        latencies.append(ms)
    return results, latencies


def metrics_of(items: list[tuple[str, int, Path]], results: dict[str, dict[str, Any]],
               latencies: list[float]) -> dict[str, Any]:
    labels = np.asarray([label for _, label, _ in items])
    scores = np.asarray([results[key]["score"] for key, _, _ in items], dtype=np.float64)
    flagged = np.asarray([results[key]["is_anomalous"] for key, _, _ in items], dtype=bool)
    good, defect = labels == 0, labels == 1
    server_ms = [results[key]["latency_ms"] for key, _, _ in items]
    return {
        "n_test": len(items), "n_good": int(good.sum()), "n_defect": int(defect.sum()),
        "image_auroc": auroc(scores, labels),
        "false_reject_rate": float(flagged[good].mean()),
        "false_rejects": int(flagged[good].sum()),
        "defect_recall": float(flagged[defect].mean()),
        "missed_defects": int((~flagged[defect]).sum()),
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "max": max(latencies)},
        "server_latency_ms": {"p50": percentile(server_ms, 50), "p95": percentile(server_ms, 95)},
    }


def create_and_train(api: Api, args: argparse.Namespace) -> tuple[str, dict[str, Any],
                                                                   dict[str, Any]]:
    name = args.name or f"acceptance-{uuid.uuid4().hex[:8]}"
    body: dict[str, Any] = {"name": name, "description": "HTTP acceptance run"}
    if args.settings:
        body["settings"] = json.loads(args.settings)
    api.call("POST", "/v1/variants", expect=201, json=body)
    pool = images_in(args.dataset / "train" / "good")
    if args.shots > len(pool):
        raise SystemExit(f"--shots {args.shots} but only {len(pool)} training images")
    chosen = sorted(random.Random(args.seed).sample(pool, args.shots))
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in chosen]
    uploaded = api.call("POST", f"/v1/variants/{name}/images", expect=201, files=files,
                        data={"label": "good"}).json()["images"]
    print(f"variant {name}: uploaded {[p.name for p in chosen]}", flush=True)
    started = time.perf_counter()
    job = api.call("POST", f"/v1/variants/{name}/models", expect=202,
                   json={"seed": args.seed, "activate": True}).json()
    model = wait_ready(api, name, job["version"], args.train_timeout)
    train_wall_s = time.perf_counter() - started
    active = api.call("GET", f"/v1/variants/{name}").json()["active_model_version"]
    if active != job["version"]:
        raise HTTPFailure(f"v{job['version']} is ready but the variant's active version is "
                          f"{active}")
    training = {"train_files": [p.name for p in chosen],
                "image_sha256": sorted(i["sha256"] for i in uploaded),
                "train_wall_s": train_wall_s,
                "ready_answer_inactive": bool(model.pop("ready_answer_inactive", False))}
    return name, model, training


def reuse(api: Api, args: argparse.Namespace) -> tuple[str, dict[str, Any], dict[str, Any]]:
    name = args.reuse_variant
    variant = api.call("GET", f"/v1/variants/{name}").json()
    version = variant["active_model_version"]
    if version is None:
        raise HTTPFailure(f"variant {name!r} has no active model")
    model = api.call("GET", f"/v1/variants/{name}/models/{version}").json()
    images = api.call("GET", f"/v1/variants/{name}/images", params={"limit": 500}).json()
    shas = sorted(i["sha256"] for i in images["items"])
    # The stored bytes must be exactly the uploaded ones.
    for item in images["items"]:
        data = api.call("GET", f"/v1/variants/{name}/images/{item['id']}/content").content
        if hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise HTTPFailure(f"image {item['id']}: content does not match its sha256")
    print(f"variant {name}: {variant['n_good_images']} good images, active v{version} "
          f"({model['status']})", flush=True)
    return name, model, {"image_sha256": shas, "n_good_images": variant["n_good_images"]}


def compare(previous: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """What differs between a stored summary and this run (empty: all the same)."""
    problems = []
    if previous["variant"] != summary["variant"]:
        problems.append(f"variant {previous['variant']} != {summary['variant']}")
    for field in ("model_version", "threshold"):
        if previous[field] != summary[field]:
            problems.append(f"{field}: {previous[field]} -> {summary[field]}")
    if previous["image_sha256"] != summary["image_sha256"]:
        problems.append("the variant's images differ")
    if previous.get("onnx_sha256") != summary.get("onnx_sha256"):
        problems.append("the ONNX file differs")
    worst = 0.0
    for key, score in previous["scores"].items():
        now = summary["scores"].get(key)
        if now is None:
            problems.append(f"{key}: not scored now")
            continue
        worst = max(worst, abs(now - score) / max(abs(score), 1e-12))
    summary["rescore_max_rel_diff"] = worst
    if worst > RESCORE_RTOL:
        problems.append(f"scores moved: max relative difference {worst:.3g}")
    return problems


def run(args: argparse.Namespace) -> int:
    api = Api(args.url, args.api_key, args.http_timeout)
    items = test_set(args.dataset)
    ready = api.call("GET", "/readyz").json()
    print(f"server {args.url}: {ready['status']} {ready['checks']}", flush=True)
    if args.reuse_variant:
        name, model, extra = reuse(api, args)
    else:
        name, model, extra = create_and_train(api, args)
    version = model["version"]
    threshold = float(model["threshold"])

    results, latencies = score_all(api, name, items)
    versions = {r["model_version"] for r in results.values()}
    if versions != {version}:
        raise HTTPFailure(f"inspect answered with versions {versions}, expected {version}")
    summary: dict[str, Any] = {
        "url": args.url, "dataset": str(args.dataset), "variant": name, "mode":
            "reuse" if args.reuse_variant else "fresh", "shots": args.shots, "seed": args.seed,
        "model_version": version, "threshold": threshold,
        "calibration_method": (model.get("calibration") or {}).get("method"),
        "bank_size": model.get("bank_size"), "config": model.get("config"),
        "training_timings_s": model.get("timings"), **extra,
        **metrics_of(items, results, latencies),
    }
    summary["scores"] = {key: results[key]["score"] for key, _, _ in items}

    onnx_response = api.call("GET", f"/v1/variants/{name}/models/{version}/onnx")
    summary["onnx_bytes"] = len(onnx_response.content)
    summary["onnx_sha256"] = hashlib.sha256(onnx_response.content).hexdigest()
    summary["parity"] = onnx_parity(onnx_response.content, items, summary["scores"], threshold)
    defect = next(i for i in items if i[1] == 1)
    summary["heatmap"] = heatmap_check(api, name, defect, summary["scores"][defect[0]],
                                       args.out_dir)

    failures = []
    if not summary["image_auroc"] >= args.min_auroc:
        failures.append(f"image AUROC {summary['image_auroc']:.4f} < {args.min_auroc}")
    if not summary["parity"]["ok"]:
        failures.append("ONNX parity failed")
    if not summary["heatmap"]["ok"]:
        failures.append("heatmap check failed")
    if args.compare:
        previous = json.loads(args.compare.read_text())
        failures += compare(previous, summary)
    summary["failures"] = failures
    summary["ok"] = not failures

    print_summary(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {args.json}")
    return 0 if summary["ok"] else 1


def print_summary(s: dict[str, Any]) -> None:
    lat, srv = s["latency_ms"], s["server_latency_ms"]
    timings = s.get("training_timings_s") or {}
    lines = [
        f"variant {s['variant']} ({s['mode']}), model v{s['model_version']}, "
        f"threshold {s['threshold']:.4f} ({s['calibration_method']}), bank {s['bank_size']}",
        f"training: {timings.get('total_s', float('nan')):.2f} s in the job"
        + (f", {s['train_wall_s']:.2f} s until ready" if "train_wall_s" in s else ""),
        f"test images: {s['n_test']} ({s['n_good']} good, {s['n_defect']} defect)",
        f"image AUROC        {s['image_auroc']:.4f}",
        f"false-reject rate  {s['false_reject_rate']:.3f} ({s['false_rejects']}/{s['n_good']})",
        f"defect recall      {s['defect_recall']:.3f} "
        f"({s['n_defect'] - s['missed_defects']}/{s['n_defect']})",
        f"inspect latency    p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms (client); "
        f"server p50 {srv['p50']:.1f} ms, p95 {srv['p95']:.1f} ms",
    ]
    for c in s["parity"]["checks"]:
        lines.append(f"ONNX parity        {c['image']}: onnxruntime {c['onnxruntime']:.6f} vs api "
                     f"{c['api']:.6f} (rel {c['rel_diff']:.2e}) {'ok' if c['ok'] else 'FAIL'}")
    lines.append(f"ONNX metadata threshold {s['parity']['metadata_threshold']} "
                 f"{'ok' if s['parity']['threshold_ok'] else 'FAIL'}; {s['onnx_bytes']} bytes")
    h = s["heatmap"]
    lines.append(f"heatmap            {h['path']} {h['size'][0]}x{h['size'][1]} "
                 f"{'ok' if h['ok'] else 'FAIL'}")
    if s.get("ready_answer_inactive"):
        lines.append("note: the first 'ready' answer said is_active false (read again: active)")
    if "rescore_max_rel_diff" in s:
        lines.append(f"re-score vs stored max relative difference {s['rescore_max_rel_diff']:.2e}")
    lines.append("PASS" if s["ok"] else "FAIL: " + "; ".join(s["failures"]))
    print("\n".join(lines), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/mvtec_bottle_512"))
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0,
                        help="draws the training images and seeds the training job")
    parser.add_argument("--api-key", default=None, help="sent as X-API-Key")
    parser.add_argument("--name", default=None, help="variant name (default: a unique one)")
    parser.add_argument("--settings", default=None,
                        help='variant detector settings as JSON, e.g. \'{"augment": "flip"}\'')
    parser.add_argument("--reuse-variant", metavar="NAME", default=None,
                        help="skip creation and training; re-check this existing variant")
    parser.add_argument("--compare", type=Path, default=None,
                        help="a --json summary of an earlier run to compare against")
    parser.add_argument("--min-auroc", type=float, default=0.99)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp"),
                        help="where the heatmap PNG is saved")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--train-timeout", type=float, default=600.0)
    parser.add_argument("--http-timeout", type=float, default=120.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (HTTPFailure, httpx.HTTPError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
