"""Shared fixtures of the detector unit tests: one detector, a small config, generated images.

Images are generated, never read from the datasets: a smooth periodic texture (so that every
patch of a good image has look-alikes in the other good images) plus a little seeded noise,
and a "defect" variant with a dark blob drawn on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.detector.config import DetectorConfig
from app.detector.engine import Detector, FittedModel
from tests.conftest import textured_part

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

GOOD_SIZE = (96, 96)  # (H, W) of the training images in these tests


def make_good(
    seed: int, height: int = GOOD_SIZE[0], width: int = GOOD_SIZE[1], noise: float = 4.0
) -> np.ndarray:
    """A textured "good" part of ``height x width`` (the suite-wide ``textured_part``)."""
    return textured_part(seed, height, width, noise)


@dataclass(frozen=True)
class Defect:
    """A defect image and where its blob is (pixel centre and radius)."""

    image: np.ndarray
    centre: tuple[int, int]  # (row, column)
    radius: int


def make_defect(
    seed: int,
    height: int = GOOD_SIZE[0],
    width: int = GOOD_SIZE[1],
    *,
    centre: tuple[int, int] | None = None,
    radius: int = 6,
    colour: tuple[int, int, int] = (20, 20, 20),
) -> Defect:
    """A good image with a filled dark disc drawn on it (centre defaults to the middle)."""
    image = make_good(seed, height, width).copy()
    cy, cx = centre if centre is not None else (height // 2, width // 2)
    yy, xx = np.mgrid[0:height, 0:width]
    image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius] = colour
    return Defect(image=image, centre=(cy, cx), radius=radius)


@pytest.fixture(scope="session")
def detector() -> Detector:
    """One detector for the whole session (it caches backbones and feature extractors);
    builds a backbone file under ``models/`` on first use if set-up has not."""
    return Detector(MODELS_DIR)


@pytest.fixture(scope="session")
def config() -> DetectorConfig:
    """Resolution 64: an 8 x 8 patch grid for square inputs, fast on CPU."""
    return DetectorConfig(resolution=64)


@pytest.fixture(scope="session")
def good_image() -> Callable[..., np.ndarray]:
    return make_good


@pytest.fixture(scope="session")
def defect_image() -> Callable[..., Defect]:
    return make_defect


@pytest.fixture(scope="session")
def train_images() -> list[np.ndarray]:
    return [make_good(seed) for seed in range(3)]


@pytest.fixture(scope="session")
def fitted(
    detector: Detector, config: DetectorConfig, train_images: list[np.ndarray]
) -> FittedModel:
    """A model fitted on three good 96 x 96 images at resolution 64 (seed 0)."""
    return detector.fit(train_images, config, seed=0)
