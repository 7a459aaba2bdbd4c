"""Build the upgrade fixture: a database written by one release, for tests/upgrade.

The fixture pins what a release left in its users' databases (schema, rows, model files,
API key hashes) together with what that release answered for a few probe images. The upgrade
test loads it, migrates it with the code under test and requires the same answers, so every
later schema or graph change has to keep reading what this release wrote.

Run it against the release it pins, NEVER against the working tree: the interpreter must
import ``app`` from a clean checkout of that commit, for example

    git worktree add /tmp/release-702ceb0 702ceb0
    PYTHONPATH=/tmp/release-702ceb0 NOMINAL_MODELS_DIR=$PWD/models \\
        .venv/bin/python scripts/build_upgrade_fixture.py --release 702ceb0 --name release-0.1.0
    git worktree remove /tmp/release-702ceb0

(the backbones it trains with must exist in the models directory: ``nominal build-backbones
efficientnet_lite0 vit_small_l5``). The script refuses to run when ``app`` comes from a tree
that is not a clean checkout of ``--release``.

What it writes into ``tests/fixtures/upgrade/`` (``--out``):

    <name>.sqlite.gz      the SQLite database at the release's head revision (gzip, mtime 0)
    <name>.json           the manifest: commit, revision, rows, keys and expected answers
    <name>/<variant>/*.png  the probe images the expected answers belong to

Contents: variant ``bolt`` (efficientnet_lite0, float32): good and defect images, v1 (active),
v2 (ready, not active, another seed and augmentation), v3 (cancelled); variant ``gasket``
(vit_small_l5, int8, resolution 112): good images, v1 (active). API keys: an admin, an
inspector and a revoked inspector, with their plaintexts in the manifest (test keys, nothing
else uses them). Every image is generated here from fixed seeds.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP_KEY = "fixture-builder-bootstrap-key-0123"

# ---------------------------------------------------------------------------- images


def bolt_part(seed: int, height: int = 112, width: int = 112) -> np.ndarray:
    """A machined face: concentric grooves around the centre, a brushed gradient, seeded
    sensor noise. ``(height, width, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    radius = np.hypot(yy - cy, xx - cx)
    grooves = 45.0 * np.cos(2 * np.pi * radius / 9.0)
    brushed = 25.0 * np.sin(2 * np.pi * (xx + 0.3 * yy) / 37.0)
    grey = 140.0 + grooves + brushed
    image = np.stack([grey, grey * 0.95 + 8.0, grey * 0.9 + 16.0], axis=2)
    image += rng.normal(0.0, 3.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def gasket_part(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    """A rubber gasket surface: a woven crossing of two sine gratings in dark tints, plus a
    seeded low-frequency shading and noise. ``(height, width, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    weave = 35.0 * np.sin(2 * np.pi * (xx + yy) / 14.0) * np.sin(2 * np.pi * (xx - yy) / 22.0)
    phase = rng.uniform(0, 2 * np.pi)
    shade = 12.0 * np.sin(2 * np.pi * xx / width + phase)
    base = 90.0 + weave + shade
    image = np.stack([base * 0.7 + 10.0, base * 0.8 + 5.0, base], axis=2)
    image += rng.normal(0.0, 2.5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def with_disc(image: np.ndarray, centre: tuple[int, int], radius: int,
              colour: tuple[int, int, int]) -> np.ndarray:
    out = image.copy()
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    out[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius * radius] = colour
    return out


def with_scratch(image: np.ndarray, row: int, colour: tuple[int, int, int]) -> np.ndarray:
    out = image.copy()
    width = image.shape[1]
    for x in range(width // 5, 4 * width // 5):
        y = row + (x - width // 5) // 6
        out[y:y + 2, x] = colour
    return out


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def rescaled(pixels: np.ndarray, factor: float) -> np.ndarray:
    height, width = pixels.shape[:2]
    size = (round(width * factor), round(height * factor))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def variant_plan() -> list[dict[str, Any]]:
    """What goes into the database: variants, their images, training jobs, probe images."""
    return [
        {
            "name": "bolt",
            "description": "M8 bolt head, top camera (synthetic)",
            "settings": {"backbone": "efficientnet_lite0", "resolution": 96},
            "good": [png(bolt_part(seed)) for seed in range(4)],
            "defect": [png(with_disc(bolt_part(50), (40, 70), 7, (25, 20, 20)))],
            "jobs": [
                {"seed": 0, "activate": True},
                {"seed": 11, "activate": False, "settings": {"augment": "flip"}},
                {"seed": 12, "activate": True, "cancel": True},
            ],
            "probes": {
                "good-100.png": png(bolt_part(100)),
                "good-101-large.png": png(rescaled(bolt_part(101, 112, 140), 1.25)),
                "defect-disc.png": png(with_disc(bolt_part(102), (56, 56), 10, (20, 20, 20))),
                "defect-scratch.png": png(with_scratch(bolt_part(103), 30, (240, 240, 230))),
            },
        },
        {
            "name": "gasket",
            "description": "EPDM gasket, side camera (synthetic)",
            "settings": {"backbone": "vit_small_l5", "resolution": 112, "precision": "int8"},
            "good": [png(gasket_part(seed)) for seed in range(200, 204)],
            "defect": [],
            "jobs": [{"seed": 3, "activate": True}],
            "probes": {
                "good-300.png": png(gasket_part(300)),
                "defect-disc.png": png(with_disc(gasket_part(301), (48, 64), 9, (230, 220, 200))),
                "defect-scratch.png": png(with_scratch(gasket_part(302), 20, (10, 10, 10))),
            },
        },
    ]


# ---------------------------------------------------------------------------- checks


def release_tree(expected: str) -> tuple[Path, str]:
    """The checkout ``app`` is imported from, and its commit; exits unless it is a clean
    checkout of ``expected`` (a commit-ish)."""
    import app

    root = Path(app.__file__).resolve().parents[1]
    if root == REPO:
        sys.exit(f"app is imported from this working tree ({root}); point PYTHONPATH at a "
                 f"checkout of the release (git worktree add /tmp/release {expected})")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    head = git("rev-parse", "HEAD")
    wanted = git("rev-parse", f"{expected}^{{commit}}")
    if head != wanted:
        sys.exit(f"app comes from {root} at {head}, not the release {expected} ({wanted})")
    if git("status", "--porcelain", "--untracked-files=no"):
        sys.exit(f"{root} has local changes: the fixture must be what the release wrote")
    return root, head


# ---------------------------------------------------------------------------- build


def build(args: argparse.Namespace) -> None:
    root, commit = release_tree(args.release)
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")
    from alembic.migration import MigrationContext
    from fastapi.testclient import TestClient
    from pydantic import SecretStr
    from sqlalchemy import create_engine

    import app
    from app.db.migrate import upgrade_to_head
    from app.main import create_app
    from app.settings import Settings

    models_dir = Path(args.models_dir).resolve()
    out = Path(args.out).resolve()
    name = args.name
    workdir = Path(tempfile.mkdtemp(prefix="nominal-upgrade-fixture-"))
    db_path = workdir / "nominal.db"
    url = f"sqlite:///{db_path}"
    upgrade_to_head(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    engine.dispose()
    print(f"release {commit[:10]} from {root}: schema at revision {revision}")

    settings = Settings(
        database_url=url, models_dir=models_dir, admin_key=SecretStr(BOOTSTRAP_KEY),
        auth_enabled=True,
        initial_key_file=workdir / "initial-admin-key", preload_backbones=(),
        job_poll_interval_s=0.05, job_progress_interval_s=0.0, training_threads=2,
        inference_threads=1, inference_workers=1, log_level="WARNING", log_format="text",
    )
    manifest: dict[str, Any] = {
        "release": {"commit": commit, "version": getattr(app, "__version__", None)},
        "alembic_revision": revision,
        "database": f"{name}.sqlite.gz",
        "built": {"python": platform.python_version(), "machine": platform.machine(),
                  "onnxruntime": __import__("onnxruntime").__version__},
        "tolerance": {"score_rel": 1e-5},
        "api_keys": [],
        "variants": [],
    }
    with TestClient(create_app(settings), headers={"X-API-Key": BOOTSTRAP_KEY}) as client:

        def ok(response: Any, status: int = 200) -> Any:
            if response.status_code != status:
                sys.exit(f"{response.request.method} {response.request.url}: "
                         f"{response.status_code} {response.text}")
            return response.json() if response.content else None

        for key_name, role, revoke in (("fixture-admin", "admin", False),
                                       ("line-1-camera", "inspector", False),
                                       ("retired-camera", "inspector", True)):
            created = ok(client.post("/v1/api-keys", json={"name": key_name, "role": role}), 201)
            if revoke:
                ok(client.delete(f"/v1/api-keys/{created['id']}"), 204)
            manifest["api_keys"].append({"id": created["id"], "name": key_name, "role": role,
                                         "key": created["key"], "revoked": revoke})

        for plan in variant_plan():
            vname = plan["name"]
            ok(client.post("/v1/variants", json={"name": vname, "description": plan["description"],
                                                 "settings": plan["settings"]}), 201)
            for label, blobs in (("good", plan["good"]), ("defect", plan["defect"])):
                if blobs:
                    files = [("files", (f"{vname}-{label}-{i}.png", b, "image/png"))
                             for i, b in enumerate(blobs)]
                    ok(client.post(f"/v1/variants/{vname}/images", files=files,
                                   data={"label": label}), 201)
            for job in plan["jobs"]:
                body = {k: v for k, v in job.items() if k != "cancel"}
                queued = ok(client.post(f"/v1/variants/{vname}/models", json=body), 202)
                version = queued["version"]
                if job.get("cancel"):
                    ok(client.post(f"/v1/variants/{vname}/models/{version}/cancel"))
                deadline = time.monotonic() + 600
                while True:
                    state = ok(client.get(f"/v1/variants/{vname}/models/{version}"))
                    if state["status"] in ("ready", "failed", "cancelled"):
                        break
                    if time.monotonic() > deadline:
                        sys.exit(f"{vname} v{version} still {state['status']}")
                    time.sleep(0.1)
                wanted = "cancelled" if job.get("cancel") else "ready"
                if state["status"] != wanted:
                    sys.exit(f"{vname} v{version}: {state['status']} ({state['error']})")
                print(f"{vname} v{version}: {state['status']}")

            variant = ok(client.get(f"/v1/variants/{vname}"))
            active = variant["active_model_version"]
            probes_dir = out / name / vname
            if probes_dir.exists():
                shutil.rmtree(probes_dir)
            probes_dir.mkdir(parents=True)
            for probe, data in plan["probes"].items():
                (probes_dir / probe).write_bytes(data)
            models = ok(client.get(f"/v1/variants/{vname}/models"))["items"]
            entries = []
            for model in sorted(models, key=lambda m: m["version"]):
                entry: dict[str, Any] = {"version": model["version"], "status": model["status"],
                                         "is_active": model["version"] == active}
                if model["status"] == "ready":
                    version = model["version"]
                    onnx_bytes = client.get(f"/v1/variants/{vname}/models/{version}/onnx").content
                    ok(client.post(f"/v1/variants/{vname}/models/{version}/activate"))
                    answers = {}
                    for probe, data in plan["probes"].items():
                        got = ok(client.post(f"/v1/variants/{vname}/inspect", content=data,
                                             headers={"Content-Type": "image/png"}))
                        answers[probe] = {k: got[k] for k in ("score", "normalized_score",
                                                              "is_anomalous", "width", "height")}
                        if got["model_version"] != version:
                            sys.exit(f"{vname}: inspect answered v{got['model_version']}")
                    plain = plain_onnxruntime_scores(onnx_bytes, plan["probes"])
                    for probe, score in plain.items():
                        expected = answers[probe]["score"]
                        if abs(score - expected) > 1e-5 * abs(expected):
                            sys.exit(f"{vname} v{version} {probe}: plain onnxruntime {score} vs "
                                     f"service {expected}")
                    entry.update(
                        backbone=model["config"]["backbone"],
                        precision=model["config"]["precision"],
                        resolution=model["config"]["resolution"],
                        threshold=model["threshold"], bank_size=model["bank_size"],
                        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                        onnx_size_bytes=len(onnx_bytes), probes=answers,
                    )
                    print(f"{vname} v{version}: {len(onnx_bytes) / 1e6:.1f} MB, "
                          + ", ".join(f"{p} {a['score']:.4f}" for p, a in answers.items()))
                entries.append(entry)
            if active is not None:
                ok(client.post(f"/v1/variants/{vname}/models/{active}/activate"))
            manifest["variants"].append({
                "name": vname, "description": plan["description"],
                "settings": plan["settings"], "active_model_version": active,
                "n_good_images": len(plan["good"]), "n_defect_images": len(plan["defect"]),
                "image_sha256": sorted(hashlib.sha256(b).hexdigest()
                                       for b in plan["good"] + plan["defect"]),
                "probes_dir": f"{name}/{vname}", "models": entries,
            })

    # Compact (deleted rows, freed pages), then gzip without a timestamp.
    with sqlite3.connect(db_path) as db:
        db.execute("VACUUM")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.sqlite.gz"
    with open(db_path, "rb") as source, open(target, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        shutil.copyfileobj(source, gz)
    (out / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{target}: {target.stat().st_size / 1e6:.1f} MB "
          f"(database {db_path.stat().st_size / 1e6:.1f} MB)")
    shutil.rmtree(workdir)


def plain_onnxruntime_scores(onnx_bytes: bytes, probes: dict[str, bytes]) -> dict[str, float]:
    """Each probe's score from the file alone, in a default onnxruntime session."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    scores = {}
    for probe, data in probes.items():
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        (score,) = session.run(["score"], {"image": pixels})
        scores[probe] = float(score[0])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="the commit app must be imported from")
    parser.add_argument("--name", required=True, help="file name stem, e.g. release-0.1.0")
    parser.add_argument("--models-dir", default=os.environ.get("NOMINAL_MODELS_DIR",
                                                               str(REPO / "models")))
    parser.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "upgrade"))
    build(parser.parse_args())


if __name__ == "__main__":
    main()
