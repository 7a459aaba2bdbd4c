"""Hardening headers (SecurityHeadersMiddleware in app/api/middleware.py) on API answers,
errors and the docs pages."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.api.docs import DOCS_CSP

COMMON = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
          "x-frame-options": "DENY"}
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def _check(response, csp: str) -> None:  # type: ignore[no-untyped-def]
    for name, value in COMMON.items():
        assert response.headers.get(name) == value, (name, dict(response.headers))
    assert response.headers.get("content-security-policy") == csp
    assert response.headers.get("cache-control") == "no-store"


def test_api_json_answers(client: TestClient) -> None:
    response = client.get("/v1/variants")
    assert response.status_code == 200
    _check(response, API_CSP)
    assert client.get("/healthz").headers["x-content-type-options"] == "nosniff"


def test_error_answers(client: TestClient) -> None:
    response = client.get("/v1/variants/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    _check(response, API_CSP)


def test_unauthenticated_answers(make_client) -> None:  # type: ignore[no-untyped-def]
    response = make_client(api_key=None).get("/v1/variants")
    assert response.status_code == 401
    _check(response, API_CSP)


def test_docs_still_render(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text and "/openapi.json" in response.text
    # The docs pages load their scripts and styles from this origin only (app/api/docs.py).
    _check(response, DOCS_CSP.decode())
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "http" not in response.text, "no asset may come from another origin"
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "http" not in redoc.text
    _check(redoc, DOCS_CSP.decode())
    asset = client.get("/docs-assets/vendor/swagger-ui-bundle.js")
    assert asset.status_code == 200 and asset.headers["cache-control"] == "no-cache"
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "Nominal"
