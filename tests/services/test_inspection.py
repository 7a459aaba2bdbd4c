"""The model cache: bounded LRU, one load per key under concurrent misses."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.detector.config import DetectorConfig
from app.detector.engine import Detector
from app.detector.runtime import RuntimeOptions
from app.services.inspection import ModelCache


@pytest.fixture(scope="module")
def onnx_bytes(models_dir: Path, images: Any) -> bytes:
    detector = Detector(models_dir)
    fitted = detector.fit([images.good_pixels(i) for i in range(2)], DetectorConfig(resolution=64))
    return fitted.onnx_bytes


def test_lru_eviction_and_hits(onnx_bytes: bytes) -> None:
    sizes: list[int] = []
    cache = ModelCache(2, RuntimeOptions(threads=1), on_change=sizes.append)
    loads: list[tuple[int, int]] = []

    def loader(key: tuple[int, int]) -> Any:
        return lambda: loads.append(key) or onnx_bytes

    for key in [(1, 1), (1, 2), (1, 1), (2, 1), (1, 2)]:
        cache.get(key, loader(key))
    # (1, 1) hit; (2, 1) evicts the least recent (1, 2); which then loads again.
    assert loads == [(1, 1), (1, 2), (2, 1), (1, 2)]
    assert cache.keys() == [(2, 1), (1, 2)]
    assert len(cache) == 2 and max(sizes) == 2
    cache.evict_variant(1)
    assert cache.keys() == [(2, 1)]


def test_concurrent_misses_load_once(onnx_bytes: bytes) -> None:
    cache = ModelCache(4, RuntimeOptions(threads=1))
    calls = 0
    lock = threading.Lock()

    def slow() -> bytes:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.2)
        return onnx_bytes

    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get((1, 1), slow)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1
    assert len({id(r) for r in results}) == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ModelCache(0, RuntimeOptions())
