"""Hardening headers (SecurityHeadersMiddleware in app/main.py) on API answers, errors and docs."""

from __future__ import annotations

from fastapi.testclient import TestClient

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
    # No default-src on the docs page: it loads Swagger UI's scripts and styles from its CDN.
    _check(response, "frame-ancestors 'none'")
    assert client.get("/redoc").status_code == 200
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "Nominal"
