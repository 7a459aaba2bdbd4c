"""``/docs`` and ``/redoc`` render in a real browser (``tests.browser``) with only loopback
reachable, against a real uvicorn serving the app: anything not addressed to 127.0.0.1 is
recorded and aborted, as a factory network without internet would."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from app.db.migrate import upgrade_to_head
from app.main import create_app
from app.settings import Settings
from tests.browser import loopback_only, require_browser, visit
from tests.conftest import ADMIN_KEY, MODELS_DIR


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_browser()
    workdir = tmp_path_factory.mktemp("docs")
    url = f"sqlite:///{workdir / 'nominal.db'}"
    upgrade_to_head(url)
    settings = Settings(database_url=url, admin_key=ADMIN_KEY, models_dir=MODELS_DIR,
                        initial_key_file=workdir / "initial-admin-key", preload_backbones=[],
                        log_level="WARNING")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


def test_swagger_ui_renders_offline(server: str) -> None:
    seen = visit(server + "/docs", allowed=loopback_only,
                 wait_for=(".opblock-summary-path", "/v1/variants/{name}/inspect"))
    assert seen.outside == []
    assert seen.errors == []  # a Content-Security-Policy refusal is a console error


# ReDoc's side menu links its maker's logo from a CDN; the page's CSP blocks it before any
# request is made (so ``outside`` stays empty), and the browser reports the refusal.
_REDOC_LOGO_REFUSED = ("Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates "
                       "the following Content Security Policy directive")


def test_redoc_renders_offline(server: str) -> None:
    seen = visit(server + "/redoc", allowed=loopback_only, wait_for=("h2", "Inspect"))
    assert seen.outside == []
    assert [e for e in seen.errors if not e.startswith(_REDOC_LOGO_REFUSED)] == []
