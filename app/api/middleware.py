"""The ASGI middlewares of the service: request ids and metrics, body size limits, security
headers. Plain ASGI (no ``BaseHTTPMiddleware``): bodies stream through untouched and nothing
buffers a response.

Body limits are declared by the routes: a route that takes images lists ``ImageBody`` among its
``dependencies`` and gets ``NOMINAL_MAX_REQUEST_BYTES``; every other route takes small JSON and
gets ``JSON_BODY_LIMIT``. ``check_body_limits`` refuses an app with a route that reads files or
images but does not declare it, so a new image route cannot silently get the JSON limit.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fastapi import Depends
from fastapi import params as fastapi_params
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import problem
from app.logs import request_id_var
from app.services.metrics import Metrics

access_log = logging.getLogger("app.access")

JSON_BODY_LIMIT = 1024 * 1024  # variants, models and keys take small JSON bodies only

# Probes and scrapes arrive every few seconds: logged at DEBUG unless they fail.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# What we accept as a caller's request id: bounded and printable, so it is safe in logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@+=/-]{1,128}$")


class ObservabilityMiddleware:
    """Per request: the request id, metrics by route *template*, and one structured access line.

    The id comes from ``X-Request-ID`` when the caller (or the load balancer) sends a sane one,
    else it is generated; it is echoed in the response and stamped on every log line of the
    request. Routers carry their full prefix (/v1/...), so the matched route's path is the
    template; requests that match no route are counted as ``<unmatched>``, never by raw path.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = Headers(scope=scope).get("x-request-id", "")
        request_id = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.request_latency.labels(method=method, route=template).observe(elapsed)
            client = scope.get("client")
            access_log.log(
                logging.DEBUG if template in _QUIET_ROUTES and status < 400 else logging.INFO,
                "%s %s %d", method, template, status,
                extra={"method": method, "route": template, "path": scope.get("path", ""),
                       "status": status, "duration_ms": round(elapsed * 1000.0, 3),
                       "client": client[0] if client else None})
            request_id_var.reset(token)


# ------------------------------------------------------------------------------ body limits


def _image_body() -> None:
    """Marker dependency: the route takes images (``NOMINAL_MAX_REQUEST_BYTES``)."""


ImageBody = Depends(_image_body)
"""In a route's ``dependencies``: its body is images, not small JSON."""


@dataclass(frozen=True)
class ImageRoute:
    """Where image bodies are accepted: a route's path pattern and methods."""

    pattern: re.Pattern[str]
    methods: frozenset[str]

    def matches(self, method: str, path: str) -> bool:
        return method in self.methods and self.pattern.match(path) is not None


def declares_image_body(route: APIRoute) -> bool:
    return any(d.dependency is _image_body for d in route.dependencies)


def _reads_files_or_images(route: APIRoute) -> bool:
    """A route whose body has file or form fields, or whose documented body is an image or
    multipart (raw-body routes read the request themselves and say so in ``openapi_extra``)."""
    if any(isinstance(p.field_info, fastapi_params.Form | fastapi_params.File)
           for p in route.dependant.body_params):
        return True
    content = ((route.openapi_extra or {}).get("requestBody") or {}).get("content") or {}
    return any(t.startswith(("image/", "multipart/")) for t in content)


def image_routes(routes: Iterable[BaseRoute]) -> tuple[ImageRoute, ...]:
    """The routes that declared ``ImageBody`` (included routers' too)."""
    return tuple(ImageRoute(compile_path(context.path)[0], frozenset(context.methods or ()))
                 for context in iter_route_contexts(list(routes))
                 if context.path and isinstance(context.original_route, APIRoute)
                 and declares_image_body(context.original_route))


def check_body_limits(routes: Iterable[BaseRoute]) -> None:
    """Fail fast when a route reads files or images without declaring ``ImageBody``."""
    missing = [f"{sorted(context.methods or [])} {context.path}"
               for context in iter_route_contexts(list(routes))
               if isinstance(route := context.original_route, APIRoute)
               and _reads_files_or_images(route) and not declares_image_body(route)]
    if missing:
        raise RuntimeError(f"routes that read images without declaring ImageBody in their "
                           f"dependencies (they would get the {JSON_BODY_LIMIT}-byte JSON "
                           f"limit): {missing}")


class RequestTooLargeError(StarletteHTTPException):
    """Raised from ``receive`` when a body outgrows its limit. An ``HTTPException`` on purpose:
    FastAPI re-raises those from body parsing (other errors become a vague 400), so the problem
    handler answers it like any other 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes "
                              "(NOMINAL_MAX_REQUEST_BYTES)")


class BodySizeLimitMiddleware:
    """Request body limits, enforced before bodies are in memory: a declared Content-Length
    over the limit is refused unread; otherwise bytes are counted as they stream in.

    Routes in ``image_routes`` (uploads, inspect) get ``max_bytes``; every other request gets
    ``json_max_bytes``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, json_max_bytes: int,
                 image_routes: Sequence[ImageRoute]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.json_max_bytes = json_max_bytes
        self.image_routes = tuple(image_routes)

    def limit_for(self, method: str, path: str) -> int:
        if any(route.matches(method, path) for route in self.image_routes):
            return self.max_bytes
        return self.json_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("method", ""), scope.get("path", ""))
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit, f"{int(declared)} bytes")
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLargeError:
            if started:
                raise
            await self._refuse(scope, receive, send, limit, f"more than {limit} bytes")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int, size: str) -> None:
        response = problem(413, f"the request body is {size}; the limit is {limit} bytes "
                                "(NOMINAL_MAX_REQUEST_BYTES)",
                           type_="urn:nominal:problem:limit-exceeded", title="Limit exceeded",
                           instance=scope.get("path"), headers={"Connection": "close"})
        await response(scope, receive, send)


# ------------------------------------------------------------------------- security headers


class SecurityHeadersMiddleware:
    """Hardening headers on every answer: ``nosniff``, ``no-referrer``, no framing
    (``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``) and ``Cache-Control:
    no-store`` unless the route set its own. API answers also get CSP ``default-src 'none'``
    (JSON/ONNX are never rendered); the interactive docs pages (``docs_paths``) get
    ``docs_csp``, which allows exactly what those pages load."""

    API_CSP = b"default-src 'none'; frame-ancestors 'none'"

    def __init__(self, app: ASGIApp, docs_paths: frozenset[str], docs_csp: bytes) -> None:
        self.app = app
        self.docs_paths = docs_paths
        self.docs_csp = docs_csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.docs_csp if scope.get("path", "") in self.docs_paths else self.API_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in ((b"x-content-type-options", b"nosniff"),
                                    (b"referrer-policy", b"no-referrer"),
                                    (b"x-frame-options", b"DENY"),
                                    (b"content-security-policy", csp),
                                    (b"cache-control", b"no-store")):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
