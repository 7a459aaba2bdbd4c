"""Probes, Prometheus metrics and the OpenAPI docs."""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi.testclient import TestClient

from app.api.deps import get_database
from app.db.session import Database


def _wait_ready(client: TestClient) -> Any:
    deadline = time.monotonic() + 30
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_healthz_and_readyz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    response = _wait_ready(client)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready",
                               "checks": {"database": "ok", "backbones": "ok"}}


def test_readyz_is_503_problem_when_the_database_is_gone(client: TestClient,
                                                         problem: Any) -> None:
    dead = Database("postgresql+psycopg://nobody@127.0.0.1:9/none", timeout_s=1)
    client.app.dependency_overrides[get_database] = lambda: dead  # type: ignore[attr-defined]
    try:
        body = problem(client.get("/readyz"), 503)
        assert body["checks"]["database"].startswith("unreachable")
        assert client.get("/healthz").status_code == 200  # liveness does not depend on it
        # A request that needs the database is a 503 problem too, not a 500.
        problem(client.get("/v1/variants"), 503)
    finally:
        client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
        dead.dispose()


def test_metrics_by_route_template_and_variant(trained: Any, images: Any,
                                               client: TestClient) -> None:
    client.get("/v1/variants/ghost")
    client.post("/v1/variants/bolt/inspect", content=images.defect_png(3),
                headers={"content-type": "image/png"})
    client.post("/v1/variants/bolt/inspect", content=images.good_png(4),
                headers={"content-type": "image/png"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r'nominal_http_requests_total\{method="GET",route="/v1/variants/\{name\}",'
                     r'status="404"\} 1\.0', text), text
    assert 'route="/v1/variants/{name}/inspect",status="200"' in text
    assert "/v1/variants/ghost" not in text and "/v1/variants/bolt" not in text  # no raw paths
    assert 'nominal_inspect_duration_seconds_count{variant="bolt"} 2.0' in text
    assert 'nominal_inspect_normalized_score_bucket{le="0.5",variant="bolt"}' in text
    assert 'nominal_anomalies_total{variant="bolt"} 1.0' in text
    assert 'nominal_training_duration_seconds_count{outcome="ready"} 1.0' in text
    assert 'nominal_active_model_version{variant="bolt"} 1.0' in text
    assert "nominal_model_cache_entries 1.0" in text


def _examples_of(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    if "example" in schema or "examples" in schema:
        return True
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _examples_of(components[name], components)
    if schema.get("type") == "array" and "items" in schema:
        return _examples_of(schema["items"], components)
    return any(_examples_of(s, components) for s in schema.get("anyOf", []))


def test_docs_have_an_example_for_every_endpoint(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            found = False
            for status, response in operation["responses"].items():
                if not status.startswith("2"):
                    continue
                if status == "204" or "headers" in response:
                    found = True
                for media in response.get("content", {}).values():
                    if "example" in media or _examples_of(media.get("schema", {}), components):
                        found = True
                    if media.get("schema", {}).get("format") == "binary" or media == {}:
                        found = True  # a file: its description is the example
            if not found:
                missing.append(f"{method.upper()} {path}")
            if method in ("post", "patch") and "requestBody" in operation:
                content = operation["requestBody"]["content"]
                for media_type, media in content.items():
                    if media_type == "application/json":
                        assert _examples_of(media["schema"], components), (method, path)
    assert not missing, missing
