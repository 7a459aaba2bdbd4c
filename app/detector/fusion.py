"""Fused transformer kernels for the ViT backbones, in the scoring session only.

onnxruntime's transformer optimiser rewrites a ViT block's residual add + LayerNorm into one
``SkipLayerNormalization`` and its bias + GELU into ``BiasGelu`` (contrib operators of the
``com.microsoft`` domain, which the session's own graph optimisations do not produce on a
CPU). The rewrite is done on the graph a session is built from, never on the stored file:
the downloadable model stays standard ONNX that any runtime reads, and the optimised graph
computes the same values up to float rounding (tests/detector/test_fusion.py;
BENCHMARKS.md, "ViT optimisations", for the speed).
"""

from __future__ import annotations

import logging

import onnx

log = logging.getLogger(__name__)

# Our ViT-S export's encoder blocks (app/detector/backbones/vit_small.py): a graph without them
# has nothing to fuse, and is left as it is.
_VIT_BLOCK = "/backbone/encoder/layer."
_HEADS, _HIDDEN = 6, 384  # ViT-S


def has_transformer_blocks(model: onnx.ModelProto) -> bool:
    return any(_VIT_BLOCK in node.name for node in model.graph.node)


def fuse_transformer_blocks(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its ViT blocks' LayerNorms and GELUs fused; ``model`` itself when it
    has none, or when the optimiser fails (the plain graph scores the same, only slower)."""
    if not has_transformer_blocks(model):
        return model
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    _quiet_optimiser()
    options = FusionOptions("vit")
    # Symbolic shape inference needs sympy and only serves to drop redundant casts (none here).
    options.enable_shape_inference = False
    try:
        fused = optimize_model(model, model_type="vit", num_heads=_HEADS, hidden_size=_HIDDEN,
                               optimization_options=options, opt_level=0)
    except Exception as exc:  # an optimiser bug must not keep a model from scoring
        log.warning("transformer fusion skipped: %s: %s", type(exc).__name__, exc)
        return model
    return fused.model


def _quiet_optimiser() -> None:
    """The optimiser's modules log under their bare names (``fusion_skiplayernorm``...) and
    warn of what does not apply here (the producer is not "pytorch", no shape inference):
    their warnings are not the service's."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("fusion_", "onnx_model", "onnxruntime.transformers")):
            logging.getLogger(name).setLevel(logging.ERROR)
