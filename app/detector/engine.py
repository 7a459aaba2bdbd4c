"""The detector engine: fit a memory bank from good images, calibrate it, ship one ONNX file.

fit:   images -> feature extractor (ONNX) -> patches (N, C) -> greedy coreset -> bank (M, C)
       -> leave-one-out scores of the training images -> threshold -> scoring ONNX file
score: the scoring ONNX file alone (``CompiledModel``), or, for checks, the engine's own
       path: feature extractor + ``memory.nearest_distances``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from app.detector.backbones import BackboneSpec, backbone_path, get_backbone
from app.detector.calibration import Calibration, calibrate, region_holdout_score
from app.detector.config import DetectorConfig
from app.detector.graph import ResizePlan, build_feature_extractor, build_scoring_model
from app.detector.memory import greedy_coreset, image_score, nearest_distances
from app.detector.quantize import MAX_CALIBRATION_INPUTS, quantize_backbone
from app.detector.runtime import FORMAT_VERSION, METADATA_PREFIX, RuntimeOptions, check_image_array
from app.errors import InvalidInputError

# Patches the greedy coreset chooses from; beyond this a seeded random sample is used.
MAX_CORESET_CANDIDATES = 65536
# Training images scored for leave-one-out calibration; beyond this a seeded subset is used.
MAX_CALIBRATION_IMAGES = 50

ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class PatchFeatures:
    """Patch features of one image: ``patches (h * w, C)`` in row-major grid order."""

    patches: np.ndarray
    grid: tuple[int, int]


@dataclass
class FittedModel:
    """The result of ``Detector.fit``: the shippable ONNX file and what went into it."""

    onnx_bytes: bytes
    calibration: Calibration
    config: DetectorConfig
    bank_size: int
    n_images: int
    backbone: onnx.ModelProto  # the one inside the file (int8 models: the quantised one)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold


class FeatureExtractor:
    """ONNX session of the shared front end: ``image (H, W, 3)`` uint8 -> ``PatchFeatures``."""

    def __init__(
        self,
        spec: BackboneSpec,
        backbone: onnx.ModelProto,
        plan: ResizePlan,
        options: RuntimeOptions,
    ) -> None:
        model = build_feature_extractor(spec, backbone, plan)
        self.session = options.session(model.SerializeToString())

    def __call__(self, image: np.ndarray) -> PatchFeatures:
        patches, grid = self.session.run(["patches", "grid"], {"image": check_image_array(image)})
        return PatchFeatures(patches=patches, grid=(int(grid[0]), int(grid[1])))

    def backbone_input(self, image: np.ndarray) -> np.ndarray:
        """The tensor the backbone sees for ``image``: ``(1, 3, h, w)`` float32."""
        (pixels,) = self.session.run(["backbone_input"], {"image": check_image_array(image)})
        return pixels


def augment(image: np.ndarray, mode: str) -> list[np.ndarray]:
    """The image and its label-preserving copies: ``flip`` adds the two mirror images,
    ``rot90`` every symmetry of a square (quarter turns and their mirrors, eight views in
    all) for parts that appear in any orientation, mirrored or not."""
    if mode == "none":
        return [image]
    views = [image, image[:, ::-1], image[::-1, :]]
    if mode == "rot90":
        views += [np.rot90(image, k) for k in (1, 2, 3)]
        views += [image.transpose(1, 0, 2), image[::-1, ::-1].transpose(1, 0, 2)]  # diagonals
    return [np.ascontiguousarray(v) for v in views]


class Detector:
    """Fits and builds models. Thread-safe; caches backbones and feature extractors."""

    def __init__(self, models_dir: Path, options: RuntimeOptions | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.options = options or RuntimeOptions()
        self._backbones: dict[str, onnx.ModelProto] = {}
        self._extractors: dict[tuple[str, ResizePlan], FeatureExtractor] = {}
        self._lock = threading.Lock()

    def backbone(self, name: str) -> onnx.ModelProto:
        with self._lock:
            if name not in self._backbones:
                self._backbones[name] = onnx.load(str(backbone_path(name, self.models_dir)))
            return self._backbones[name]

    def extractor(self, config: DetectorConfig, plan: ResizePlan) -> FeatureExtractor:
        spec = get_backbone(config.backbone)
        key = (spec.name, plan)
        backbone = self.backbone(spec.name)
        with self._lock:
            if key not in self._extractors:
                self._extractors[key] = FeatureExtractor(spec, backbone, plan, self.options)
            return self._extractors[key]

    def fit(
        self,
        good_images: Sequence[np.ndarray],
        config: DetectorConfig,
        *,
        seed: int = 0,
        defect_images: Sequence[np.ndarray] = (),
        progress: ProgressCallback | None = None,
        metadata: dict[str, str] | None = None,
    ) -> FittedModel:
        """Fit a model from ``good_images`` (each ``(H, W, 3)`` uint8, sizes may differ).

        ``progress(fraction, stage)`` is called as work advances; it may raise (for example
        ``TrainingCancelledError``) to abort. ``defect_images`` only refine the threshold.
        """
        if len(good_images) == 0:
            raise InvalidInputError("need at least one good image to fit a model")
        report = progress or (lambda fraction, stage: None)
        spec = get_backbone(config.backbone)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        report(0.0, "features")
        images = [check_image_array(image) for image in good_images]
        plan = resize_plan(config, images)
        backbone = self.backbone(spec.name)
        extractor = self.extractor(config, plan)
        if config.precision == "int8":
            report(0.0, "quantisation")
            tq = time.perf_counter()
            calibration_inputs = [
                extractor.backbone_input(image) for image in images[:MAX_CALIBRATION_INPUTS]
            ]
            backbone = quantize_backbone(backbone, calibration_inputs)
            extractor = FeatureExtractor(spec, backbone, plan, self.options)
            timings["quantize_s"] = time.perf_counter() - tq
            report(0.0, "features")
        originals: list[PatchFeatures] = []  # the un-augmented view of each image
        chunks: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for i, image in enumerate(images):
            for j, view in enumerate(augment(image, config.augment)):
                feats = extractor(view)
                if j == 0:
                    originals.append(feats)
                chunks.append(feats.patches)
                owners.append(np.full(len(feats.patches), i, dtype=np.int32))
            report(0.4 * (i + 1) / len(good_images), "features")
        all_patches = np.concatenate(chunks)
        owner = np.concatenate(owners)
        del chunks
        timings["features_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        size = bank_size(len(all_patches), config)
        candidates = np.arange(len(all_patches))
        if len(candidates) > MAX_CORESET_CANDIDATES and size < len(candidates):
            # Greedy k-center costs O(N * size): beyond this many patches it runs on a seeded
            # random sample, which bounds training time for hundreds of images.
            rng = np.random.default_rng(seed)
            candidates = np.sort(rng.choice(len(candidates), MAX_CORESET_CANDIDATES, replace=False))
            size = min(size, len(candidates))
        chosen = candidates[
            greedy_coreset(
                all_patches[candidates],
                size,
                seed=seed,
                should_stop=lambda f: report(0.4 + 0.3 * f, "coreset"),
            )
        ]
        bank = all_patches[chosen]
        bank_owner = owner[chosen]
        timings["coreset_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        report(0.7, "calibration")
        good_scores, method = holdout_scores(
            originals, bank, bank_owner, seed, config.score_top_fraction
        )
        defect_scores = np.array(
            [
                image_score(
                    nearest_distances(extractor(check_image_array(img)).patches, bank),
                    config.score_top_fraction,
                )
                for img in defect_images
            ],
            dtype=np.float64,
        )
        calibration = calibrate(
            good_scores,
            config.target_false_reject_rate,
            method=method,
            defect_scores=defect_scores if len(defect_scores) else None,
        )
        timings["calibration_s"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        report(0.9, "export")
        props = {
            METADATA_PREFIX + "format_version": FORMAT_VERSION,
            METADATA_PREFIX + "threshold": repr(calibration.threshold),
            METADATA_PREFIX + "backbone": spec.name,
            METADATA_PREFIX + "preprocessing": json.dumps(
                {
                    "input": "image: uint8 [H, W, 3] RGB, any size; resized inside the graph",
                    "resize": plan.describe(spec.size_multiple),
                    "normalise": f"(x - {list(spec.mean)}) / {list(spec.std)}",
                    "outputs": "score: float32 [1], max nearest-neighbour patch distance; "
                    "anomaly_map: float32 [H, W]",
                    "decision": "anomalous when score > threshold",
                }
            ),
            METADATA_PREFIX + "config": json.dumps(config.to_dict()),
            METADATA_PREFIX + "resize_plan": json.dumps(asdict(plan)),
            METADATA_PREFIX + "calibration": json.dumps(calibration.to_dict()),
            METADATA_PREFIX + "bank_size": str(len(bank)),
            METADATA_PREFIX + "seed": str(seed),
            **(metadata or {}),
        }
        model = build_scoring_model(
            spec,
            backbone,
            plan,
            bank,
            config.blur_sigma,
            props,
            top_fraction=config.score_top_fraction,
        )
        onnx_bytes = model.SerializeToString()
        timings["export_s"] = time.perf_counter() - t3
        timings["total_s"] = time.perf_counter() - t0
        report(1.0, "done")
        return FittedModel(
            onnx_bytes=onnx_bytes,
            calibration=calibration,
            config=config,
            bank_size=len(bank),
            n_images=len(good_images),
            backbone=backbone,
            timings=timings,
        )

    def patch_scores(
        self,
        image: np.ndarray,
        bank: np.ndarray,
        config: DetectorConfig,
        plan: ResizePlan,
        backbone: onnx.ModelProto | None = None,
    ) -> PatchFeatures:
        """The engine's own scoring path: ``(h * w,)`` nearest distances on the patch grid.

        ``backbone``: the model's own (``FittedModel.backbone``) where it is not the shared
        float32 one (int8 models).
        """
        extractor = (
            self.extractor(config, plan)
            if backbone is None
            else FeatureExtractor(get_backbone(config.backbone), backbone, plan, self.options)
        )
        feats = extractor(check_image_array(image))
        return PatchFeatures(patches=nearest_distances(feats.patches, bank), grid=feats.grid)


def holdout_scores(
    originals: list[PatchFeatures],
    bank: np.ndarray,
    bank_owner: np.ndarray,
    seed: int,
    top_fraction: float,
) -> tuple[np.ndarray, str]:
    """Scores of training images as if unseen: each against the bank minus its own patches.

    Removing an image's members from the shared coreset approximates a coreset built without
    it (slightly sparser, so slightly pessimistic). With one image: region hold-out.
    """
    if len(originals) == 1:
        only = originals[0]
        score = region_holdout_score(only.patches, only.grid, top_fraction=top_fraction)
        return np.array([score]), "region-holdout"
    images = np.arange(len(originals))
    if len(images) > MAX_CALIBRATION_IMAGES:
        rng = np.random.default_rng(seed + 1)
        images = np.sort(rng.choice(len(images), MAX_CALIBRATION_IMAGES, replace=False))
    scores = []
    for i in images:
        others = bank[bank_owner != i]
        view = originals[i]
        # An image that owns the whole bank has nothing to be compared with: judge it
        # against the rest of itself, as with one shot.
        scores.append(
            image_score(nearest_distances(view.patches, others), top_fraction)
            if len(others)
            else region_holdout_score(view.patches, view.grid, top_fraction=top_fraction)
        )
    return np.asarray(scores), "leave-one-out"


def resize_plan(config: DetectorConfig, images: Sequence[np.ndarray]) -> ResizePlan:
    """The resize plan of a model fitted on ``images`` (fixed scale: their median shorter side)."""
    spec = get_backbone(config.backbone)
    reference = float(np.median([min(image.shape[:2]) for image in images]))
    return ResizePlan(
        policy=config.resize,
        resolution=config.resolution or spec.default_resolution,
        max_aspect=config.max_aspect,
        border=spec.border if config.border is None else config.border,
        reference_side=reference if config.resize == "fixed_scale" else None,
    )


def plan_from_model(onnx_bytes: bytes) -> ResizePlan:
    """The resize plan recorded in a scoring ONNX file's metadata."""
    model = onnx.load_from_string(onnx_bytes)
    props = {p.key: p.value for p in model.metadata_props}
    return ResizePlan(**json.loads(props[METADATA_PREFIX + "resize_plan"]))


def bank_size(n_patches: int, config: DetectorConfig) -> int:
    """Coreset size: ``ratio * N``, but every patch while the bank is small, and never more
    than ``max_bank_size`` (which bounds inference cost for large training sets)."""
    target = max(math.ceil(config.coreset_ratio * n_patches), min(n_patches, config.min_bank_size))
    return int(min(target, config.max_bank_size, n_patches))


def bank_from_model(onnx_bytes: bytes) -> np.ndarray:
    """The memory bank ``(M, C)`` stored inside a scoring ONNX file (for checks and tools)."""
    model = onnx.load_from_string(onnx_bytes)
    for init in model.graph.initializer:
        if re.fullmatch(r"bank_\d+", init.name):  # not bank_q_*, bank_scale_*, bank_sq_*
            return onnx.numpy_helper.to_array(init)
    raise InvalidInputError("no memory bank found in this ONNX file")
