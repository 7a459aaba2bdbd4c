"""The one error shape: every domain error maps to a status, unexpected ones become a 500
problem without internals."""

from __future__ import annotations

import inspect as pyinspect
import re
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


def _documented_tree() -> dict[str, tuple[str | None, str]]:
    """``{class name: (parent name, status or 'internal')}`` from app.errors' docstring."""
    tree: dict[str, tuple[str | None, str]] = {}
    parents: list[str] = []  # by depth
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(?P<lead>[\s│├└─]*?)(?P<name>[A-Z]\w+Error)\b(?P<rest>.*)$",
                         line)
        if not match:
            continue
        depth = len(match["lead"]) // 4 - 1  # the root sits 4 spaces in, each level 4 more
        status = re.search(r"(?:-> (\d{3})|\((internal)\))\s*$", match["rest"])
        assert status or depth == 0, f"no status at the end of {match['name']}'s line: {line!r}"
        parents[depth:] = [match["name"]]
        tree[match["name"]] = (parents[depth - 1] if depth else None,
                               (status[1] or status[2]) if status else "internal")
    return tree


def test_the_documented_tree_is_read() -> None:
    tree = _documented_tree()
    assert tree["NominalError"] == (None, "internal")
    assert tree["ImageTooLargeError"] == ("LimitExceededError", "413")
    assert tree["TrainingCancelledError"][1] == "internal"


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_class_is_in_the_documented_tree(cls: type[errors.NominalError]) -> None:
    """Every class, not only those whose line happens to carry a status: its place in the
    tree is its base class, and its status is the one the HTTP layer answers."""
    tree = _documented_tree()
    assert cls.__name__ in tree, f"{cls.__name__} is missing from app.errors' docstring"
    parent, status = tree[cls.__name__]
    if cls is not errors.NominalError:
        assert parent == cls.__base__.__name__, cls.__name__
    if status != "internal":
        assert STATUS_BY_ERROR[cls] == int(status), cls.__name__


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
