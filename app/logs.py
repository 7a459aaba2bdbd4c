"""Logging: one JSON object per line on stderr, with the request id of the request being served.

The request id lives in a context variable set by the request middleware (``app.main``);
``anyio.to_thread`` copies the context, so lines logged from handler and inference threads carry
it too. Fields given with ``extra={...}`` become top-level keys of the JSON line.

    {"ts": "2026-11-29T08:30:00.123Z", "level": "INFO", "logger": "app.access",
     "msg": "GET /v1/variants/{name} 200", "request_id": "5b0c...", "status": 200, ...}
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("nominal_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
# (uvicorn's ``color_message`` is its message again, with terminal colour codes.)
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` from the context (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line; values JSON cannot hold are written with ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key != "request_id" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler this module installs (configuring again replaces it). It writes to the
    current ``sys.stderr``, not the one at set-up: test runners swap it per test."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger (uvicorn's and alembic's included) to one stderr handler.

    Idempotent: calling it again (``nominal serve`` then ``create_app``) swaps the handler.
    Uvicorn's own access line is silenced: the request middleware logs a structured one with
    the route template, the status, the duration and the request id.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
