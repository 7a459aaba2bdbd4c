"""What a backbone entry is: a pretrained network turned into an ONNX feature extractor.

Every backbone ONNX file in ``models/`` has the same contract, so the rest of the detector
never branches on which network it runs:

    input   ``pixels``  float32 ``(1, 3, H, W)``, RGB already normalised as ``(x - mean) / std``,
            H and W dynamic, multiples of ``size_multiple``
    outputs one float32 feature map ``(1, C_i, H / s_i, W / s_i)`` per entry of ``layers``

Patch aggregation (local averaging, upsampling to the finest grid, concatenation) is applied by
``app.detector.graph`` on top of these outputs, the same way for every backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx


@dataclass(frozen=True)
class FeatureLayer:
    """One feature map the backbone emits: its ONNX output name, channels and stride."""

    output: str
    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: how to build the network and how to feed it."""

    name: str
    description: str
    source: str  # where the weights come from (package and file), for provenance
    license: str
    mean: tuple[float, float, float]  # on the 0..255 scale
    std: tuple[float, float, float]
    layers: tuple[FeatureLayer, ...]
    size_multiple: int  # input sides are rounded to a multiple of this
    default_resolution: int
    build: Callable[[], onnx.ModelProto] = field(repr=False, compare=False)
    # Patch neighbourhood for local averaging (PatchCore's p = 3); 1 disables it.
    neighbourhood: int = 3
    # Default mirrored margin (in size multiples): CNNs zero-pad, so their border patches
    # benefit from real-looking context; a ViT has no padding and needs none.
    border: int = 1
    # Measured figures shown by GET /v1/backbones (see BENCHMARKS.md).
    figures: dict[str, float] = field(default_factory=dict, compare=False)
    # How its file is built: a new revision is a new file name (registry.backbone_file), so a
    # checkout built before builds the new one on first use instead of keeping the old.
    revision: int = 1

    @property
    def file_name(self) -> str:
        """``vit_small_l8.onnx`` for the first revision, ``vit_small_l8.r2.onnx`` after."""
        return f"{self.name}.onnx" if self.revision == 1 else f"{self.name}.r{self.revision}.onnx"

    @property
    def feature_dim(self) -> int:
        return sum(layer.channels for layer in self.layers)

    @property
    def patch_stride(self) -> int:
        """Stride of the patch grid: the finest layer's stride."""
        return min(layer.stride for layer in self.layers)
