"""X-API-Key: required on /v1 when NOMINAL_ADMIN_KEY is set; probes and docs stay open."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.deps import Principal, authenticate

KEY = "k" * 24


@pytest.fixture
def locked(make_client: Any) -> TestClient:
    return make_client(admin_key=KEY)  # type: ignore[no-any-return]


def test_v1_requires_the_key(locked: TestClient, problem: Any) -> None:
    for method, path in (("GET", "/v1/variants"), ("POST", "/v1/variants"),
                         ("GET", "/v1/backbones"), ("GET", "/v1/variants/x/models"),
                         ("POST", "/v1/variants/x/inspect")):
        response = locked.request(method, path)
        body = problem(response, 401)
        assert "X-API-Key" in body["detail"]
        assert response.headers["www-authenticate"].startswith("ApiKey")
    problem(locked.get("/v1/variants", headers={"X-API-Key": "wrong" * 5}), 401)
    problem(locked.get("/v1/variants", headers={"X-API-Key": KEY[:-1]}), 401)
    problem(locked.get("/v1/variants", headers={"X-API-Key": KEY + "x"}), 401)
    assert locked.get("/v1/variants", headers={"X-API-Key": KEY}).status_code == 200
    response = locked.post("/v1/variants", json={"name": "ok"}, headers={"X-API-Key": KEY})
    assert response.status_code == 201


def test_unknown_variant_is_401_not_404_without_key(locked: TestClient, problem: Any) -> None:
    problem(locked.get("/v1/variants/ghost"), 401)  # no existence oracle for anonymous callers


def test_probes_and_docs_stay_open(locked: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert locked.get(path).status_code in (200, 503), path


def test_no_key_configured_means_open(client: TestClient) -> None:
    assert client.get("/v1/variants").status_code == 200
    assert client.get("/v1/variants", headers={"X-API-Key": "anything"}).status_code == 200


def test_dependency_returns_a_principal(settings: Any) -> None:
    assert authenticate(settings, None) == Principal(role="anonymous")
    locked = settings.model_copy(update={"admin_key": None})
    assert authenticate(locked, "x").role == "anonymous"


def test_short_admin_key_fails_fast(settings: Any) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="16 characters"):
        Settings(database_url=settings.database_url, admin_key="short")
