"""The interactive API documentation (``/docs``: Swagger UI 5, ``/redoc``: ReDoc 2), served
entirely from this service: factory networks have no internet access, and a page that loads
its script from a public CDN is blank there.

The assets come from the ``fastapi-offline`` wheel (Swagger UI 5 renders the OpenAPI 3.1 that
FastAPI emits; 4.x cannot); Swagger UI is started by a small script of ours, not an inline
one, so the pages' Content-Security-Policy (``DOCS_CSP``) allows scripts from this origin only.
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
VENDOR_URL = ASSETS_URL + "/vendor"

DESCRIPTION = """\
Few-shot visual anomaly inspection: upload a handful of **good** images of a part, train a
model (seconds), then inspect new images and get a score, a verdict and a heatmap.

Typical flow:

1. `POST /v1/variants` `{"name": "bolt-m8"}`
2. `POST /v1/variants/bolt-m8/images` (multipart `files`, `label=good`)
3. `POST /v1/variants/bolt-m8/models` `{}` -> 202 `{"version": 1, "status": "queued"}`;
   poll `GET /v1/variants/bolt-m8/models/1` until `ready`
4. `POST /v1/variants/bolt-m8/inspect` with the image (raw body or multipart `file`)

Every error is an RFC 9457 problem document (`application/problem+json`).

Every `/v1` request carries an API key in `X-API-Key` (401 without a valid one). An `admin` key
may do everything, key management (`/v1/api-keys`) included; an `operator` key reads
everything, the inspection records (`/v1/records`) and their images included, gives feedback
on them and adds their images to a variant; an `inspector` key may inspect and read variants,
models, presets and backbones, and gets 403 for anything else.
`NOMINAL_ADMIN_KEY` is an admin key from the environment, to create the first keys with;
without it, the first start stores an admin key and writes it to `data/initial-admin-key`
(`NOMINAL_INITIAL_KEY_FILE`).
"""

OPENAPI_TAGS = [
    {"name": "variants", "description": "kinds of parts, each with its own models"},
    {"name": "images", "description": "training examples (good, optionally defect)"},
    {"name": "models", "description": "training jobs, activation, ONNX download"},
    {"name": "inspect", "description": "scoring images with the active model"},
    {"name": "records", "description": "every verdict, kept images, operator feedback"},
    {"name": "presets", "description": "named configurations to choose a model by"},
    {"name": "backbones", "description": "available feature extractors"},
    {"name": "api-keys", "description": "who may call the service (admin only)"},
    {"name": "health", "description": "probes (no API key) and metrics"},
]

_VENDOR_DIR = Path(str(resources.files("fastapi_offline") / "static"))
_OWN_DIR = Path(__file__).resolve().parent / "static"

# Same-origin scripts, styles, images and the spec only. Inline styles: both UIs set them
# (ReDoc through styled-components); ReDoc's search runs in a worker started from a blob URL.
DOCS_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
            b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - Swagger UI</title>
<link rel="icon" type="image/png" href="{root}{vendor}/favicon.png">
<link rel="stylesheet" href="{root}{vendor}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}{spec}"></div>
<script src="{root}{vendor}/swagger-ui-bundle.js"></script>
<script src="{root}{assets}/swagger-init.js"></script>
</body>
</html>
"""

_REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - ReDoc</title>
<link rel="icon" type="image/png" href="{root}{vendor}/favicon.png">
</head>
<body>
<redoc spec-url="{root}{spec}"></redoc>
<script src="{root}{vendor}/redoc.standalone.js"></script>
</body>
</html>
"""


class _Assets(StaticFiles):
    """Static files that a browser revalidates (ETag) instead of the API's ``no-store``:
    the bundles are megabytes, and their URLs carry no version."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


def docs_paths() -> frozenset[str]:
    """The HTML pages that get ``DOCS_CSP`` instead of the API's ``default-src 'none'``."""
    return frozenset({DOCS_URL, REDOC_URL})


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add ``/docs`` and ``/redoc`` (create the app with
    ``docs_url=None, redoc_url=None``, so FastAPI's CDN pages are not there)."""
    app.mount(VENDOR_URL, _Assets(directory=_VENDOR_DIR), name="docs-vendor")
    app.mount(ASSETS_URL, _Assets(directory=_OWN_DIR), name="docs-assets")

    def render(template: str, request: Request) -> HTMLResponse:
        page = template.format(title=html.escape(app.title),
                               root=html.escape(request.scope.get("root_path", "")),
                               vendor=VENDOR_URL, assets=ASSETS_URL, spec=app.openapi_url)
        return HTMLResponse(page)

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return render(_SWAGGER_PAGE, request)

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return render(_REDOC_PAGE, request)
