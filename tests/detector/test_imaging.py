"""Decoding untrusted bytes: formats, modes, corrupt input and decompression bombs."""

from __future__ import annotations

import io
import tracemalloc
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from app.detector.imaging import ImageLimits, decode_image, encode_png
from app.errors import ImageTooLargeError, InvalidImageError
from tests.conftest import png_claiming_size


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _rgb(height: int = 24, width: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _smooth_rgb(height: int = 24, width: int = 40) -> np.ndarray:
    """A gradient: survives JPEG with small errors."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], axis=2).astype(
        np.uint8
    )


# --- formats and modes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "lossless"), [("PNG", True), ("BMP", True), ("TIFF", True), ("JPEG", False)]
)
def test_formats_decode_to_rgb_uint8(fmt: str, lossless: bool) -> None:
    pixels = _rgb() if lossless else _smooth_rgb()
    decoded = decode_image(_encode(Image.fromarray(pixels), fmt))
    assert decoded.format == fmt
    assert decoded.pixels.shape == (24, 40, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.flags["C_CONTIGUOUS"]
    assert (decoded.height, decoded.width) == (24, 40)
    if lossless:
        np.testing.assert_array_equal(decoded.pixels, pixels)
    else:
        assert np.abs(decoded.pixels.astype(int) - pixels).mean() < 4


def test_grayscale_becomes_rgb() -> None:
    gray = np.arange(24 * 40, dtype=np.uint8).reshape(24, 40)
    decoded = decode_image(_encode(Image.fromarray(gray, mode="L"), "PNG"))
    assert decoded.pixels.shape == (24, 40, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[..., channel], gray)


def test_palette_becomes_rgb() -> None:
    image = Image.new("P", (40, 24))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    image.paste(1, (20, 0, 40, 24))  # right half: palette index 1 (blue)
    decoded = decode_image(_encode(image, "PNG"))
    assert decoded.pixels.shape == (24, 40, 3)
    assert tuple(decoded.pixels[5, 5]) == (255, 0, 0)
    assert tuple(decoded.pixels[5, 30]) == (0, 0, 255)


def test_palette_transparency_is_composited_on_black() -> None:
    image = Image.new("P", (40, 24))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    image.paste(1, (20, 0, 40, 24))
    decoded = decode_image(_encode(image, "PNG", transparency=1))
    assert tuple(decoded.pixels[5, 5]) == (255, 0, 0)
    assert tuple(decoded.pixels[5, 30]) == (0, 0, 0)


def test_rgba_drops_alpha_on_black() -> None:
    rgba = np.zeros((24, 40, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :20, 3] = 255  # left opaque, right transparent
    decoded = decode_image(_encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    assert decoded.pixels.shape == (24, 40, 3)
    assert tuple(decoded.pixels[0, 0]) == (200, 100, 50)
    assert tuple(decoded.pixels[0, 39]) == (0, 0, 0)


def test_16_bit_grayscale_is_scaled_by_its_range() -> None:
    values = np.zeros((24, 40), dtype=np.uint16)
    values[:, :10] = 0
    values[:, 10:20] = 256  # -> 1
    values[:, 20:30] = 0x8000  # -> 128
    values[:, 30:] = 65535  # -> 255
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    decoded = decode_image(_encode(image, "PNG"))
    assert decoded.pixels.shape == (24, 40, 3)
    row = decoded.pixels[0, :, 0].astype(int)
    assert abs(row[5] - 0) <= 1 and abs(row[15] - 1) <= 1
    assert abs(row[25] - 128) <= 1 and abs(row[35] - 255) <= 1
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])


def test_16_bit_dark_image_stays_dark() -> None:
    """The scale is the type's range, not the image's: a dim 16-bit frame is not stretched."""
    values = np.full((24, 40), 200, dtype=np.uint16)  # 200 / 65535: black
    decoded = decode_image(_encode(Image.fromarray(values), "PNG"))
    assert decoded.pixels.max() <= 1


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = Image.new("CMYK", (40, 24), (0, 255, 255, 0))  # pure red in CMYK
    data = _encode(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data)
    assert decoded.pixels.shape == (24, 40, 3)
    r, g, b = decoded.pixels.reshape(-1, 3).mean(axis=0)
    assert r > 230 and g < 25 and b < 25


def test_multi_frame_gif_uses_the_first_frame() -> None:
    first = Image.new("RGB", (40, 24), (255, 0, 0))
    second = Image.new("RGB", (40, 24), (0, 0, 255))
    data = _encode(first, "GIF", save_all=True, append_images=[second], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    decoded = decode_image(data)
    assert decoded.format == "GIF"
    assert decoded.pixels.shape == (24, 40, 3)
    assert tuple(decoded.pixels[10, 10]) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    # Stored 40 wide x 20 high: top half red, bottom half blue. Orientation 6 = the camera
    # was turned; the viewer rotates 90 degrees clockwise: the top goes to the right.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:10] = (255, 0, 0)
    pixels[10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data)
    assert decoded.pixels.shape == (40, 20, 3)
    left, right = (
        decoded.pixels[:, :6].reshape(-1, 3).mean(0),
        decoded.pixels[:, -6:].reshape(-1, 3).mean(0),
    )
    assert right[0] > 200 and right[2] < 60  # red on the right
    assert left[2] > 200 and left[0] < 60  # blue on the left


def test_encode_png_round_trips() -> None:
    pixels = _rgb()
    np.testing.assert_array_equal(decode_image(encode_png(pixels)).pixels, pixels)


# --- refusals ----------------------------------------------------------------------------


def _truncated(fmt: str) -> bytes:
    data = _encode(Image.fromarray(_rgb(64, 64)), fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (
            np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "not a recognised image",
        ),
        (b"name,score\nbottle_01,0.3\nbottle_02,0.7\n" * 20, "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n", "not a recognised image"),  # a signature alone
    ],
    ids=["empty", "random-bytes", "text", "png-signature-only"],
)
def test_garbage_raises_invalid_image(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_raise_invalid_image(fmt: str) -> None:
    with pytest.raises(InvalidImageError, match=f"(?i)truncated {fmt}") as info:
        decode_image(_truncated(fmt))
    assert info.value.detail  # the HTTP layer shows this text


def test_unsupported_format_is_named() -> None:
    data = _encode(Image.fromarray(_rgb()), "PPM")
    with pytest.raises(InvalidImageError, match="unsupported image format 'PPM'"):
        decode_image(data)


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 1 x 1 PNG whose IHDR is patched to declare ``width x height`` (CRC fixed)."""
    return png_claiming_size(_encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), width, height)


