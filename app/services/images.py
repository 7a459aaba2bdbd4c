"""Uploaded images: validate by decoding, store the original bytes, deduplicate by sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Image, ImageLabel, Variant
from app.detector.imaging import DecodedImage, ImageLimits, decode_image
from app.errors import InvalidImageError, InvalidInputError, LimitExceededError, NotFoundError


@dataclass(frozen=True)
class Upload:
    """One received file: its name as sent (may be empty) and its bytes."""

    filename: str | None
    data: bytes


@dataclass(frozen=True)
class CheckedUpload:
    """An upload that decoded within limits; only metadata is kept, pixels are dropped."""

    upload: Upload
    sha256: str
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class StoredImage:
    image: Image
    created: bool  # False when the same bytes were already stored (idempotent re-upload)


def decode(data: bytes, *, max_pixels: int, what: str = "image") -> DecodedImage:
    """Decode untrusted bytes, naming ``what`` (e.g. the file) in the error message."""
    try:
        return decode_image(data, ImageLimits(max_pixels=max_pixels))
    except InvalidImageError as exc:
        raise type(exc)(f"{what}: {exc.detail}") from None
    except LimitExceededError as exc:
        raise type(exc)(f"{what}: {exc.detail}") from None


def checked_upload(upload: Upload, *, format: str, width: int, height: int) -> CheckedUpload:
    """An upload known to decode (just decoded, or kept from an inspection that decoded it)."""
    return CheckedUpload(upload=upload, sha256=hashlib.sha256(upload.data).hexdigest(),
                         format=format, width=width, height=height)


def check_uploads(uploads: Sequence[Upload], *, max_pixels: int) -> list[CheckedUpload]:
    """Decode every upload (CPU work: call from a worker thread). All or nothing: the first bad
    file raises, so a rejected request stores none of its files."""
    if not uploads:
        raise InvalidInputError("no files received: send one or more 'files' fields")
    checked = []
    for index, upload in enumerate(uploads):
        name = f"files[{index}]" + (f" ({upload.filename!r})" if upload.filename else "")
        image = decode(upload.data, max_pixels=max_pixels, what=name)
        checked.append(checked_upload(upload, format=image.format, width=image.width,
                                      height=image.height))
    return checked


def add_images(session: Session, *, variant: Variant, uploads: Sequence[CheckedUpload],
               label: ImageLabel, max_images: int) -> list[StoredImage]:
    """Store checked uploads in one transaction; bytes already stored return the existing row.

    A re-upload keeps the stored row as it is (its label included): idempotent means the same
    request twice leaves the same state.
    """
    shas = {u.sha256 for u in uploads}
    existing = {
        image.sha256: image
        for image in session.scalars(
            select(Image).where(Image.variant_id == variant.id, Image.sha256.in_(shas))
        )
    }
    new_shas = shas - set(existing)
    count = session.scalar(select(func.count()).where(Image.variant_id == variant.id)) or 0
    if count + len(new_shas) > max_images:
        raise LimitExceededError(
            f"variant {variant.name!r} holds {count} images; {len(new_shas)} more would exceed the "
            f"limit of {max_images} (NOMINAL_MAX_IMAGES_PER_VARIANT)"
        )
    stored: list[StoredImage] = []
    for upload in uploads:
        if upload.sha256 in existing:
            stored.append(StoredImage(existing[upload.sha256], created=False))
            continue
        image = Image(variant_id=variant.id, sha256=upload.sha256, label=label.value,
                      filename=(upload.upload.filename or None) and upload.upload.filename[:255],
                      format=upload.format, width=upload.width, height=upload.height,
                      size_bytes=len(upload.upload.data), data=upload.upload.data)
        try:
            with session.begin_nested():  # a concurrent upload of the same bytes may win
                session.add(image)
        except IntegrityError:
            image = session.scalars(
                select(Image).where(Image.variant_id == variant.id, Image.sha256 == upload.sha256)
            ).one()
            stored.append(StoredImage(image, created=False))
        else:
            stored.append(StoredImage(image, created=True))
        existing[upload.sha256] = image
    session.commit()
    return stored


def list_images(session: Session, *, variant: Variant, label: ImageLabel | None, limit: int,
                offset: int) -> tuple[list[Image], int]:
    """A page of a variant's images (oldest first, blobs not loaded) and the total count."""
    where = [Image.variant_id == variant.id]
    if label is not None:
        where.append(Image.label == label.value)
    total = session.scalar(select(func.count()).select_from(Image).where(*where)) or 0
    rows = session.scalars(
        select(Image).where(*where).order_by(Image.id).limit(limit).offset(offset)
    )
    return list(rows), total


def get_image(session: Session, *, variant: Variant, image_id: int) -> Image:
    image = session.scalar(
        select(Image).where(Image.variant_id == variant.id, Image.id == image_id)
    )
    if image is None:
        raise NotFoundError(f"image {image_id} not found in variant {variant.name!r}")
    return image


def get_image_data(session: Session, *, image: Image) -> bytes:
    """The stored bytes of ``image`` (loaded only here: listing never reads blobs)."""
    data = session.scalar(select(Image.data).where(Image.id == image.id))
    if data is None:
        raise NotFoundError(f"image {image.id} not found")
    return bytes(data)


def delete_image(session: Session, *, variant: Variant, image_id: int) -> None:
    """Remove one image; trained models keep working (they hold their own memory bank)."""
    get_image(session, variant=variant, image_id=image_id)
    session.execute(delete(Image).where(Image.id == image_id))
    session.commit()


def count_images(session: Session, *, variant_id: int, label: ImageLabel) -> int:
    return session.scalar(
        select(func.count()).where(Image.variant_id == variant_id, Image.label == label.value)
    ) or 0


def load_training_images(session: Session, *, variant_id: int,
                         max_pixels: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Decode the variant's good and defect images ``(H, W, 3)`` uint8, oldest first."""
    good: list[np.ndarray] = []
    defect: list[np.ndarray] = []
    rows = session.execute(
        select(Image.id, Image.label, Image.data).where(Image.variant_id == variant_id)
        .order_by(Image.id)
    )
    for image_id, label, data in rows:
        pixels = decode(bytes(data), max_pixels=max_pixels, what=f"stored image {image_id}").pixels
        (good if label == ImageLabel.good.value else defect).append(pixels)
    return good, defect
