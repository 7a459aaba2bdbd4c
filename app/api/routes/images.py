"""``/v1/variants/{name}/images``: the good (and optional defect) examples a variant learns from."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from app.api.deps import DatabaseDep, ImageId, SessionDep, SettingsDep, VariantDep, VariantName
from app.api.middleware import ImageBody
from app.api.routes._docs import problems
from app.api.schemas import ImagePage, ImagePublic, ImagesUploaded, ImageUploaded
from app.api.security import AccessRoute, AdminAccess
from app.db.models import ImageLabel
from app.errors import LimitExceededError
from app.services import images as service
from app.services import variants as variant_service
from app.settings import Settings

router = APIRouter(prefix="/v1/variants/{name}/images", tags=["images"],
                   route_class=AccessRoute)

MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "BMP": "image/bmp",
               "TIFF": "image/tiff", "GIF": "image/gif", "WEBP": "image/webp"}


def read_upload(file: UploadFile, index: int, settings: Settings) -> service.Upload:
    """The bytes of one multipart file, refused before reading when over the per-file limit
    (the multipart parser has spooled it to disk, so nothing big is in memory yet)."""
    limit = settings.max_upload_bytes
    if file.size is not None and file.size > limit:
        raise LimitExceededError(
            f"files[{index}] ({file.filename!r}) is {file.size} bytes; the limit is {limit} bytes "
            "(NOMINAL_MAX_UPLOAD_BYTES)"
        )
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise LimitExceededError(f"files[{index}] ({file.filename!r}) exceeds {limit} bytes "
                                 "(NOMINAL_MAX_UPLOAD_BYTES)")
    return service.Upload(filename=file.filename, data=data)


@router.post("", dependencies=[AdminAccess, ImageBody],
             status_code=status.HTTP_201_CREATED, response_model=ImagesUploaded,
             responses=problems(404, 413, 400))
def upload_images(
    name: VariantName,
    files: Annotated[list[UploadFile], File(description="one or more image files (PNG, JPEG, "
                                                        "BMP, TIFF)")],
    session: SessionDep,
    database: DatabaseDep,
    settings: SettingsDep,
    label: Annotated[ImageLabel, Form(description="good (default) or defect")] = ImageLabel.good,
) -> ImagesUploaded:
    """Upload images. Every file is decoded and checked first; one bad file rejects the request
    and stores nothing. Re-uploading the same bytes returns the stored image (``created:
    false``)."""
    with database.reading() as lookup:  # 404 before any decoding work
        variant_service.get_variant(lookup, name=name)
    uploads = [read_upload(file, i, settings) for i, file in enumerate(files)]
    # Decode before touching the database: on SQLite the write lock is then held only for
    # the inserts, not for the CPU work.
    checked = service.check_uploads(uploads, max_pixels=settings.max_image_pixels)
    variant = variant_service.get_variant(session, name=name)
    stored = service.add_images(session, variant=variant, uploads=checked, label=label,
                                max_images=settings.max_images_per_variant)
    return ImagesUploaded(images=[
        ImageUploaded(**ImagePublic.of(s.image).model_dump(), created=s.created) for s in stored
    ])


@router.get("", dependencies=[AdminAccess],
            response_model=ImagePage, responses=problems(404))
def list_images(
    variant: VariantDep,
    session: SessionDep,
    label: Annotated[ImageLabel | None, Query(description="only this label")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> ImagePage:
    """The variant's images, oldest first, one page at a time (metadata only)."""
    rows, total = service.list_images(session, variant=variant, label=label, limit=limit,
                                      offset=offset)
    return ImagePage(items=[ImagePublic.of(r) for r in rows], total=total, limit=limit,
                     offset=offset)


@router.get("/{image_id}", dependencies=[AdminAccess],
            response_model=ImagePublic, responses=problems(404))
def get_image(variant: VariantDep, image_id: ImageId, session: SessionDep) -> ImagePublic:
    """One image's metadata."""
    return ImagePublic.of(service.get_image(session, variant=variant, image_id=image_id))


@router.get("/{image_id}/content", dependencies=[AdminAccess],
            responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/bmp": {}, "image/tiff": {}},
          "description": "the stored bytes, exactly as uploaded"}, **problems(404)})
def get_image_content(variant: VariantDep, image_id: ImageId, session: SessionDep) -> Response:
    """The image as uploaded."""
    image = service.get_image(session, variant=variant, image_id=image_id)
    data = service.get_image_data(session, image=image)
    return Response(data, media_type=MEDIA_TYPES.get(image.format, "application/octet-stream"),
                    headers={"ETag": f'"{image.sha256}"'})


@router.delete("/{image_id}", dependencies=[AdminAccess],
               status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
def delete_image(variant: VariantDep, image_id: ImageId, session: SessionDep) -> Response:
    """Remove one image (models already trained are not affected)."""
    service.delete_image(session, variant=variant, image_id=image_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
