"""The one error shape: every domain error maps to a status, unexpected ones become a 500
problem without internals."""

from __future__ import annotations

import inspect as pyinspect
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import errors
from app.api.deps import get_variant
from app.api.errors import STATUS_BY_ERROR, problem_type, status_for
from app.main import create_app


def _error_classes() -> list[type[errors.NominalError]]:
    return [cls for _, cls in pyinspect.getmembers(errors, pyinspect.isclass)
            if issubclass(cls, errors.NominalError)]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_domain_error_is_mapped(cls: type[errors.NominalError]) -> None:
    assert cls in STATUS_BY_ERROR, f"{cls.__name__} has no HTTP status in app.api.errors"
    assert 400 <= status_for(cls("x")) < 600
    assert problem_type(cls).startswith("urn:nominal:problem:")


def test_statuses_match_the_documented_tree() -> None:
    """The docstring of app.errors names a status per class; the mapping must agree."""
    doc = errors.__doc__ or ""
    for cls, status in STATUS_BY_ERROR.items():
        lines = [line for line in doc.splitlines() if f" {cls.__name__} " in line + " "]
        if lines and "->" in lines[0]:
            assert lines[0].rstrip().endswith(str(status)), (cls.__name__, lines[0])


def test_unexpected_error_is_a_500_problem_without_internals(settings: Any,
                                                            admin_key: str) -> None:
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    app.dependency_overrides[get_variant] = boom
    with TestClient(app, raise_server_exceptions=False,
                    headers={"X-API-Key": admin_key, "X-Request-ID": "req-500"}) as client:
        response = client.get("/v1/variants/bolt")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 500 and body["title"] == "Internal Server Error"
    assert "hunter2" not in response.text and "Traceback" not in response.text
    # The id to quote to whoever reads the logs, where the traceback went.
    assert body["request_id"] == "req-500" == response.headers["x-request-id"]
