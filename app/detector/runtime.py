"""Running ONNX graphs: session options in one place, and the shipped model as an object."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from app.detector.verdict import OUTPUTS, Verdict, VerdictRules, read_verdict
from app.errors import InvalidInputError, UnsupportedModelFormatError

log = logging.getLogger(__name__)

METADATA_PREFIX = "nominal."

# The model file format: the graph's inputs and outputs and the ``nominal.*`` metadata a reader
# relies on, versioned by ``nominal.format_version`` in every file the engine writes.
#
# Policy (``read_format_version``, applied whenever a stored model is loaded):
#   * versions are positive integers, compared as integers; ``FORMAT_VERSION`` is what this
#     release writes and the newest it reads;
#   * OLDEST_READABLE_FORMAT_VERSION <= version <= FORMAT_VERSION: loaded (no older one exists
#     yet);
#   * a newer version (a model trained by a later release, seen by this one after a rollback
#     or during a rolling upgrade), an older one than the oldest still read, a missing one (not
#     a Nominal model) or one that is not an integer: refused with ``UnsupportedModelFormatError``
#     (HTTP 409) that says which versions this release reads and what to do.
# A release that bumps FORMAT_VERSION must keep serving the models already in its users'
# databases: read the older layouts too (``CompiledModel.format_version`` says which one a file
# has), or convert older files (when loaded, or in a migration that rewrites the stored
# artefacts); raising OLDEST_READABLE_FORMAT_VERSION instead strands stored models and needs a
# release note. tests/upgrade pins this (the models of release 0.1.0, format 1, must give the
# same scores after upgrading), tests/detector/test_format_version.py the refusals.
#
# Versions: 1, outputs ``score`` and ``anomaly_map``. 2 adds the outputs ``patch_scores`` (the
# judged patch grid the defect regions come from, ``app.detector.regions``) and
# ``roi_scores`` (one score per region of interest, ``app.detector.layout``), the layout
# constants, and the ``nominal.regions`` and ``nominal.layout`` metadata
# (``app.detector.verdict`` reads them). A version-1 file is given ``patch_scores`` when
# loaded (``with_patch_scores``: the grid its map is made from), so it reports regions too;
# it has no layout.
FORMAT_VERSION = "2"
OLDEST_READABLE_FORMAT_VERSION = 1


def check_model_file(onnx_bytes: bytes) -> int:
    """The format version of a stored model file, or ``UnsupportedModelFormatError`` when this
    release does not read it; for callers that must know before serving it (activation)."""
    model = onnx.load_from_string(onnx_bytes)
    return read_format_version({p.key: p.value for p in model.metadata_props})


def read_format_version(metadata: dict[str, str]) -> int:
    """The format version of a model file from its ``metadata_props``, or
    ``UnsupportedModelFormatError`` when this release does not read it (see above)."""
    newest = int(FORMAT_VERSION)
    reads = (f"version {newest}" if newest == OLDEST_READABLE_FORMAT_VERSION
             else f"versions {OLDEST_READABLE_FORMAT_VERSION} to {newest}")
    raw = metadata.get(METADATA_PREFIX + "format_version")
    if raw is None:
        raise UnsupportedModelFormatError(
            f"the model file has no {METADATA_PREFIX}format_version in its metadata: it was not "
            f"written by Nominal, or it has been altered (this release reads model format {reads})"
        )
    try:
        version = int(raw.strip())
    except ValueError:
        version = None
    if version is None or version < 1:
        raise UnsupportedModelFormatError(
            f"model format version {raw!r} is not a version this release understands (it reads "
            f"model format {reads})"
        )
    if version > newest:
        raise UnsupportedModelFormatError(
            f"model format version {version} is newer than this release of Nominal reads (it reads "
            f"model format {reads}); the model was trained by a later release: upgrade this "
            f"service, or activate a model trained by this release"
        )
    if version < OLDEST_READABLE_FORMAT_VERSION:
        raise UnsupportedModelFormatError(
            f"model format version {version} is older than this release of Nominal reads (it reads "
            f"model format {reads}); retrain the model"
        )
    return version


_arena_lock = threading.Lock()
_shared_arena: bool | None = None  # None: not tried yet


def _register_shared_arena() -> bool:
    """Register one CPU arena with onnxruntime's process-wide environment (once per process).

    Each session otherwise has its own arena, which keeps its high-water mark (tens of MiB:
    the activations and the patch x bank distance block of one image) for the session's life,
    so N loaded models cost N arenas. Sessions that opt in share this one instead; it only
    needs to hold what runs at the same time. False where onnxruntime cannot do it (sessions
    then keep their own arenas, as before).
    """
    global _shared_arena
    with _arena_lock:
        if _shared_arena is None:
            try:
                info = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                # max_mem 0 (no cap), then onnxruntime's defaults: extend strategy, initial
                # chunk size, max dead bytes per chunk.
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
                _shared_arena = True
            except Exception:  # an onnxruntime build without it: per-session arenas
                _shared_arena = False
        return _shared_arena


@dataclass(frozen=True)
class RuntimeOptions:
    """How ONNX sessions run. ``threads`` is per session (intra-op); CPU is the default.

    ``shared_arena``: CPU sessions draw memory from one arena per process instead of one each
    (a third of the RSS with 50 loaded models, latency unchanged; bench/README.md).

    ``spinning``: whether idle intra-op threads busy-wait for work (onnxruntime's default) or
    sleep. The service runs several sessions at once (inference workers, training) on few
    cores, where spinning threads take CPU from the threads doing the work: off by default
    (on 2 busy cores, lower latency for one stream and about twice the throughput of two;
    bench/README.md). Turn it on for one session alone on dedicated cores.
    """

    threads: int = 2
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    shared_arena: bool = True
    spinning: bool = False

    def session(self, model: bytes | str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.spinning else "0"
        )
        if self.shared_arena and _register_shared_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
        available = set(ort.get_available_providers())
        providers = [p for p in self.providers if p in available] or ["CPUExecutionProvider"]
        return ort.InferenceSession(model, sess_options=options, providers=providers)


def check_image_array(image: np.ndarray) -> np.ndarray:
    """Validate an RGB image array ``(H, W, 3)`` uint8 and return it contiguous."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InvalidInputError(f"image must be an (H, W, 3) RGB array, got shape {shape}")
    if image.dtype != np.uint8:
        raise InvalidInputError(f"image must be uint8, got {image.dtype}")
    if min(image.shape[:2]) < 8:
        raise InvalidInputError(
            f"image must be at least 8x8 px, got {image.shape[1]}x{image.shape[0]}"
        )
    return np.ascontiguousarray(image)


class CompiledModel:
    """A trained model's single ONNX file, loaded for scoring.

    Reads its threshold from the file's own metadata, so the file is the whole truth. A file
    whose format version this release does not read is refused (``read_format_version``).
    """

    def __init__(self, onnx_bytes: bytes, options: RuntimeOptions | None = None) -> None:
        options = options or RuntimeOptions()
        model = onnx.load_from_string(onnx_bytes)
        props = {p.key: p.value for p in model.metadata_props}
        self.metadata: dict[str, str] = props
        self.format_version = read_format_version(props)
        self.rules = VerdictRules.of(props)
        self.threshold = self.rules.threshold
        if "patch_scores" not in {o.name for o in model.graph.output}:
            with_patch_scores(model)
            onnx_bytes = model.SerializeToString()
        # What a verdict reads (files before regions of interest have no roi_scores).
        self.verdict_outputs = [o.name for o in model.graph.output if o.name in OUTPUTS]
        self.size_bytes = len(onnx_bytes)
        # Why the score-only split failed (None: it worked, or the graph has no map branch).
        # The model then still scores correctly, at the cost of building the map every call.
        self.split_error: str | None = None
        try:
            split = split_score_and_map(model)
        except Exception as exc:  # a graph this split does not foresee: run it whole
            split = None
            self.split_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("score-only subgraph not built (%s); this model builds its anomaly map "
                        "on every call", self.split_error)
        del model
        # ``session`` computes the score (and, unsplit, the map too); ``map_session`` turns the
        # tensors named in ``handoff`` into the anomaly map.
        self.map_session: ort.InferenceSession | None = None
        self.handoff: list[str] = []
        if split is None:
            self.session = options.session(onnx_bytes)
        else:
            score_part, map_part, self.handoff = split
            self.session = options.session(score_part.SerializeToString())
            del score_part
            # One thread: the map part is small (upsample, blur, resize); a second
            # intra-op pool per loaded model would only add threads.
            self.map_session = replace(options, threads=1).session(map_part.SerializeToString())

    @property
    def calibration(self) -> dict[str, Any]:
        return json.loads(self.metadata.get(METADATA_PREFIX + "calibration", "{}"))

    def outputs(self, image: np.ndarray, *, with_map: bool = True) -> ModelOutputs:
        """``image (H, W, 3)`` uint8 -> the graph's outputs (the map only when asked for)."""
        pixels = check_image_array(image)
        names = self.verdict_outputs
        if self.map_session is None:
            fetched = self.session.run([*names, *(["anomaly_map"] if with_map else [])],
                                       {"image": pixels})
            return ModelOutputs(dict(zip(names, fetched, strict=False)),
                                fetched[-1] if with_map else None)
        passed = [name for name in self.handoff if name != "image"] if with_map else []
        fetched = self.session.run([*names, *passed], {"image": pixels})
        values = dict(zip(names, fetched[:len(names)], strict=True))
        if not with_map:
            return ModelOutputs(values, None)
        feeds: dict[str, np.ndarray] = dict(zip(passed, fetched[len(names):], strict=True))
        if "image" in self.handoff:
            feeds["image"] = pixels
        (anomaly_map,) = self.map_session.run(["anomaly_map"], feeds)
        return ModelOutputs(values, anomaly_map)

    def run(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """``image (H, W, 3)`` uint8 -> (score, anomaly map ``(H, W)``)."""
        out = self.outputs(image)
        assert out.anomaly_map is not None
        return out.score, out.anomaly_map

    def score(self, image: np.ndarray) -> float:
        (score,) = self.session.run(["score"], {"image": check_image_array(image)})
        return float(score[0])

    def inspect(self, image: np.ndarray, *, with_map: bool = False,
                max_regions: int | None = None) -> Verdict:
        """The verdict on ``image`` (``verdict.read_verdict``: regions, regions of interest,
        minimum defect areas)."""
        out = self.outputs(image, with_map=with_map)
        return read_verdict(self.rules, image.shape[:2], out.values, max_regions=max_regions,
                            anomaly_map=out.anomaly_map)


@dataclass(frozen=True)
class ModelOutputs:
    """What a model's graph answers for one image: ``values`` by output name (``score``,
    ``patch_scores`` (h, w), ``roi_scores`` (R,) where the file has it), and the anomaly map
    when asked for."""

    values: dict[str, np.ndarray]
    anomaly_map: np.ndarray | None

    @property
    def score(self) -> float:
        return float(self.values["score"][0])

    @property
    def patch_scores(self) -> np.ndarray:
        return self.values["patch_scores"]


def with_patch_scores(model: onnx.ModelProto) -> None:
    """Give a format-1 model the ``patch_scores`` output, in place: the patch grid its
    ``anomaly_map`` is made from (``graph.anomaly_map``: ``rows @ grid @ cols``), which is
    the grid ``score`` reads. ``UnsupportedModelFormatError`` for a graph of another shape."""
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer.get("anomaly_map")
    outer = producer.get(node.input[0]) if node is not None else None
    inner = producer.get(outer.input[0]) if outer is not None else None
    if (node is None or node.op_type != "Identity" or outer is None or outer.op_type != "MatMul"
            or inner is None or inner.op_type != "MatMul"):
        raise UnsupportedModelFormatError(
            "the model file's anomaly map is not built the way Nominal builds it, so its patch "
            "scores cannot be found; retrain the model"
        )
    model.graph.node.append(helper.make_node("Identity", [inner.input[1]], ["patch_scores"]))
    model.graph.output.insert(1, helper.make_tensor_value_info(
        "patch_scores", onnx.TensorProto.FLOAT, ["h", "w"]))


def split_score_and_map(
    model: onnx.ModelProto,
) -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]] | None:
    """The scoring graph as two graphs: what every output but ``anomaly_map`` needs, and the
    rest of what ``anomaly_map`` needs (upsampling, blur, resize to the image), joined by the
    returned tensor names (outputs of the first, inputs of the second).

    onnxruntime runs every node of a graph whatever outputs are fetched, so one session would
    build the anomaly map on every score-only call (``/inspect`` without a heatmap): about
    10 % of its CPU time (bench/README.md). None when the graph
    has no separate map branch or a hand-off tensor's type cannot be inferred (the caller then
    runs the whole file as one session).
    """
    graph = model.graph
    scored = [o.name for o in graph.output if o.name != "anomaly_map"]
    if len(scored) == len(graph.output):
        return None
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}

    def needed(name: str) -> set[int]:
        nodes: set[int] = set()
        stack = [name]
        while stack:
            index = producer.get(stack.pop())
            if index is not None and index not in nodes:
                nodes.add(index)
                stack.extend(x for x in graph.node[index].input if x)
        return nodes

    score_nodes = set().union(*(needed(name) for name in scored))
    map_nodes = needed("anomaly_map") - score_nodes
    if not map_nodes:
        return None
    initializers = {t.name for t in graph.initializer}
    handoff = sorted(
        {
            x
            for i in map_nodes
            for x in graph.node[i].input
            if x and x not in initializers and producer.get(x) not in map_nodes
        }
    )
    types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.input}
    if any(x not in types for x in handoff):
        # Only the hand-off tensors' element types are needed; infer them on the graph
        # without its weights (shape inference would copy them).
        light = onnx.ModelProto()
        light.CopyFrom(model)
        del light.graph.initializer[:]
        light.graph.input.extend(
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            for t in graph.initializer
        )
        inferred = onnx.shape_inference.infer_shapes(light)
        types.update((vi.name, vi.type.tensor_type.elem_type) for vi in inferred.graph.value_info)
    if any(not types.get(x) for x in handoff):
        return None
    outputs = {o.name: o for o in graph.output}

    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, types[name], None)

    def part(
        nodes: set[int],
        inputs: list[onnx.ValueInfoProto],
        outs: list[onnx.ValueInfoProto],
        name: str,
    ) -> onnx.ModelProto:
        used = {x for i in nodes for x in graph.node[i].input}
        sub = helper.make_graph(
            [graph.node[i] for i in sorted(nodes)],
            name,
            inputs,
            outs,
            initializer=[t for t in graph.initializer if t.name in used],
        )
        out = helper.make_model(sub, opset_imports=list(model.opset_import))
        out.ir_version = model.ir_version
        return out

    passed = [x for x in handoff if x != "image"]
    score_part = part(
        score_nodes,
        list(graph.input),
        [*(outputs[name] for name in scored), *map(value, passed)],
        graph.name + "_score",
    )
    map_part = part(
        map_nodes, [value(x) for x in handoff], [outputs["anomaly_map"]], graph.name + "_map"
    )
    return score_part, map_part, handoff
