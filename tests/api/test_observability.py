"""Request ids, structured JSON logs and metrics labelled by route template."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.logs import JsonFormatter, RequestIdFilter, request_id_var


def _json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    response = client.get("/v1/variants", headers={"X-Request-ID": "lb-7f3a.42"})
    assert response.headers["x-request-id"] == "lb-7f3a.42"
    generated = client.get("/v1/variants").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert client.get("/v1/variants").headers["x-request-id"] != generated
    # Ids that could forge log lines or blow up their size are replaced, not echoed.
    for bad in ("x" * 200, "two words", "<script>", "a;b"):
        echoed = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), bad
    # Errors carry it too (problem responses come from exception handlers).
    response = client.get("/v1/variants/ghost", headers={"X-Request-ID": "req-404"})
    assert response.status_code == 404 and response.headers["x-request-id"] == "req-404"


def test_log_lines_are_json_with_the_request_id(client: TestClient,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    response = client.post("/v1/api-keys", json={"name": "cam", "role": "inspector"},
                           headers={"X-Request-ID": "req-key-1"})
    assert response.status_code == 201
    lines = _json_lines(capsys.readouterr().err)
    mine = [line for line in lines if line.get("request_id") == "req-key-1"]
    # The handler's own line (logged from a worker thread) and the access line.
    created = [line for line in mine if "created by" in line["msg"]]
    assert created and created[0]["logger"] == "app.api.routes.api_keys"
    assert response.json()["key"] not in json.dumps(lines)  # the secret is never logged
    access = [line for line in mine if line["logger"] == "app.access"]
    assert len(access) == 1
    entry = access[0]
    assert entry["route"] == "/v1/api-keys" and entry["status"] == 201
    assert entry["method"] == "POST" and entry["duration_ms"] >= 0
    assert entry["level"] == "INFO" and entry["ts"].endswith("Z")


def test_access_line_names_the_template_and_keeps_the_path(
        client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    client.get("/v1/variants/some-part", headers={"X-Request-ID": "req-tpl"})
    (entry,) = [line for line in _json_lines(capsys.readouterr().err)
                if line.get("request_id") == "req-tpl" and line["logger"] == "app.access"]
    assert entry["route"] == "/v1/variants/{name}"
    assert entry["path"] == "/v1/variants/some-part" and entry["status"] == 404


def test_formatter_keeps_extras_and_exceptions() -> None:
    record = logging.LogRecord("app.x", logging.ERROR, __file__, 1, "job %s failed", (7,), None)
    record.job_id = 7
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    token = request_id_var.set("rid-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "job 7 failed" and entry["job_id"] == 7
    assert entry["request_id"] == "rid-1" and "ValueError: boom" in entry["exc"]


def test_metrics_never_carry_raw_paths(client: TestClient, make_client: Any) -> None:
    anonymous = make_client(api_key=None)
    anonymous.get("/v1/variants/secret-part-123")  # 401, before any handler
    client.get("/v1/variants/secret-part-456")  # 404
    client.get("/no/such/route")  # no route at all
    text = client.get("/metrics").text
    for raw in ("secret-part", "/no/such/route"):
        assert raw not in text, raw
    assert 'route="/v1/variants/{name}",status="404"' in text
    assert 'route="<unmatched>",status="404"' in text
    text = anonymous.get("/metrics").text
    assert 'route="/v1/variants/{name}",status="401"' in text
