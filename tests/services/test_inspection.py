"""The model cache: bounded LRU, one load per key under concurrent misses."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.detector import runtime
from app.detector.config import DetectorConfig
from app.detector.engine import Detector
from app.detector.runtime import RuntimeOptions
from app.services.inspection import ModelCache
from app.services.metrics import Metrics


@pytest.fixture(scope="module")
def onnx_bytes(models_dir: Path, images: Any) -> bytes:
    detector = Detector(models_dir)
    fitted = detector.fit([images.good_pixels(i) for i in range(2)], DetectorConfig(resolution=64))
    return fitted.onnx_bytes


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_lru_eviction_and_hits(onnx_bytes: bytes) -> None:
    metrics = Metrics()
    cache = ModelCache(2, RuntimeOptions(threads=1), metrics=metrics)
    loads: list[tuple[int, int]] = []

    def loader(key: tuple[int, int]) -> Any:
        return lambda: loads.append(key) or onnx_bytes

    for key in [(1, 1), (1, 2), (1, 1), (2, 1), (1, 2)]:
        cache.get(key, loader(key))
    # (1, 1) hit; (2, 1) evicts the least recent (1, 2); which then loads again.
    assert loads == [(1, 1), (1, 2), (2, 1), (1, 2)]
    assert cache.keys() == [(2, 1), (1, 2)]
    assert len(cache) == 2 and _sample(metrics, "nominal_model_cache_entries") == 2
    assert _sample(metrics, "nominal_model_cache_loads_total") == 4
    assert _sample(metrics, "nominal_model_split_fallbacks_total") == 0
    cache.evict_variant(1)
    assert cache.keys() == [(2, 1)]
    assert _sample(metrics, "nominal_model_cache_entries") == 1


def test_failed_load_leaves_no_lock_behind(onnx_bytes: bytes) -> None:
    cache = ModelCache(2, RuntimeOptions(threads=1))
    with pytest.raises(Exception):  # noqa: B017 (whatever onnx raises for garbage)
        cache.get((1, 1), lambda: b"not an onnx file")
    assert cache._loading == {} and len(cache) == 0
    # The key is not poisoned: the next call loads it.
    assert cache.get((1, 1), lambda: onnx_bytes).threshold > 0


def test_split_fallback_is_logged_and_counted(onnx_bytes: bytes, caplog: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph the score-only split does not foresee still scores, and says so once."""
    def unforeseen(model: Any) -> Any:
        raise ValueError("unforeseen graph")

    monkeypatch.setattr(runtime, "split_score_and_map", unforeseen)
    metrics = Metrics()
    cache = ModelCache(2, RuntimeOptions(threads=1), metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="app.detector.runtime"):
        model = cache.get((1, 1), lambda: onnx_bytes)
        cache.get((1, 1), lambda: onnx_bytes)  # a hit: no second line, no second count
    assert model.split_error == "ValueError: unforeseen graph" and model.map_session is None
    assert [r.message for r in caplog.records if "score-only" in r.message] == [
        "score-only subgraph not built (ValueError: unforeseen graph); this model builds its "
        "anomaly map on every call"]
    assert _sample(metrics, "nominal_model_split_fallbacks_total") == 1


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
