"""Bad input gets a clear 4xx in the problem shape, never a 5xx, and changes nothing stored."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import png_claiming_size


def _real_bomb() -> bytes:
    """A real 10000 x 10000 1-bit PNG: ~12 kB on the wire, 100 Mpx (300 MB RGB) decoded."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _ico() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="ICO")
    return buffer.getvalue()


def bad_images(images: Any) -> dict[str, tuple[bytes, int]]:
    good = images.good_png(0)
    jpeg = images.encode(images.good_pixels(1), "JPEG")
    return {
        "empty": (b"", 422),
        "text": (b"hello, I am not an image", 422),
        "corrupt-header": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 422),
        "truncated-png": (good[: len(good) // 2], 422),
        "truncated-jpeg": (jpeg[: len(jpeg) // 3], 422),
        "garbage-after-magic": (b"\xff\xd8\xff" + bytes(range(256)) * 4, 422),
        "unsupported-ico": (_ico(), 422),
        "tiny": (images.encode(images.good_pixels(2)[:4, :4]), 422),
        "header-bomb": (png_claiming_size(good, 100_000, 100_000), 413),
        "real-bomb": (_real_bomb(), 413),
    }


def _state(client: TestClient) -> tuple[Any, ...]:
    variants = client.get("/v1/variants").json()
    images = client.get("/v1/variants/bolt/images").json()
    models = client.get("/v1/variants/bolt/models").json()
    return (variants["total"], images["total"], [i["sha256"] for i in images["items"]],
            models["total"], client.get("/v1/variants/bolt").json()["active_model_version"])


def test_bad_uploads_are_4xx_and_store_nothing(trained: Any, images: Any, client: TestClient,
                                               problem: Any) -> None:
    before = _state(client)
    for case, (data, status) in bad_images(images).items():
        files = [("files", ("ok.png", images.good_png(99), "image/png")),
                 ("files", (f"{case}.png", data, "image/png"))]
        body = problem(client.post("/v1/variants/bolt/images", files=files), status)
        assert "files[1]" in body["detail"], (case, body)
    assert _state(client) == before  # the good file of each request was not stored either


def test_bad_inspections_are_4xx(trained: Any, images: Any, client: TestClient,
                                 problem: Any) -> None:
    before = _state(client)
    for case, (data, status) in bad_images(images).items():
        response = client.post("/v1/variants/bolt/inspect", content=data,
                               headers={"content-type": "image/png"})
        body = problem(response, status)
        assert body["detail"], case
        response = client.post("/v1/variants/bolt/inspect",
                               files={"file": (f"{case}.png", data, "image/png")})
        problem(response, status)
        files = [("files", ("a.png", images.good_png(1), "image/png")),
                 ("files", (f"{case}.png", data, "image/png"))]
        body = problem(client.post("/v1/variants/bolt/inspect/batch", files=files), status)
        assert "files[1]" in body["detail"], (case, body)
    assert _state(client) == before


def test_wrong_content_types(trained: Any, images: Any, client: TestClient,
                             problem: Any) -> None:
    body = problem(client.post("/v1/variants/bolt/inspect", content=b"abc",
                               headers={"content-type": "text/plain"}), 415)
    assert "text/plain" in body["detail"]
    problem(client.post("/v1/variants/bolt/inspect", content=images.good_png(0)), 415)
    problem(client.post("/v1/variants/bolt/inspect/batch", content=images.good_png(0),
                        headers={"content-type": "image/png"}), 415)
    problem(client.post("/v1/variants/bolt/inspect", data={"file": "not a file"}), 415)
    problem(client.post("/v1/variants/bolt/inspect", files={"file": (None, "not a file")}), 422)
    problem(client.post("/v1/variants/bolt/inspect",
                        files={"other": ("a.png", images.good_png(0), "image/png")}), 422)
    problem(client.post("/v1/variants/bolt/inspect/batch",
                        files={"file": ("a.png", images.good_png(0), "image/png")}), 422)
    problem(client.post("/v1/variants/bolt/images", data={"label": "good"}), 422)
    problem(client.post("/v1/variants/bolt/images", content=b"xx",
                        headers={"content-type": "multipart/form-data; boundary=zzz"}), 400)
    files = [("files", ("a.png", images.good_png(0), "image/png"))]
    problem(client.post("/v1/variants/bolt/images", files=files, data={"label": "ugly"}), 422)
    problem(client.post("/v1/variants/bolt/inspect", params={"heatmap": "gif"},
                        content=images.good_png(0), headers={"content-type": "image/png"}), 422)


def test_unknown_variant_is_404_everywhere(client: TestClient, images: Any,
                                           problem: Any) -> None:
    png = images.good_png(0)
    files = [("files", ("a.png", png, "image/png"))]
    for response in (
        client.get("/v1/variants/ghost"),
        client.patch("/v1/variants/ghost", json={}),
        client.delete("/v1/variants/ghost"),
        client.post("/v1/variants/ghost/images", files=files),
        client.get("/v1/variants/ghost/images"),
        client.delete("/v1/variants/ghost/images/1"),
        client.post("/v1/variants/ghost/models", json={}),
        client.get("/v1/variants/ghost/models"),
        client.get("/v1/variants/ghost/models/1"),
        client.get("/v1/variants/ghost/models/1/onnx"),
        client.post("/v1/variants/ghost/models/1/activate"),
        client.post("/v1/variants/ghost/inspect", content=png,
                    headers={"content-type": "image/png"}),
        client.post("/v1/variants/ghost/inspect/batch", files=files),
    ):
        body = problem(response, 404)
        assert "ghost" in body["detail"], body


def test_unknown_route_and_method_are_problems(client: TestClient, problem: Any) -> None:
    problem(client.get("/v2/everything"), 404)
    problem(client.put("/v1/variants"), 405)


@pytest.fixture
def strict(make_client: Any, api: Any) -> TestClient:
    """A second app on the same database with tiny limits (the variant comes from ``api``)."""
    api.trained_variant("bolt", n_good=2)
    return make_client(max_upload_bytes=4096, max_request_bytes=64 * 1024, max_image_pixels=5000,
                       max_images_per_variant=3, max_batch_files=2)  # type: ignore[no-any-return]


def test_limits_are_413(strict: TestClient, images: Any, problem: Any) -> None:
    before = _state(strict)
    big = images.encode(images.good_pixels(5, size=64))  # > 4 kB, < 5000 px? no: 4096 px
    assert len(big) > 4096
    files = [("files", ("big.png", big, "image/png"))]
    body = problem(strict.post("/v1/variants/bolt/images", files=files), 413)
    assert "4096" in body["detail"]
    problem(strict.post("/v1/variants/bolt/inspect", content=big,
                        headers={"content-type": "image/png"}), 413)
    problem(strict.post("/v1/variants/bolt/inspect", files={"file": ("b.png", big)}), 413)

    # Too many pixels (96 x 96 > 5000), within the byte limit as a JPEG.
    many = images.encode(images.good_pixels(6), "JPEG")
    assert len(many) <= 4096
    body = problem(strict.post("/v1/variants/bolt/inspect", content=many,
                               headers={"content-type": "image/jpeg"}), 413)
    assert "5000" in body["detail"]

    # The whole request: a declared Content-Length over the limit is refused unread...
    huge = b"\x00" * (65 * 1024)
    problem(strict.post("/v1/variants/bolt/inspect", content=huge,
                        headers={"content-type": "image/png"}), 413)

    # ... and a streamed body without one is counted as it arrives.
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"\x00" * 1024

    problem(strict.post("/v1/variants/bolt/inspect", content=chunks(),
                        headers={"content-type": "image/png"}), 413)
    problem(strict.post("/v1/variants/bolt/images", content=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=x"}), 413)

    # Batch size.
    small = [images.encode(images.good_pixels(s, size=32), "JPEG") for s in range(3)]
    files = [("files", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(small)]
    body = problem(strict.post("/v1/variants/bolt/inspect/batch", files=files), 413)
    assert "2" in body["detail"]

    # Images per variant: 2 stored, limit 3, so two more new ones are refused together.
    files = [("files", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(small[:2])]
    body = problem(strict.post("/v1/variants/bolt/images", files=files), 413)
    assert "3" in body["detail"]
    assert _state(strict) == before


def test_no_5xx_on_hostile_paths_and_params(client: TestClient) -> None:
    for path in ("/v1/variants/%00", "/v1/variants/" + "a" * 5000, "/v1/variants?limit=-1",
                 "/v1/variants?limit=999999999999999999999", "/v1/variants/x/models/1e9",
                 "/v1/variants/x/models/99999999999999999999",
                 "/v1/variants/x/images/18446744073709551616"):
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
