"""The one exception hierarchy of Nominal.

Every error a caller can cause is a ``NominalError``; the HTTP layer maps each class to one
status code in one place (``app.api.errors``), and a test checks that every class is mapped.

    NominalError
    ├── InvalidInputError            bad parameters or data that can never succeed        -> 422
    │   ├── InvalidImageError        bytes that are not a decodable, supported image      -> 422
    │   └── UnsupportedMediaError    a content type we do not read                        -> 415
    ├── LimitExceededError           a configured resource limit                          -> 413
    │   └── ImageTooLargeError       too many pixels / decompression bomb                 -> 413
    ├── NotFoundError                an unknown variant, image, model version or key      -> 404
    ├── ConflictError                the request clashes with the current state           -> 409
    │   ├── AlreadyExistsError       a name that is taken                                 -> 409
    │   ├── NoActiveModelError       inspect before any model is active                   -> 409
    │   ├── NotEnoughImagesError     training without good images                         -> 409
    │   └── UnsupportedModelFormatError  a model file format this release does not read   -> 409
    ├── AuthenticationError          a missing or unknown API key                         -> 401
    ├── PermissionDeniedError        a key whose role does not allow the action           -> 403
    ├── TrainingCancelledError       raised inside a job when its cancellation is seen    (internal)
    └── ServiceUnavailableError      the database or a backbone cannot be reached         -> 503

The detector core raises only ``InvalidInputError``, ``InvalidImageError``,
``ImageTooLargeError``, ``UnsupportedModelFormatError`` and ``TrainingCancelledError``; it
knows nothing of HTTP.
"""

from __future__ import annotations


class NominalError(Exception):
    """Base of every error Nominal raises on purpose."""

    title: str = "Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInputError(NominalError):
    title = "Invalid input"


class InvalidImageError(InvalidInputError):
    title = "Invalid image"


class UnsupportedMediaError(InvalidInputError):
    title = "Unsupported media type"


class LimitExceededError(NominalError):
    title = "Limit exceeded"


class ImageTooLargeError(LimitExceededError):
    title = "Image too large"


class NotFoundError(NominalError):
    title = "Not found"


class ConflictError(NominalError):
    title = "Conflict"


class AlreadyExistsError(ConflictError):
    title = "Already exists"


class NoActiveModelError(ConflictError):
    title = "No active model"


class NotEnoughImagesError(ConflictError):
    title = "Not enough images"


class UnsupportedModelFormatError(ConflictError):
    """A stored model file whose ``nominal.format_version`` this release does not read."""

    title = "Unsupported model format"


class AuthenticationError(NominalError):
    title = "Unauthorized"


class PermissionDeniedError(NominalError):
    title = "Forbidden"


class TrainingCancelledError(NominalError):
    title = "Training cancelled"


class ServiceUnavailableError(NominalError):
    title = "Service unavailable"
