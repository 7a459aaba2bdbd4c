"""API keys and roles.

``ACCESS`` is the decision for every route of the OpenAPI document: a route added without an
entry fails ``test_every_route_has_a_decision``; ``test_role_boundaries`` then proves each
decision over HTTP (no key, a wrong key, an inspector key, an admin key) and that an
inspector's refused request changed nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from app.api.security import AccessRoute, InspectorAccess, check_access_decisions
from app.db.models import ApiKey

PUBLIC, INSPECTOR, OPERATOR, ADMIN = "public", "inspector", "operator", "admin"

ACCESS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/v1/backbones"): INSPECTOR,
    ("GET", "/v1/presets"): INSPECTOR,
    ("GET", "/v1/variants"): INSPECTOR,
    ("POST", "/v1/variants"): ADMIN,
    ("GET", "/v1/variants/{name}"): INSPECTOR,
    ("PATCH", "/v1/variants/{name}"): ADMIN,
    ("DELETE", "/v1/variants/{name}"): ADMIN,
    ("POST", "/v1/variants/{name}/images"): ADMIN,
    ("GET", "/v1/variants/{name}/images"): ADMIN,
    ("GET", "/v1/variants/{name}/images/{image_id}"): ADMIN,
    ("GET", "/v1/variants/{name}/images/{image_id}/content"): ADMIN,
    ("DELETE", "/v1/variants/{name}/images/{image_id}"): ADMIN,
    ("POST", "/v1/variants/{name}/models"): ADMIN,
    ("GET", "/v1/variants/{name}/models"): INSPECTOR,
    ("GET", "/v1/variants/{name}/models/{version}"): INSPECTOR,
    ("POST", "/v1/variants/{name}/models/{version}/cancel"): ADMIN,
    ("POST", "/v1/variants/{name}/models/{version}/activate"): ADMIN,
    ("DELETE", "/v1/variants/{name}/models/{version}"): ADMIN,
    ("GET", "/v1/variants/{name}/models/{version}/onnx"): ADMIN,
    ("POST", "/v1/variants/{name}/inspect"): INSPECTOR,
    ("POST", "/v1/variants/{name}/inspect/batch"): INSPECTOR,
    ("GET", "/v1/records"): OPERATOR,
    ("GET", "/v1/records/export"): OPERATOR,
    ("GET", "/v1/records/{record_id}"): OPERATOR,
    ("GET", "/v1/records/{record_id}/image"): OPERATOR,
    ("GET", "/v1/records/{record_id}/heatmap"): OPERATOR,
    ("POST", "/v1/records/{record_id}/feedback"): OPERATOR,
    ("POST", "/v1/records/{record_id}/promote"): OPERATOR,
    ("POST", "/v1/api-keys"): ADMIN,
    ("GET", "/v1/api-keys"): ADMIN,
    ("DELETE", "/v1/api-keys/{key_id}"): ADMIN,
}


def _image(images: Any) -> bytes:
    return images.good_png(7)  # type: ignore[no-any-return]


# A request that would succeed (or at least be valid) were the role allowed: the 403 must come
# from the role, not from a bad request. Every route that is not a GET needs one.
_NO_BODY: Callable[[Any], dict[str, Any]] = lambda im: {}  # noqa: E731
REQUESTS: dict[tuple[str, str], Callable[[Any], dict[str, Any]]] = {
    ("DELETE", "/v1/variants/{name}"): _NO_BODY,
    ("DELETE", "/v1/variants/{name}/images/{image_id}"): _NO_BODY,
    ("POST", "/v1/variants/{name}/models/{version}/cancel"): _NO_BODY,
    ("POST", "/v1/variants/{name}/models/{version}/activate"): _NO_BODY,
    ("DELETE", "/v1/variants/{name}/models/{version}"): _NO_BODY,
    ("DELETE", "/v1/api-keys/{key_id}"): _NO_BODY,
    ("POST", "/v1/variants"): lambda im: {"json": {"name": "intruder"}},
    ("PATCH", "/v1/variants/{name}"): lambda im: {"json": {"description": "changed"}},
    ("POST", "/v1/variants/{name}/images"): lambda im: {
        "files": [("files", ("x.png", _image(im), "image/png"))]},
    ("POST", "/v1/variants/{name}/models"): lambda im: {"json": {"seed": 1}},
    ("POST", "/v1/variants/{name}/inspect"): lambda im: {
        "content": _image(im), "headers": {"content-type": "image/png"}},
    ("POST", "/v1/variants/{name}/inspect/batch"): lambda im: {
        "files": [("files", ("x.png", _image(im), "image/png"))]},
    ("POST", "/v1/api-keys"): lambda im: {"json": {"name": "intruder", "role": "admin"}},
    ("POST", "/v1/records/{record_id}/feedback"): lambda im: {"json": {"label": "good"}},
    ("POST", "/v1/records/{record_id}/promote"): lambda im: {"json": {"label": "good"}},
}

PATH_VALUES = {"{name}": "bolt", "{version}": "1", "{image_id}": "1", "{key_id}": "1",
               "{record_id}": "1"}


def concrete(path: str) -> str:
    for placeholder, value in PATH_VALUES.items():
        path = path.replace(placeholder, value)
    return path


def send(client: TestClient, method: str, path: str, key: str | None,
         **kwargs: Any) -> Any:
    """``client`` sends the admin key by default; send ``key`` (None: no key at all) instead."""
    saved = client.headers.pop("X-API-Key", None)
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["X-API-Key"] = key
    try:
        return client.request(method, path, headers=headers, **kwargs)
    finally:
        if saved is not None:
            client.headers["X-API-Key"] = saved


def create_key(client: TestClient, role: str, name: str | None = None) -> dict[str, Any]:
    response = client.post("/v1/api-keys", json={"name": name or f"{role}-key", "role": role})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def snapshot(client: TestClient) -> dict[str, Any]:
    """Everything an inspector might have changed, read with the admin key."""
    variants = client.get("/v1/variants").json()
    out: dict[str, Any] = {"variants": variants, "keys": client.get("/v1/api-keys").json()}
    for item in variants["items"]:
        name = item["name"]
        out[name] = {
            "images": client.get(f"/v1/variants/{name}/images").json(),
            "models": [{k: v for k, v in m.items() if k not in ("progress", "stage")}
                       for m in client.get(f"/v1/variants/{name}/models").json()["items"]],
        }
    return out


def test_every_route_has_a_decision(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    routes = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert routes - set(ACCESS) == set(), "routes without an access decision in ACCESS"
    assert set(ACCESS) - routes == set(), "ACCESS lists routes that no longer exist"
    # The documentation states the same decisions.
    documented = {(method.upper(), path): op.get("x-required-role", PUBLIC)
                  for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert documented == ACCESS
    unsafe = {route for route in ACCESS if route[0] != "GET"}
    assert unsafe == set(REQUESTS), "every non-GET route needs a valid request in REQUESTS"


def test_role_boundaries(trained: Any, client: TestClient, images: Any,
                         problem: Callable[[Any, int], dict[str, Any]]) -> None:
    inspector = create_key(client, "inspector")["key"]
    operator = create_key(client, "operator")["key"]
    create_key(client, "admin", "second-admin")
    # A record to read and give feedback on, its image kept (the verdict is anomalous).
    assert client.post("/v1/variants/bolt/inspect", content=images.defect_png(3),
                       headers={"content-type": "image/png"}).json()["record_id"] == 1
    before = snapshot(client)
    for (method, template), decision in sorted(ACCESS.items()):
        path = concrete(template)
        where = f"{method} {template}"
        request = REQUESTS.get((method, template), _NO_BODY)

        for key in (None, "", "wrong-key-" * 3, inspector[:-1] + "x", inspector + "x"):
            response = send(client, method, path, key, **request(images))
            if decision == PUBLIC:
                assert response.status_code not in (401, 403), where
                continue
            body = problem(response, 401)
            assert response.headers["www-authenticate"].startswith("ApiKey"), where
            assert "key" in body["detail"], where

        response = send(client, method, path, inspector, **request(images))
        if decision in (ADMIN, OPERATOR):
            body = problem(response, 403)
            assert f"{decision} role" in body["detail"] and "inspector" in body["detail"], where
        else:
            assert response.status_code not in (401, 403), (where, response.text)

    # Nothing an inspector was refused happened, and nothing it was allowed changes state
    # (its inspections are recorded: that is what records are).
    assert snapshot(client) == before

    for (method, template), decision in sorted(ACCESS.items()):
        response = send(client, method, concrete(template), operator,
                        **REQUESTS.get((method, template), _NO_BODY)(images))
        where = f"{method} {template}"
        if decision == ADMIN:
            body = problem(response, 403)
            assert "admin role" in body["detail"] and "operator" in body["detail"], where
        else:
            assert response.status_code not in (401, 403), (where, response.text)

    # The admin key may call every route (run last: some of these delete things).
    for (method, template), _ in sorted(ACCESS.items(), key=lambda item: item[0][0] == "DELETE"):
        request = REQUESTS.get((method, template), _NO_BODY)
        response = client.request(method, concrete(template), **request(images))
        assert response.status_code not in (401, 403), (method, template, response.text)


def test_refused_before_the_body_is_read(client: TestClient, images: Any,
                                         problem: Callable[[Any, int], dict[str, Any]]) -> None:
    """401 comes first: not a 400 for a broken multipart body, a 422 for bad JSON, or a 404
    telling an anonymous caller which variants exist."""
    problem(send(client, "POST", "/v1/variants/ghost/images", None, content=b"--broken",
                 headers={"content-type": "multipart/form-data; boundary=zzz"}), 401)
    problem(send(client, "POST", "/v1/variants", None, content=b"{not json",
                 headers={"content-type": "application/json"}), 401)
    problem(send(client, "GET", "/v1/variants/ghost", None), 401)
    inspector = create_key(client, "inspector")["key"]
    problem(send(client, "POST", "/v1/variants", inspector, content=b"{not json",
                 headers={"content-type": "application/json"}), 403)


def test_key_lifecycle(client: TestClient, database_url: str,
                       problem: Callable[[Any, int], dict[str, Any]]) -> None:
    created = create_key(client, "inspector", "line-3")
    assert set(created) == {"id", "name", "role", "key", "created_at"}
    assert created["name"] == "line-3" and created["role"] == "inspector"
    key = created["key"]
    assert key.startswith("nom_") and len(key) > 50

    listed = client.get("/v1/api-keys").json()
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and key not in client.get("/v1/api-keys").text

    # Stored as a hash only: the key appears in no column.
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(select(ApiKey.__table__)).one()
    finally:
        engine.dispose()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in " ".join(str(value) for value in row)

    assert send(client, "GET", "/v1/variants", key).status_code == 200
    # Bearer works too (for scrapers that only do bearer tokens).
    response = send(client, "GET", "/v1/variants", None,
                    headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200

    assert client.delete(f"/v1/api-keys/{created['id']}").status_code == 204
    problem(send(client, "GET", "/v1/variants", key), 401)
    problem(client.delete(f"/v1/api-keys/{created['id']}"), 404)
    assert client.get("/v1/api-keys").json() == []


def test_stored_admin_key_manages_keys(client: TestClient,
                                       problem: Callable[[Any, int], dict[str, Any]]) -> None:
    admin = create_key(client, "admin", "ops")["key"]
    response = send(client, "POST", "/v1/api-keys", admin,
                    json={"name": "made-by-ops", "role": "inspector"})
    assert response.status_code == 201, response.text
    problem(send(client, "POST", "/v1/api-keys", admin, json={"name": "x", "role": "root"}), 422)
    problem(send(client, "POST", "/v1/api-keys", admin, json={"name": "", "role": "admin"}), 422)


def test_last_admin_key_is_kept_without_a_bootstrap_key(
        make_client: Callable[..., TestClient], admin_key: str,
        problem: Callable[[Any, int], dict[str, Any]]) -> None:
    bootstrap = make_client()
    first = create_key(bootstrap, "admin", "first")
    second = create_key(bootstrap, "admin", "second")
    # The same database, served without NOMINAL_ADMIN_KEY: stored admin keys only.
    client = make_client(api_key=first["key"], admin_key=None)
    problem(send(client, "GET", "/v1/variants", admin_key), 401)
    assert client.delete(f"/v1/api-keys/{second['id']}").status_code == 204
    body = problem(client.delete(f"/v1/api-keys/{first['id']}"), 409)
    assert "last admin key" in body["detail"]


def test_probes_and_docs_stay_open(make_client: Callable[..., TestClient]) -> None:
    anonymous = make_client(api_key=None)
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert anonymous.get(path).status_code in (200, 503), path


def test_metrics_can_be_protected_or_off(make_client: Callable[..., TestClient],
                                         problem: Callable[[Any, int], dict[str, Any]]) -> None:
    admin = make_client()
    inspector = create_key(admin, "inspector")["key"]
    protected = make_client(api_key=None, metrics_access="key")
    problem(protected.get("/metrics"), 401)
    response = protected.get("/metrics", headers={"Authorization": f"Bearer {inspector}"})
    assert response.status_code == 200 and "nominal_http_requests_total" in response.text
    assert protected.get("/healthz").status_code == 200
    off = make_client(api_key=None, metrics_access="off")
    problem(off.get("/metrics"), 404)


def test_auth_off_only_explicitly_and_loudly(make_client: Callable[..., TestClient],
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.main"):
        open_client = make_client(api_key=None, auth_enabled=False, admin_key=None)
    assert any("authentication is OFF" in r.getMessage() for r in caplog.records)
    assert open_client.get("/v1/variants").status_code == 200
    assert open_client.post("/v1/variants", json={"name": "dev"}).status_code == 201


def test_no_admin_key_at_all_is_warned_about(make_client: Callable[..., TestClient],
                                             tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    # No NOMINAL_ADMIN_KEY, no stored admin key, and the first-run key file cannot be written.
    (tmp_path / "file").write_text("")
    with caplog.at_level(logging.WARNING, logger="app.main"):
        make_client(api_key=None, admin_key=None, initial_key_file=tmp_path / "file" / "key")
    assert any("no admin key" in r.getMessage() for r in caplog.records)


def test_short_admin_key_fails_fast(settings: Any) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="16 characters"):
        Settings(database_url=settings.database_url, admin_key="short")


def test_a_v1_route_without_a_decision_fails_the_build() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/v1/things", route_class=AccessRoute)

    @router.get("")
    def things() -> list[str]:
        return []

    app.include_router(router)
    with pytest.raises(RuntimeError, match="/v1/things"):
        check_access_decisions(app.routes)

    plain = APIRouter(prefix="/v1/other")  # a decision the route class would not enforce

    @plain.get("", dependencies=[InspectorAccess])
    def other() -> list[str]:
        return []

    app = FastAPI()
    app.include_router(plain)
    with pytest.raises(RuntimeError, match="/v1/other"):
        check_access_decisions(app.routes)
