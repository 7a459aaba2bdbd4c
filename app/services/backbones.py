"""The registered backbones, and loading them so that the first training does not wait."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.detector.backbones import REGISTRY, BackboneSpec
from app.detector.config import DEFAULT_BACKBONE
from app.detector.engine import Detector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneInfo:
    spec: BackboneSpec
    is_default: bool
    available: bool  # its ONNX file is built under models_dir
    loaded: bool


def list_backbones(detector: Detector, loaded: Sequence[str]) -> list[BackboneInfo]:
    return [
        BackboneInfo(spec=spec, is_default=name == DEFAULT_BACKBONE,
                     available=(detector.models_dir / spec.file_name).exists(),
                     loaded=name in loaded)
        for name, spec in REGISTRY.items()
    ]


@dataclass
class BackboneLoader:
    """Loads (building if needed) the configured backbones in a background thread; readiness
    waits for it, liveness does not."""

    detector: Detector
    names: Sequence[str]
    loaded: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._load, name="nominal-backbones", daemon=True).start()

    def _load(self) -> None:
        try:
            for name in self.names:
                try:
                    self.detector.backbone(name)
                    self.loaded.append(name)
                except Exception as exc:  # reported by /readyz; the service keeps serving
                    log.exception("could not load backbone %s", name)
                    self.errors[name] = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    @property
    def ready(self) -> bool:
        return self.done.is_set() and not self.errors

    def status(self) -> dict[str, Any]:
        return {"loaded": list(self.loaded), "errors": dict(self.errors),
                "pending": not self.done.is_set()}