@pytest.mark.parametrize("side", [10_000, 20_000],
                         ids=["above Pillow's warning", "above Pillow's refusal"])
def test_declared_bomb_is_refused_from_the_header_alone(monkeypatch: pytest.MonkeyPatch,
                                                        side: int) -> None:
    """Both sides of Pillow's own guard (a warning at 89 Mpx, a refusal at twice that, left
    as Pillow sets them): a clear 413 naming our limit, without decoding a pixel."""
    data = _png_declaring(side, side)

    def no_load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded before the size check")

    # Pillow allocates outside tracemalloc's view: refuse any pixel decoding outright.
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's warning must not escape either
            with pytest.raises(ImageTooLargeError, match="the limit is 40000000 px"):
                decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # decoding it would take 0.3-1.2 GB
    assert Image.MAX_IMAGE_PIXELS is not None  # nothing turned Pillow's guard off


def test_max_pixels_limit_is_respected() -> None:
    data = _encode(Image.fromarray(_rgb(20, 30)), "PNG")  # 600 px
    assert decode_image(data, ImageLimits(max_pixels=600)).pixels.shape == (20, 30, 3)
    with pytest.raises(ImageTooLargeError, match="599"):
        decode_image(data, ImageLimits(max_pixels=599))


def test_min_side_is_enforced() -> None:
    data = _encode(Image.fromarray(_rgb(4, 40)), "PNG")
    with pytest.raises(InvalidImageError, match="at least 8"):
        decode_image(data)
    assert decode_image(data, ImageLimits(min_side=4)).pixels.shape == (4, 40, 3)
