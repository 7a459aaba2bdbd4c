"""Property-based fuzzing of every documented operation (schemathesis, through the ASGI app).

Each generated request carries the bootstrap admin key and runs against a migrated SQLite
database with a variant ``bolt`` (images, no model). Checks: no 5xx, the status code is one the
operation documents, the response conforms to the documented schema, and every error response
is an RFC 9457 problem (type, title, status, detail). Bounded and derandomized for CI:
``NOMINAL_FUZZ_EXAMPLES`` examples per operation (default 10; scripts/reliability.sh runs 100).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python import asgi as st_asgi  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)

from app.db.migrate import upgrade_to_head  # noqa: E402
from app.main import create_app  # noqa: E402
from tests.conftest import ADMIN_KEY, MODELS_DIR, good_png, make_settings  # noqa: E402

EXAMPLES = int(os.environ.get("NOMINAL_FUZZ_EXAMPLES", "10"))
HEADERS = {"X-API-Key": ADMIN_KEY}
GENERATED: list[tuple[str, str, int]] = []  # (method, path, status) of every request sent


def problem_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Error responses (4xx/5xx) are problems: application/problem+json with the four fields."""
    GENERATED.append((case.method, case.formatted_path, response.status_code))
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/problem+json"), (
        f"{response.status_code} with content-type {content_type!r}")
    body = response.json()
    missing = {"type", "title", "status", "detail"} - set(body)
    assert not missing, f"problem without {sorted(missing)}: {body}"
    assert body["status"] == response.status_code, body
    return True


def _fuzz_app() -> Any:
    """The app under test, on a fresh SQLite file (no training worker: queued jobs stay queued)."""
    from app.detector.backbones import backbone_path
    from app.detector.config import DEFAULT_BACKBONE

    backbone_path(DEFAULT_BACKBONE, MODELS_DIR)
    tmp = Path(tempfile.mkdtemp(prefix="nominal-fuzz-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    url = f"sqlite:///{tmp / 'nominal.db'}"
    upgrade_to_head(url)
    config = make_settings(url, MODELS_DIR, training_workers=0,
                           initial_key_file=tmp / "initial-admin-key")
    # Something for the generated requests to find: a variant with two good images (through a
    # separate app instance, so the fuzzed one starts its lifespan only once).
    from fastapi.testclient import TestClient

    with TestClient(create_app(config), headers=HEADERS) as client:
        assert client.post("/v1/variants", json={"name": "bolt",
                                                 "settings": {"resolution": 64}}).status_code == 201
        files = [("files", (f"g{i}.png", good_png(i), "image/png")) for i in range(2)]
        assert client.post("/v1/variants/bolt/images", files=files).status_code == 201
    return create_app(config)


FUZZ_APP = _fuzz_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", FUZZ_APP)


@pytest.fixture(scope="module", autouse=True)
def _fuzz_session(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stops the fuzzed app's lifespans, and reports how many requests the run sent (every
    check, 5xx included, is per case in test_api_fuzz; this is a report, not a test)."""
    yield
    st_asgi.shutdown_lifespans()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if GENERATED and reporter is not None:
        pairs = len({(m, p.split("?")[0]) for m, p, _ in GENERATED})
        errors = sum(1 for *_, status in GENERATED if status >= 500)
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nfuzz: {len(GENERATED)} requests over {pairs} method/path "
                                f"pairs, {errors} 5xx")


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_api_fuzz(case: Any) -> None:
    case.call_and_validate(
        headers=HEADERS,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance,
                problem_shape])


def test_every_operation_is_fuzzed() -> None:
    """The fuzz run covers every operation of the schema (on its own: it reads the schema, not
    what another test sent)."""
    spec = FUZZ_APP.openapi()
    documented = {(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item if method in {"get", "post", "put", "patch", "delete"}}
    fuzzed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert fuzzed == documented and len(documented) >= 25
