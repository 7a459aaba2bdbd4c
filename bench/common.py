"""Shared pieces of the benchmark scripts: machine facts, memory readings, subprocess workers,
a real ``nominal serve`` process, statistics and the markdown / JSON output.

Every bench script follows the same rules:

- A/B comparisons run in one invocation and are interleaved (A, B, B, A, ...), so that the
  load of other jobs on a shared machine hits both sides alike; figures are medians.
- A figure that needs its own memory reading (peak RSS) runs in its own subprocess, which
  reports ``VmHWM`` / ``VmRSS`` from ``/proc/self/status`` as JSON on its last stdout line.
- ``--quick`` shrinks every count so that the smoke test (``tests/bench``) runs each script in
  seconds; quick results go to a temporary file unless ``--out`` says otherwise.

This module is also a worker: ``python -m bench.common fit ...`` fits one model in a fresh
process and prints its timings and peak RSS (used by ``bench.training`` and ``bench.scaling``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_DATASET = (ROOT / ".." / "shared" / "datasets" / "mvtec_bottle_512").resolve()
# Fitted models are cached here between scripts (training fits k = 200 once, scaling reuses it);
# the key covers the detector's source, so a code change never reuses a stale model.
# NOMINAL_BENCH_CACHE moves it (the smoke test uses a fresh one).
CACHE_DIR = Path(os.environ.get("NOMINAL_BENCH_CACHE")
                 or Path(tempfile.gettempdir()) / "nominal-bench-cache")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MiB = 1024 * 1024


# --------------------------------------------------------------------------- machine facts


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def code_version() -> dict[str, Any]:
    """The commit measured, whether app/detector differs from it, and a digest of its source
    (the detector changes under the benches' feet otherwise unnoticed)."""
    out: dict[str, Any] = {"detector_source_digest": _source_digest()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                           capture_output=True, text=True, timeout=10,
                                           check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "app/detector"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=10,
                                 check=True).stdout.split("\n")
        out["detector_uncommitted"] = sorted(line[3:] for line in changed if line.strip())
    return out


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What the figures were measured on (versions read without importing the packages)."""
    affinity: int | None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "onnx": _version("onnx"),
        "pillow": _version("pillow"),
        "torch": _version("torch"),
        "threads": threads,
        **code_version(),
        "loadavg_start": loadavg(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------- memory


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) of a process, in MiB."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key.lower() + "_mib"] = round(int(value.split()[0]) / 1024, 1)
    return out


def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB (``VmHWM``; ``getrusage`` where /proc is absent)."""
    status = proc_status()
    if "vmhwm_mib" in status:
        return status["vmhwm_mib"]
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """n, median, p95, p99, mean, min, max of ``values`` (already in the unit wanted)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(median(values), digits),
        "p95": round(percentile(values, 95), digits),
        "p99": round(percentile(values, 99), digits),
        "mean": round(sum(values) / len(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- output


def default_out(name: str, quick: bool) -> Path:
    """Where results go: ``bench/results/bench_<name>.json``, or a temp file in quick mode
    (a smoke run never overwrites the recorded figures)."""
    if quick:
        return Path(tempfile.gettempdir()) / f"bench_{name}.quick.json"
    return RESULTS_DIR / f"bench_{name}.json"


def write_results(path: Path, payload: dict[str, Any]) -> None:
    payload.setdefault("machine", {})["loadavg_end"] = loadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    print(f"\nresults written to {path}", flush=True)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET,
                        help="MVTec-AD layout folder (train/good, test/good)")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads (onnxruntime; torch.set_num_threads alike)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts, for the smoke test; writes to a temp file")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default bench/results/bench_<name>.json)")


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A bench script's parser: the first paragraph of its docstring, the common arguments."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    add_common_args(parser)
    return parser


def run_and_record(name: str, args: argparse.Namespace,
                   run: Callable[[argparse.Namespace], dict[str, Any]],
                   report: Callable[[dict[str, Any]], str]) -> int:
    """The end of a bench script's main: run it, print its table, write its results JSON."""
    data = run(args)
    print(report(data), flush=True)
    write_results(args.out or default_out(name, args.quick), data)
    return 0


# --------------------------------------------------------------------------- data

# The four shared evaluation sets (../shared/datasets), in the order the tables list them.
SETS = ("mvtec_bottle_512", "magnetic_tile", "mvtec_screw_512", "bsdata_pitting")


def images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"no such folder: {folder} (pass --dataset)")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def train_paths(dataset: Path, k: int) -> list[Path]:
    """The first ``k`` training images in name order (so smaller k are subsets of larger)."""
    pool = images_in(dataset / "train" / "good")
    if k > len(pool):
        raise SystemExit(f"k={k} but {dataset}/train/good has only {len(pool)} images")
    return pool[:k]


