"""MVTec-AD-layout folders: the index of training and test images, decoding, masks.

Nothing is decoded up front: ``load_dataset`` only lists paths, and an image or mask is read
when it is used, so memory does not grow with the size of the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.detector.imaging import decode_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class TestImage:
    path: Path
    label: str  # "good" or the defect type
    mask: Path | None


@dataclass(frozen=True)
class Dataset:
    root: Path
    train: list[Path]
    test: list[TestImage]
    has_masks: bool


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_dataset(root: Path) -> Dataset:
    """Index ``root``; masks are optional (image-level labels only -> pixel metrics null)."""
    train_dir, test_dir = root / "train" / "good", root / "test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise SystemExit(f"{root} is not in MVTec AD layout (train/good and test/ needed)")
    test: list[TestImage] = []
    for label_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        for path in _images(label_dir):
            mask = root / "ground_truth" / label_dir.name / f"{path.stem}_mask.png"
            test.append(TestImage(path, label_dir.name, mask if mask.exists() else None))
    has_masks = any(t.mask is not None for t in test if t.label != "good")
    return Dataset(root=root, train=_images(train_dir), test=test, has_masks=has_masks)


def load_image(path: Path) -> np.ndarray:
    """The RGB pixels ``(H, W, 3)`` uint8 of one image, decoded as the service decodes."""
    return decode_image(path.read_bytes()).pixels


def load_mask(item: TestImage, shape: tuple[int, int]) -> np.ndarray:
    """The boolean defect mask of ``item`` (all False for good images and missing masks)."""
    if item.mask is None:
        return np.zeros(shape, dtype=bool)
    with Image.open(item.mask) as mask:
        pixels = np.asarray(mask.convert("L")) > 127
    if pixels.shape != shape:
        raise SystemExit(f"{item.mask}: mask is {pixels.shape[::-1]} px, the anomaly map "
                         f"{shape[::-1]}")
    return pixels
