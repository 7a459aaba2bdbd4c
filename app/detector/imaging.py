"""Decoding untrusted image bytes into RGB arrays, within explicit limits.

Decisions (documented in the README):
- Only PNG, JPEG, BMP and TIFF (and, for convenience, the first frame of GIF/WebP) are read.
- The pixel count is checked from the header *before* any pixel is decoded, so a
  decompression bomb costs a header read, not gigabytes.
- Multi-frame files (animated GIF, multi-page TIFF) use their first frame.
- EXIF orientation is honoured: a phone photo of a part is scored the way it looks.
- 16-bit and float images are scaled to 8 bits by their type's range; alpha is dropped
  (composited on black); palette, grayscale and CMYK are converted to RGB.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLargeError, InvalidImageError

SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "MPO"})

# Pillow's own bomb guard (process-wide, left as Pillow sets it) warns above
# ``Image.MAX_IMAGE_PIXELS`` and refuses twice that; ours is the explicit per-call limit, so
# the warning is silenced and a limit can never be set above what Pillow opens at all.
PILLOW_PIXEL_CEILING = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


@dataclass(frozen=True)
class ImageLimits:
    """Resource limits for one decoded image."""

    max_pixels: int = 40_000_000
    min_side: int = 8


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image ``(H, W, 3)`` uint8 and the format it came in."""

    pixels: np.ndarray
    format: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def decode_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Decode ``data`` to RGB ``(H, W, 3)`` uint8, or raise a clear ``InvalidImageError``."""
    limits = limits or ImageLimits()
    if not data:
        raise InvalidImageError("empty image: zero bytes received")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            if fmt not in SUPPORTED_FORMATS:
                raise InvalidImageError(f"unsupported image format {fmt!r}")
            width, height = image.size
            _check_size(width, height, limits)
            image.seek(0)
            image.load()
            pixels = _to_rgb(ImageOps.exif_transpose(image))
    except (InvalidImageError, ImageTooLargeError):
        raise
    except UnidentifiedImageError:
        raise InvalidImageError("not a recognised image (unknown or corrupt header)") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"image declares more than {PILLOW_PIXEL_CEILING} px (refused unread as a possible "
            f"decompression bomb); the limit is {limits.max_pixels} px") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidImageError(f"corrupt or truncated {_fmt_or_image(data)}: {exc}") from None
    return DecodedImage(pixels=pixels, format=fmt)


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width < limits.min_side or height < limits.min_side:
        raise InvalidImageError(
            f"image is {width}x{height}; both sides must be at least {limits.min_side} px"
        )
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} px; the limit is {limits.max_pixels} px"
        )


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> contiguous RGB uint8 ``(H, W, 3)``."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray16 = np.asarray(image, dtype=np.uint16)
        gray = (gray16 >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode == "I" and values.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(values.max(initial=1.0)), 1.0) if values.max(initial=0) > 1 else 1.0
        gray = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _fmt_or_image(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "image"


def encode_png(pixels: np.ndarray) -> bytes:
    """RGB or grayscale uint8 array -> PNG bytes (fast compression: heatmaps are transient)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