def test_paths(dataset: Path, n: int) -> list[Path]:
    """``n`` good test images (repeated if the split is smaller)."""
    pool = images_in(dataset / "test" / "good")
    if not pool:
        raise SystemExit(f"no images under {dataset}/test/good")
    return [pool[i % len(pool)] for i in range(n)]


def decode(path: Path) -> Any:
    """RGB ``(H, W, 3)`` uint8, decoded the way the service decodes uploads."""
    return decode_bytes(path.read_bytes())


def decode_bytes(data: bytes) -> Any:
    """``decode`` of bytes already read."""
    from app.detector.imaging import decode_image

    return decode_image(data).pixels


# --------------------------------------------------------------------------- fitting


def detector_config(resolution: int | None, precision: str = "float32",
                    preset: str | None = None) -> Any:
    """The default configuration (or ``preset``'s) at ``resolution`` and ``precision``."""
    from app.detector.config import DetectorConfig

    data: dict[str, Any] = {"resolution": resolution, "precision": precision}
    if preset is not None:
        data["preset"] = preset
    return DetectorConfig.from_dict(data)


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "app" / "detector").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def model_cache_path(dataset: Path, k: int, resolution: int | None, seed: int,
                     precision: str = "float32", preset: str | None = None) -> Path:
    key = json.dumps([str(dataset.resolve()), k, resolution, seed, _source_digest()]
                     + ([precision] if precision != "float32" else [])
                     + ([preset] if preset is not None else []))
    return CACHE_DIR / f"model-k{k}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def fit_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Fit one model through ``Detector.fit`` in this (fresh) process and report.

    The feature extractor's ONNX session is built (and timed) before the fit, as a running
    service has it cached after its first training; ``fit_s`` is the fit alone.
    """
    started = time.perf_counter()
    from app.detector.engine import Detector, resize_plan
    from app.detector.runtime import RuntimeOptions

    import_s = time.perf_counter() - started
    rss_imports = proc_status()
    t0 = time.perf_counter()
    images = [decode(p) for p in train_paths(args.dataset, args.k)]
    decode_s = time.perf_counter() - t0
    config = detector_config(args.resolution, args.precision, args.preset)
    detector = Detector(MODELS_DIR, RuntimeOptions(threads=args.threads))
    t0 = time.perf_counter()
    detector.extractor(config, resize_plan(config, images))
    extractor_s = time.perf_counter() - t0
    rss_before_fit = proc_status()
    t0 = time.perf_counter()
    fitted = detector.fit(images, config, seed=args.seed)
    fit_s = time.perf_counter() - t0
    if args.save:
        save = Path(args.save)
        save.parent.mkdir(parents=True, exist_ok=True)
        tmp = save.with_name(save.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(fitted.onnx_bytes)
        os.replace(tmp, save)
    status = proc_status()
    return {
        "k": args.k,
        "backbone": config.backbone,
        "resolution": config.resolution,
        "precision": config.precision,
        "threads": args.threads,
        "bank_size": fitted.bank_size,
        "onnx_bytes": len(fitted.onnx_bytes),
        "threshold": fitted.threshold,
        "import_s": round(import_s, 3),
        "decode_s": round(decode_s, 3),
        "extractor_build_s": round(extractor_s, 3),
        "fit_s": round(fit_s, 3),
        "timings": {k: round(v, 3) for k, v in fitted.timings.items()},
        "rss_after_imports_mib": rss_imports.get("vmrss_mib"),
        "rss_before_fit_mib": rss_before_fit.get("vmrss_mib"),
        "rss_end_mib": status.get("vmrss_mib"),
        "peak_rss_mib": peak_rss_mib(),
        "saved": str(args.save) if args.save else None,
    }


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    return env


def run_json(cmd: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run ``cmd`` (cwd: the repository) and parse the JSON object on its last stdout line."""
    proc = subprocess.run(list(cmd), cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                           f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def fit_in_subprocess(dataset: Path, k: int, resolution: int | None, threads: int, seed: int,
                      save: Path | None = None, timeout_s: float = 1800,
                      precision: str = "float32", preset: str | None = None) -> dict[str, Any]:
    cmd = python_cmd("bench.common", "fit", "--dataset", str(dataset), "--k", str(k),
                     "--threads", str(threads), "--seed", str(seed), "--precision", precision)
    if preset is not None:
        cmd += ["--preset", preset]
    if resolution is not None:
        cmd += ["--resolution", str(resolution)]
    if save is not None:
        cmd += ["--save", str(save)]
    return run_json(cmd, timeout_s)


def cached_model(dataset: Path, k: int, resolution: int | None, threads: int, seed: int,
                 precision: str = "float32", preset: str | None = None,
                 ) -> tuple[Path, dict[str, Any] | None]:
    """The fitted model's ONNX file for (dataset, k, resolution, seed, precision, preset; the
    default preset when None), fitted in a subprocess unless an earlier bench run left it in
    ``CACHE_DIR``. Returns (path, fit report or None)."""
    path = model_cache_path(dataset, k, resolution, seed, precision, preset)
    if path.exists():
        return path, None
    return path, fit_in_subprocess(dataset, k, resolution, threads, seed, save=path,
                                   precision=precision, preset=preset)


# --------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``nominal serve`` on a free loopback port with a temporary SQLite database and the
    bootstrap admin key set (and sent by ``client()``); stopped on exit."""

    def __init__(self, *, threads: int = 2, extra_env: dict[str, str] | None = None,
                 startup_timeout_s: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "bench-" + secrets.token_hex(16)
        self.tmp = Path(tempfile.mkdtemp(prefix="nominal-bench-"))
        self.log_path = self.tmp / "server.log"
        self.env = subprocess_env()
        self.env.update({
            "NOMINAL_DATABASE_URL": f"sqlite:///{self.tmp / 'bench.db'}",
            "NOMINAL_MODELS_DIR": str(MODELS_DIR),
            "NOMINAL_ADMIN_KEY": self.admin_key,
            "NOMINAL_LOG_LEVEL": "WARNING",
            "NOMINAL_LOG_FORMAT": "text",
            "NOMINAL_INFERENCE_THREADS": str(threads),
            "NOMINAL_TRAINING_THREADS": str(threads),
            **(extra_env or {}),
        })
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = math.nan

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("nominal")
        head = [str(script)] if script.exists() else python_cmd("app.cli")
        return [*head, "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self

    def start(self) -> None:
        """Start the process (again, after ``stop``: same database, port and key)."""
        import httpx

        started = time.perf_counter()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.tmp, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {self.startup_timeout_s} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)
        self.startup_s = time.perf_counter() - started

    def restart(self) -> None:
        self.stop()
        self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def memory(self) -> dict[str, float]:
        return proc_status(self.pid)

    def client(self, timeout_s: float = 300.0) -> Any:
        import httpx

        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.admin_key},
                            timeout=timeout_s)


def expect(response: Any, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"{response.request.method} {response.request.url} -> "
                           f"{response.status_code}: {response.text[:1000]}")
    return response


# The variant settings of the quick HTTP runs: small and fast, and since two images at 128 px
# make a model the quality gate may keep inactive, let it activate (they measure the inspect
# path, not the model).
QUICK_VARIANT_SETTINGS: dict[str, Any] = {"resolution": 128, "min_expected_auroc": 0.0}


def create_variant(client: Any, name: str, settings: dict[str, Any] | None = None) -> None:
    body: dict[str, Any] = {"name": name, "description": "benchmark"}
    if settings:
        body["settings"] = settings
    expect(client.post("/v1/variants", json=body), 201)


def upload_good(client: Any, name: str, paths: Sequence[Path]) -> None:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    expect(client.post(f"/v1/variants/{name}/images", files=files, data={"label": "good"}), 201)


def train_until_ready(client: Any, name: str, seed: int = 0, timeout_s: float = 1800,
                      poll_s: float = 0.02) -> tuple[float, dict[str, Any]]:
    """POST a training job and poll until it is ready: (seconds from POST to ready, model)."""
    started = time.perf_counter()
    job = expect(client.post(f"/v1/variants/{name}/models",
                             json={"seed": seed, "activate": True}), 202).json()
    deadline = time.monotonic() + timeout_s
    while True:
        model = expect(client.get(f"/v1/variants/{name}/models/{job['version']}"), 200).json()
        if model["status"] == "ready":
            return time.perf_counter() - started, model
        if model["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"training ended {model['status']}: {model.get('error')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"training not ready after {timeout_s} s")
        time.sleep(poll_s)


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bench worker: fit one model, print JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit")
    fit.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    fit.add_argument("--k", type=int, required=True)
    fit.add_argument("--resolution", type=int, default=None)
    fit.add_argument("--threads", type=int, default=2)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--precision", choices=["float32", "int8"], default="float32")
    fit.add_argument("--preset", default=None, help="a preset's configuration (default: the "
                     "default preset)")
    fit.add_argument("--save", type=Path, default=None, help="write the ONNX file here")
    args = parser.parse_args(argv)
    print(json.dumps(fit_worker(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
