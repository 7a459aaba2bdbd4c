"""A released database still works after ``upgrade head`` with the code under test.

Each pinned release (``tests/fixtures/upgrade/``, see ``_release.py``) is loaded at its own
revision on SQLite and on PostgreSQL, migrated by this code's ``upgrade_to_head`` and served by
this code's app. Then every model the release trained must give the release's scores for the
probe images (relative 1e-5) and verdicts, through the API and as a downloaded file in plain
onnxruntime; the release's API keys must still authenticate with their roles (and the revoked
one must not); variants, images, model versions and their states must all still be there.

Every later schema change (a migration) and graph or format change (``app.detector``) has to
keep this green. A new release is pinned by building its own fixture with
``scripts/build_upgrade_fixture.py``; the old ones stay.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from PIL import Image

from app.db.migrate import alembic_config, current_revision, upgrade_to_head
from app.detector.runtime import read_format_version
from app.main import create_app
from tests.conftest import make_settings
from tests.upgrade._release import manifest, probe_bytes, release_database, releases


@dataclass
class Upgraded:
    """A release's database after ``upgrade head``, served by the current app."""

    release: str
    manifest: dict[str, Any]
    url: str
    client: TestClient  # sends no key: every call names its own
    initial_key_file: Path
    migrate_s: float

    def key(self, name: str) -> str:
        (entry,) = [k for k in self.manifest["api_keys"] if k["name"] == name]
        return str(entry["key"])

    def role_key(self, role: str) -> str:
        return next(k["key"] for k in self.manifest["api_keys"]
                    if k["role"] == role and not k["revoked"])

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, headers={"X-API-Key": self.role_key("admin")},
                                   **kwargs)

    def inspect(self, variant: str, data: bytes) -> dict[str, Any]:
        response = self.client.post(f"/v1/variants/{variant}/inspect", content=data, headers={
            "X-API-Key": self.role_key("inspector"), "Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def _cases() -> list[Any]:
    return [pytest.param((kind, release), id=f"{release}-{kind}")
            for release in releases() for kind in ("sqlite", "postgresql")]


@pytest.fixture(scope="module", params=_cases())
def upgraded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             models_dir: Path) -> Iterator[Upgraded]:
    kind, release = request.param
    tmp = tmp_path_factory.mktemp(f"{release}-{kind}")
    with release_database(kind, release, tmp) as url:
        started = time.perf_counter()
        upgrade_to_head(url)
        migrate_s = time.perf_counter() - started
        key_file = tmp / "keys" / "initial-admin-key"
        # No NOMINAL_ADMIN_KEY: the release's stored keys are the only way in.
        settings = make_settings(url, models_dir, admin_key=None, initial_key_file=key_file)
        with TestClient(create_app(settings)) as client:
            yield Upgraded(release=release, manifest=manifest(release), url=url, client=client,
                           initial_key_file=key_file, migrate_s=migrate_s)


def _close(actual: float, expected: float, rel: float) -> bool:
    return abs(actual - expected) <= rel * max(abs(expected), 1e-12)


def _ready(variant: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in variant["models"] if m["status"] == "ready"]


def _check_answers(up: Upgraded, variant: dict[str, Any], model: dict[str, Any]) -> list[str]:
    """Inspect every probe image with the variant's active model (which must be ``model``);
    the differences from the release's answers."""
    rel = up.manifest["tolerance"]["score_rel"]
    wrong = []
    for probe, data in probe_bytes(up.release, variant).items():
        expected = model["probes"][probe]
        got = up.inspect(variant["name"], data)
        where = f"{variant['name']} v{model['version']} {probe}"
        assert got["model_version"] == model["version"], where
        if not _close(got["score"], expected["score"], rel):
            wrong.append(f"{where}: score {got['score']!r}, the release gave {expected['score']!r}")
        if not _close(got["normalized_score"], expected["normalized_score"], rel):
            wrong.append(f"{where}: normalized_score {got['normalized_score']!r}, the release gave "
                         f"{expected['normalized_score']!r}")
        if got["is_anomalous"] != expected["is_anomalous"]:
            wrong.append(f"{where}: is_anomalous {got['is_anomalous']}, the release said "
                         f"{expected['is_anomalous']}")
        if (got["width"], got["height"]) != (expected["width"], expected["height"]):
            wrong.append(f"{where}: size {got['width']}x{got['height']}")
        if not _close(got["threshold"], model["threshold"], rel):
            wrong.append(f"{where}: threshold {got['threshold']!r} != {model['threshold']!r}")
    return wrong


def test_schema_is_at_head(upgraded: Upgraded) -> None:
    head = ScriptDirectory.from_config(alembic_config(upgraded.url)).get_current_head()
    assert current_revision(upgraded.url) == head
    assert upgraded.migrate_s < 60, f"upgrade took {upgraded.migrate_s:.1f} s"


def test_variants_images_and_models_are_all_there(upgraded: Upgraded) -> None:
    pinned = upgraded.manifest["variants"]
    listed = upgraded.admin("GET", "/v1/variants")
    assert listed.status_code == 200, listed.text
    assert sorted(v["name"] for v in listed.json()["items"]) == sorted(v["name"] for v in pinned)
    for variant in pinned:
        name = variant["name"]
        body = upgraded.admin("GET", f"/v1/variants/{name}").json()
        assert body["description"] == variant["description"]
        for key, value in variant["settings"].items():
            assert body["settings"][key] == value, (name, key)
        assert body["active_model_version"] == variant["active_model_version"]
        assert (body["n_good_images"], body["n_defect_images"]) == (
            variant["n_good_images"], variant["n_defect_images"])

        images = upgraded.admin("GET", f"/v1/variants/{name}/images").json()
        assert images["total"] == variant["n_good_images"] + variant["n_defect_images"]
        assert sorted(i["sha256"] for i in images["items"]) == variant["image_sha256"]
        for image in images["items"]:  # the bytes themselves, not only their recorded hash
            content = upgraded.admin("GET", f"/v1/variants/{name}/images/{image['id']}/content")
            assert content.status_code == 200
            assert hashlib.sha256(content.content).hexdigest() == image["sha256"]

        models = upgraded.admin("GET", f"/v1/variants/{name}/models").json()["items"]
        assert sorted((m["version"], m["status"], m["is_active"]) for m in models) == sorted(
            (m["version"], m["status"], m["is_active"]) for m in variant["models"])
        for model in _ready(variant):
            got = next(m for m in models if m["version"] == model["version"])
            assert got["config"]["backbone"] == model["backbone"]
            assert got["config"]["precision"] == model["precision"]
            assert got["bank_size"] == model["bank_size"]
            assert _close(got["threshold"], model["threshold"], 1e-12)


def test_active_models_score_as_the_release_did(upgraded: Upgraded) -> None:
    wrong = []
    for variant in upgraded.manifest["variants"]:
        (active,) = [m for m in variant["models"] if m["is_active"]]
        wrong += _check_answers(upgraded, variant, active)
    assert not wrong, "\n".join(wrong)


def test_every_stored_version_scores_as_the_release_did(upgraded: Upgraded) -> None:
    """Inspect has no version parameter: each other ready version is activated in turn, then
    the release's active version is restored."""
    wrong = []
    for variant in upgraded.manifest["variants"]:
        name = variant["name"]
        others = [m for m in _ready(variant) if not m["is_active"]]
        try:
            for model in others:
                response = upgraded.admin(
                    "POST", f"/v1/variants/{name}/models/{model['version']}/activate")
                assert response.status_code == 200, response.text
                wrong += _check_answers(upgraded, variant, model)
        finally:
            if others:
                response = upgraded.admin("POST", f"/v1/variants/{name}/models/"
                                                  f"{variant['active_model_version']}/activate")
                assert response.status_code == 200, response.text
    assert not wrong, "\n".join(wrong)


def test_downloaded_models_score_alike_in_plain_onnxruntime(upgraded: Upgraded) -> None:
    rel = upgraded.manifest["tolerance"]["score_rel"]
    wrong = []
    for variant in upgraded.manifest["variants"]:
        probes = probe_bytes(upgraded.release, variant)
        for model in _ready(variant):
            response = upgraded.admin(
                "GET", f"/v1/variants/{variant['name']}/models/{model['version']}/onnx")
            assert response.status_code == 200, response.text
            props = {p.key: p.value for p in onnx.load_from_string(response.content).metadata_props}
            assert read_format_version(props) >= 1
            session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
            for probe, data in probes.items():
                pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                (score,) = session.run(["score"], {"image": pixels})
                expected = model["probes"][probe]["score"]
                if not _close(float(score[0]), expected, rel):
                    wrong.append(f"{variant['name']} v{model['version']} {probe}: "
                                 f"{float(score[0])!r}, the release gave {expected!r}")
    assert not wrong, "\n".join(wrong)


def test_api_keys_still_authenticate_with_their_roles(upgraded: Upgraded) -> None:
    client = upgraded.client
    admin, inspector = upgraded.role_key("admin"), upgraded.role_key("inspector")

    listed = client.get("/v1/api-keys", headers={"X-API-Key": admin})
    assert listed.status_code == 200, listed.text
    assert sorted((k["id"], k["name"], k["role"]) for k in listed.json()) == sorted(
        (k["id"], k["name"], k["role"]) for k in upgraded.manifest["api_keys"] if not k["revoked"])

    assert client.get("/v1/variants", headers={"X-API-Key": inspector}).status_code == 200
    forbidden = client.get("/v1/api-keys", headers={"X-API-Key": inspector})
    assert forbidden.status_code == 403, forbidden.text

    for revoked in (k for k in upgraded.manifest["api_keys"] if k["revoked"]):
        gone = client.get("/v1/variants", headers={"X-API-Key": revoked["key"]})
        assert gone.status_code == 401, gone.text
    wrong = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    assert client.get("/v1/variants", headers={"X-API-Key": wrong}).status_code == 401
    assert client.get("/v1/variants").status_code == 401
    # The release's admin key was found: no initial admin key was made at start-up.
    assert not upgraded.initial_key_file.exists()


def test_upgraded_database_takes_new_work(upgraded: Upgraded) -> None:
    """New rows after the copied ones (PostgreSQL: the id sequences moved past them), and model
    versions go on from the release's last one (never reused). Cleans up after itself."""
    up = upgraded
    created = up.admin("POST", "/v1/api-keys", json={"name": "after-upgrade", "role": "inspector"})
    assert created.status_code == 201, created.text
    new_key = created.json()
    # (SQLite may hand out the id of the revoked key again: only stored rows count.)
    assert new_key["id"] > max(k["id"] for k in up.manifest["api_keys"] if not k["revoked"])
    variant = up.admin("POST", "/v1/variants", json={"name": "after-upgrade"})
    assert variant.status_code == 201, variant.text
    try:
        assert up.client.get("/v1/variants/after-upgrade",
                             headers={"X-API-Key": new_key["key"]}).status_code == 200
        bolt = next(v for v in up.manifest["variants"] if v["name"] == "bolt")
        queued = up.admin("POST", "/v1/variants/bolt/models", json={"seed": 1, "activate": False})
        assert queued.status_code == 202, queued.text
        version = queued.json()["version"]
        assert version == max(m["version"] for m in bolt["models"]) + 1
        deadline = time.monotonic() + 120
        while (state := up.admin("GET", f"/v1/variants/bolt/models/{version}").json())[
                "status"] not in ("ready", "failed", "cancelled"):
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert state["status"] == "ready", state
        assert up.admin("DELETE", f"/v1/variants/bolt/models/{version}").status_code == 204
    finally:
        assert up.admin("DELETE", "/v1/variants/after-upgrade").status_code == 204
        assert up.admin("DELETE", f"/v1/api-keys/{new_key['id']}").status_code == 204


def test_a_release_model_cannot_take_a_layout(upgraded: Upgraded) -> None:
    """A format-1 model has no layout constants: 409, nothing stored, the active version
    stays and still scores as the release did; an empty layout is no change at all."""
    bolt = next(v for v in upgraded.manifest["variants"] if v["name"] == "bolt")
    layout = {"ignore": [{"x": 0.0, "y": 0.0, "width": 0.5, "height": 0.5}]}
    before = upgraded.admin("GET", "/v1/variants/bolt").json()
    answer = upgraded.admin("PATCH", "/v1/variants/bolt", json={"layout": layout})
    assert answer.status_code == 409, answer.text
    assert "no layout constants" in answer.json()["detail"]
    assert upgraded.admin("GET", "/v1/variants/bolt").json() == before
    (active,) = [m for m in bolt["models"] if m["is_active"]]
    assert not _check_answers(upgraded, bolt, active)
    empty = upgraded.admin("PATCH", "/v1/variants/bolt", json={"layout": {}})
    assert empty.status_code == 200, empty.text
    assert empty.json()["active_model_version"] == bolt["active_model_version"]
    models = upgraded.admin("GET", "/v1/variants/bolt/models").json()
    assert models["total"] == len(bolt["models"])
