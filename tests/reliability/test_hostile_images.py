"""Hostile images through HTTP (inspect and upload) against a real ``nominal serve``: every one
gets a documented answer (200 verdict or 4xx problem), never a 5xx, and the server's peak RSS
(VmHWM) grows by less than 300 MB over the whole set."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode, good_pixels, good_png, png_claiming_size
from tests.reliability._server import Server, assert_problem, train_bolt, vm_kib

MB = 1024  # KiB per MiB


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _header_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A small PNG whose IHDR claims ``width x height`` (CRC fixed), the payload tiny."""
    return png_claiming_size(encode(good_pixels(0, 16)), width, height)


def _exif_rotated_jpeg() -> bytes:
    """A 96 x 64 JPEG with EXIF orientation 6 (displayed rotated: 64 x 96)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(good_pixels(3, 96)[:64]), "JPEG", exif=exif.tobytes())


def hostile_cases() -> dict[str, tuple[bytes, str, set[int]]]:
    """name -> (body, declared content type, accepted statuses)."""
    rgb = Image.fromarray(good_pixels(5))
    png, jpeg = good_png(1), encode(good_pixels(2), "JPEG")
    gray16 = Image.fromarray(np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7)
    frames = [Image.fromarray(good_pixels(s)) for s in range(3)]
    gif = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    tiff = _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    ok, bad = {200}, {400, 413, 415, 422}
    return {
        "zero-byte": (b"", "image/png", {422}),
        "truncated-png": (png[: len(png) // 2], "image/png", {422}),
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg", bad),
        "jpeg-declared-png": (jpeg, "image/png", ok | bad),
        "png-declared-jpeg": (png, "image/jpeg", ok | bad),
        "png-bomb-20000x20000": (_header_bomb(), "image/png", {413}),
        "1x1": (_save(Image.new("RGB", (1, 1)), "PNG"), "image/png", {422}),
        "png-16bit-gray": (_save(gray16, "PNG"), "image/png", ok),
        "png-palette": (_save(rgb.convert("P"), "PNG"), "image/png", ok),
        "jpeg-cmyk": (_save(rgb.convert("CMYK"), "JPEG"), "image/jpeg", ok),
        "png-grayscale": (_save(rgb.convert("L"), "PNG"), "image/png", ok),
        "png-rgba": (_save(rgb.convert("RGBA"), "PNG"), "image/png", ok),
        "gif-animated": (gif, "application/octet-stream", ok | bad),
        "tiff-multiframe": (tiff, "image/tiff", ok),
        "jpeg-exif-orientation-6": (_exif_rotated_jpeg(), "image/jpeg", ok),
        "text-named-png": (b"name,score\nbolt,0.1\n" * 20, "image/png", {422}),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    srv = Server(tmp, f"sqlite:///{tmp / 'nominal.db'}").start()
    try:
        with srv.client() as client:
            train_bolt(client)
            # Warm the inference path so the RSS baseline includes the loaded model.
            assert client.post("/v1/variants/bolt/inspect", content=good_png(9),
                               headers={"content-type": "image/png"}).status_code == 200
        yield srv
    finally:
        srv.stop()


def test_hostile_images_get_documented_answers(server: Server) -> None:
    before = vm_kib(server.pid, "VmHWM")
    answers: dict[str, tuple[int, int]] = {}
    with server.client() as client:
        for case, (data, content_type, accepted) in hostile_cases().items():
            inspect = client.post("/v1/variants/bolt/inspect", content=data,
                                  headers={"content-type": content_type})
            upload = client.post("/v1/variants/bolt/images",
                                 files=[("files", (f"{case}.png", data, content_type))])
            answers[case] = (inspect.status_code, upload.status_code)
            for response, ok in ((inspect, accepted), (upload, {201} | (accepted - {200}))):
                assert response.status_code < 500, (case, response.text)
                assert response.status_code in ok, (case, response.status_code, response.text)
                if response.status_code >= 400:
                    assert_problem(response)
                elif response.request.url.path.endswith("/inspect"):
                    assert {"score", "is_anomalous"} <= set(response.json()), response.text
        alive = client.get("/readyz")
        assert alive.status_code == 200
    growth_mb = (vm_kib(server.pid, "VmHWM") - before) / MB
    print(f"\nhostile images: {answers}\nVmHWM growth {growth_mb:.1f} MB")
    assert growth_mb < 300, f"peak RSS grew by {growth_mb:.0f} MB"


def test_exif_orientation_is_honoured_in_heatmap(server: Server) -> None:
    """Orientation 6 (a 96 x 64 sensor image shown as 64 x 96): the heatmap comes back rotated."""
    with server.client() as client:
        plain = client.post("/v1/variants/bolt/inspect?heatmap=png",
                            content=_save(Image.fromarray(good_pixels(3, 96)[:64]), "JPEG"),
                            headers={"content-type": "image/jpeg"})
        rotated = client.post("/v1/variants/bolt/inspect?heatmap=png",
                              content=_exif_rotated_jpeg(), headers={"content-type": "image/jpeg"})
    assert plain.status_code == rotated.status_code == 200, (plain.text, rotated.text)
    assert rotated.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(plain.content)).size == (96, 64)
    assert Image.open(io.BytesIO(rotated.content)).size == (64, 96)
