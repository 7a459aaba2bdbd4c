"""Per-model detector configuration, validated where it enters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from app.errors import InvalidInputError

Augmentation = Literal["none", "flip", "rot90"]
ResizePolicy = Literal["fixed_scale", "shorter_side", "square"]
Precision = Literal["float32", "int8"]

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that shapes one trained model; stored with it so a model can be rebuilt.

    ``resolution`` is the network input's shorter side in pixels; ``resize`` says how images
    of other sizes get there (see ``graph.ResizePlan``): by default one fixed scale for all
    images of the model, so crops of different sizes keep the same pixel scale. The aspect
    ratio is always kept unless ``resize="square"``; there is never a centre crop.
    """

    backbone: str = DEFAULT_BACKBONE
    resolution: int | None = None  # None: the backbone's default
    resize: ResizePolicy = "fixed_scale"
    max_aspect: float = 4.0
    # Mirrored margin around the image, in backbone size multiples (16 px for Lite0), so that
    # border patches are not judged on a CNN's zero padding. None: the backbone's default.
    border: int | None = None
    coreset_ratio: float = 0.1
    # Banks smaller than this keep every patch: few-shot banks are small and subsampling
    # them only loses coverage (PatchCore's coreset is a speed device for large banks).
    min_bank_size: int = 2048
    max_bank_size: int = 16384
    target_false_reject_rate: float = 0.01
    augment: Augmentation = "none"
    # 0: image score = max patch score (PatchCore); > 0: mean of that top fraction of patches.
    score_top_fraction: float = 0.0
    blur_sigma: float = 4.0  # at the processed resolution, as in PatchCore
    # int8: the backbone runs in 8 bits, calibrated on the training images (up to about 1.2x
    # the images per second on a CPU, a small measured accuracy cost; app/detector/quantize.py).
    precision: Precision = "float32"

    def __post_init__(self) -> None:
        if self.resolution is not None and not 64 <= self.resolution <= 1024:
            raise InvalidInputError(f"resolution must be within 64..1024, got {self.resolution}")
        if self.resize not in ("fixed_scale", "shorter_side", "square"):
            raise InvalidInputError(
                f"resize must be fixed_scale, shorter_side or square, got {self.resize!r}"
            )
        if self.border is not None and not 0 <= self.border <= 4:
            raise InvalidInputError(f"border must be within 0..4, got {self.border}")
        if not 1.0 <= self.max_aspect <= 16.0:
            raise InvalidInputError(f"max_aspect must be within 1..16, got {self.max_aspect}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise InvalidInputError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if not 1 <= self.min_bank_size <= self.max_bank_size:
            raise InvalidInputError(
                f"need 1 <= min_bank_size <= max_bank_size, got {self.min_bank_size}, "
                f"{self.max_bank_size}"
            )
        if not 0.0 < self.target_false_reject_rate < 0.5:
            raise InvalidInputError(
                f"target_false_reject_rate must be in (0, 0.5), got {self.target_false_reject_rate}"
            )
        if self.augment not in ("none", "flip", "rot90"):
            raise InvalidInputError(f"augment must be none, flip or rot90, got {self.augment!r}")
        if not 0.0 <= self.score_top_fraction <= 0.5:
            raise InvalidInputError(
                f"score_top_fraction must be within 0..0.5, got {self.score_top_fraction}"
            )
        if not 0.0 <= self.blur_sigma <= 16.0:
            raise InvalidInputError(f"blur_sigma must be within 0..16, got {self.blur_sigma}")
        if self.precision not in ("float32", "int8"):
            raise InvalidInputError(f"precision must be float32 or int8, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidInputError(f"unknown detector settings: {sorted(unknown)}")
        return cls(**data)
