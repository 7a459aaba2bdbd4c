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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import onnx

from app.detector.backbones import BackboneSpec, backbone_path, get_backbone
from app.detector.calibration import Calibration, calibrate, region_holdout_score
from app.detector.config import DetectorConfig, EdgeReach
from app.detector.graph import (
    ResizePlan,
    build_feature_extractor,
    build_scoring_model,
    light_statistics,
)
from app.detector.layout import LAYOUT_METADATA, TRAINED_IGNORE_METADATA, Layout
from app.detector.memory import (
    PatchFeatures,
    edge_weights,
    greedy_coreset,
    image_score,
    nearest_distances,
)
from app.detector.orientation import TURN_ANGLES, has_direction, placed_at_varying_angles, turn
from app.detector.presets import AUTO, PRESETS, Preset, auto_pick
from app.detector.quality import DEFAULT_PROFILE, DefectProfile, QualityReport, quality_report
from app.detector.quantize import MAX_CALIBRATION_INPUTS, quantize_backbone
from app.detector.regions import RegionRule
from app.detector.runtime import FORMAT_VERSION, METADATA_PREFIX, RuntimeOptions, check_image_array
from app.detector.variations import jpeg_copies, variation_views
from app.errors import InvalidInputError

# Patches the greedy coreset chooses from; beyond this a seeded random sample is used.
MAX_CORESET_CANDIDATES = 65536
# Training images scored for leave-one-out calibration; beyond this a seeded subset is used.
MAX_CALIBRATION_IMAGES = 50
# Fresh variation views of a one-image model's photo, scored to calibrate it.
ONE_SHOT_HELD_OUT_VIEWS = 8
# Feature extractor sessions a Detector keeps (each a backbone's worth of memory).
MAX_EXTRACTORS = 8
# The quality report's warning for one photo of a part with a direction under augment auto.
ONE_ANGLE_WARNING = ("one photo shows the part at one angle: if it lies at other angles on "
                     "the line, set augment turns or add good images of it at other angles")

ProgressCallback = Callable[[float, str], None]


@dataclass
class FittedModel:
    """The result of ``Detector.fit``: the shippable ONNX file and what went into it."""

    onnx_bytes: bytes
    calibration: Calibration
    quality: QualityReport
    config: DetectorConfig
    bank_size: int
    n_images: int
    backbone: onnx.ModelProto  # the one inside the file (int8 models: the quantised one)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold


def unit_length(config: DetectorConfig) -> bool:
    """Whether patch features are scaled to unit length (the cosine distance)."""
    return config.distance == "cosine"


def wants_foreground(config: DetectorConfig) -> bool:
    """Whether the feature extractor computes each image's foreground (background auto)."""
    return config.background == "auto"


# A training set shows "a part on a background" when every photo's foreground covers between
# these shares of its cells and its border cells lie mostly (at most BORDER_FOREGROUND of them
# foreground) on the other side: declared with candidate C8 (BENCHMARKS.md, "Presets").
FOREGROUND_SHARE = (0.05, 0.85)
BORDER_FOREGROUND = 0.25


def separates_background(photos: Sequence[PatchFeatures]) -> bool:
    """Whether the training photos' own foregrounds (``PatchFeatures.foreground``) show a part
    on a background, so leaving the background out is safe; a texture's principal component
    splits it at random and fails this."""
    for feats in photos:
        if feats.foreground is None:
            return False
        grid = feats.foreground.reshape(feats.grid)
        border = np.concatenate([grid[0], grid[-1], grid[1:-1, 0], grid[1:-1, -1]])
        share = float(grid.mean())
        if not FOREGROUND_SHARE[0] <= share <= FOREGROUND_SHARE[1] \
                or float(border.mean()) > BORDER_FOREGROUND:
            return False
    return True


class FeatureExtractor:
    """ONNX session of the shared front end: ``image (H, W, 3)`` uint8 -> ``PatchFeatures``."""

    def __init__(
        self,
        spec: BackboneSpec,
        backbone: onnx.ModelProto,
        plan: ResizePlan,
        options: RuntimeOptions,
        unit_length: bool = False,
        foreground: bool = False,
    ) -> None:
        model = build_feature_extractor(spec, backbone, plan, unit_length=unit_length,
                                        foreground=foreground)
        self.session = options.session(model.SerializeToString())
        self.outputs = ["patches", "grid", *(["foreground"] if foreground else [])]

    @classmethod
    def for_config(cls, spec: BackboneSpec, backbone: onnx.ModelProto, plan: ResizePlan,
                   options: RuntimeOptions, config: DetectorConfig) -> FeatureExtractor:
        """The extractor a model with ``config`` needs: unit-length features for the cosine
        distance, each image's foreground for background auto."""
        return cls(spec, backbone, plan, options, unit_length(config), wants_foreground(config))

    def __call__(self, image: np.ndarray) -> PatchFeatures:
        out = self.session.run(self.outputs, {"image": check_image_array(image)})
        grid = (int(out[1][0]), int(out[1][1]))
        return PatchFeatures(patches=out[0], grid=grid,
                             foreground=out[2].ravel() if len(out) > 2 else None)

    def backbone_input(self, image: np.ndarray) -> np.ndarray:
        """The tensor the backbone sees for ``image``: ``(1, 3, h, w)`` float32."""
        (pixels,) = self.session.run(["backbone_input"], {"image": check_image_array(image)})
        return pixels


def view_transforms(mode: str) -> list[Callable[[np.ndarray], np.ndarray]]:
    """The label-preserving copies of an image as array operations on its first two axes
    (so they apply to an image and to its patch-grid masks alike): the identity first;
    ``flip`` adds the two mirror images, ``rot90`` every symmetry of a square (quarter turns
    and their mirrors, eight views in all) for parts that appear in any orientation, ``turns``
    the turns by every 45 degrees without mirrors (``orientation``). ``auto`` is decided
    before (``Detector.fit``)."""
    def identity(a: np.ndarray) -> np.ndarray:
        return a

    if mode == "none":
        return [identity]
    if mode == "turns":
        return [identity, *(partial(turn, degrees=angle) for angle in TURN_ANGLES)]
    if mode not in ("flip", "rot90"):
        raise ValueError(f"no views for augment {mode!r}")
    transforms: list[Callable[[np.ndarray], np.ndarray]] = [
        identity, lambda a: a[:, ::-1], lambda a: a[::-1, :]]
    if mode == "rot90":
        transforms += [partial(np.rot90, k=k) for k in (1, 2, 3)]
        transforms += [lambda a: np.swapaxes(a, 0, 1),  # the diagonals
                       lambda a: np.swapaxes(a[::-1, ::-1], 0, 1)]
    return transforms


def augment(image: np.ndarray, mode: str) -> list[np.ndarray]:
    """The image and its label-preserving copies (``view_transforms``)."""
    return [np.ascontiguousarray(t(image)) for t in view_transforms(mode)]


class Detector:
    """Fits and builds models. Thread-safe; caches backbones and feature extractors."""

    def __init__(self, models_dir: Path, options: RuntimeOptions | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.options = options or RuntimeOptions()
        self._backbones: dict[str, onnx.ModelProto] = {}
        # Least recently used last out: a plan holds its training images' constants (reference
        # side, light), so a long-running service would otherwise keep a session per fit.
        self._extractors: OrderedDict[tuple[str, ResizePlan, bool, bool], FeatureExtractor] = \
            OrderedDict()
        self._lock = threading.Lock()

    def backbone(self, name: str) -> onnx.ModelProto:
        with self._lock:
            if name not in self._backbones:
                self._backbones[name] = onnx.load(str(backbone_path(name, self.models_dir)))
            return self._backbones[name]

    def extractor(self, config: DetectorConfig, plan: ResizePlan) -> FeatureExtractor:
        spec = get_backbone(config.backbone)
        key = (spec.name, plan, unit_length(config), wants_foreground(config))
        backbone = self.backbone(spec.name)
        with self._lock:
            if key in self._extractors:
                self._extractors.move_to_end(key)
            else:
                self._extractors[key] = FeatureExtractor.for_config(
                    spec, backbone, plan, self.options, config)
                while len(self._extractors) > MAX_EXTRACTORS:
                    self._extractors.popitem(last=False)
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
        layout: Layout | None = None,
        quality_profile: DefectProfile = DEFAULT_PROFILE,
    ) -> FittedModel:
        """Fit a model from ``good_images`` (each ``(H, W, 3)`` uint8, sizes may differ).

        ``progress(fraction, stage)`` is called as work advances; it may raise (for example
        ``TrainingCancelledError``) to abort. ``defect_images`` only refine the threshold.
        ``layout``: regions of interest and ignore masks; ignored patches stay out of the
        memory bank, and the threshold is calibrated on what the layout judges.
        ``config.preset`` auto: ``_fit_auto``. ``quality_profile``: the quality report's
        synthetic defects (another profile only to compare profiles: bench.report_truth).
        """
        layout = layout or Layout()
        if len(good_images) == 0:
            raise InvalidInputError("need at least one good image to fit a model")
        if config.preset == AUTO:
            def candidate(preset_config: DetectorConfig,
                          share: ProgressCallback) -> FittedModel:
                return self.fit(good_images, preset_config, seed=seed,
                                defect_images=defect_images, progress=share,
                                metadata=metadata, layout=layout,
                                quality_profile=quality_profile)

            return self._fit_auto(config, candidate, progress)
        report = progress or (lambda fraction, stage: None)
        spec = get_backbone(config.backbone)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        report(0.0, "features")
        images = [check_image_array(image) for image in good_images]
        # One photo of a part with a direction shows one angle: auto cannot tell whether the
        # part lies at others (C19: screw from one image 0.45, turned 0.60), so the report says.
        angle_unknown = (config.augment == "auto" and len(images) == 1
                         and has_direction(images[0]))
        if config.augment == "auto":  # decided from the photos; the model records the choice
            config = replace(config, augment="turns" if placed_at_varying_angles(images)
                             else "none")
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
            extractor = FeatureExtractor.for_config(spec, backbone, plan, self.options, config)
            timings["quantize_s"] = time.perf_counter() - tq
            report(0.0, "features")
        # Per image, where its judged views lie in all_patches: the photo itself, then its
        # allowed-variation views (held out, they calibrate; the threshold views do nothing
        # else). Mirror views and JPEG copies only fill the bank.
        spans: list[list[tuple[int, int, tuple[int, int], np.ndarray | None]]] = []
        chunks: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        bankable: list[np.ndarray] = []  # per patch: may enter the bank
        foregrounds: list[np.ndarray | None] = []  # per view, with background auto
        photos: list[PatchFeatures] = []  # each image as it is, for the background decision
        start = 0
        # One image has no other bank to be held out from: fresh views stand in (held_out).
        threshold_views = config.threshold_views if len(images) > 1 else 0
        for i, image in enumerate(images):
            # (features, judged, cells kept out of the bank): a mirrored or turned copy's
            # ignored cells are the photo's, mirrored or turned alike; a variation view's are
            # its own frame's; a threshold view keeps every cell out.
            views: list[tuple[PatchFeatures, bool, np.ndarray]] = []
            photo_ignored: np.ndarray | None = None
            for j, transform in enumerate(view_transforms(config.augment)):
                feats = extractor(np.ascontiguousarray(transform(image)))
                if photo_ignored is None:
                    photo_ignored = layout.ignored_cells(feats.grid)
                ignored = np.ascontiguousarray(transform(photo_ignored))
                if ignored.shape != feats.grid:
                    ignored = layout.ignored_cells(feats.grid)
                views.append((feats, j == 0, ignored))
            # A JPEG copy has the photo's size, grid and ignored cells (views[0]: the photo).
            for copy in jpeg_copies(image, config.jpeg_views, seed=seed, stream=i + 1,
                                    light=config.jpeg_copy_light):
                views.append((extractor(copy), False, views[0][2]))
            # Bank views first, then the threshold's, so that a view is the same whichever of
            # the two counts grows.
            drawn = variation_views(image, config.variation_views + threshold_views,
                                    seed=seed, stream=i + 1)
            for n, view in enumerate(drawn):
                feats = extractor(view)
                kept_out = (layout.ignored_cells(feats.grid) if n < config.variation_views
                            else np.ones(feats.grid, dtype=bool))
                views.append((feats, True, kept_out))
            own = []
            for feats, judged, kept_out in views:
                if judged:
                    own.append((start, start + len(feats.patches), feats.grid, feats.foreground))
                start += len(feats.patches)
                chunks.append(feats.patches)
                owners.append(np.full(len(feats.patches), i, dtype=np.int32))
                bankable.append(~kept_out.ravel())
                foregrounds.append(feats.foreground)
            photos.append(views[0][0])
            spans.append(own)
            report(0.4 * (i + 1) / len(good_images), "features")
        # Background auto: left out of the bank and of every score when the photos show a part
        # on a background (separates_background); the model's graph then leaves it out too.
        mask_background = wants_foreground(config) and separates_background(photos)
        if mask_background:
            bankable = [b if f is None else b & (f > 0)
                        for b, f in zip(bankable, foregrounds, strict=True)]
        all_patches = np.concatenate(chunks)
        owner = np.concatenate(owners)
        candidates = np.flatnonzero(np.concatenate(bankable))
        if len(candidates) == 0:
            raise InvalidInputError("the ignore masks cover every patch of the training images")
        del chunks
        judged_views = [
            [PatchFeatures(all_patches[a:b], grid, fg) for a, b, grid, fg in own]
            for own in spans
        ]
        timings["features_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        size = bank_size(len(candidates), config)
        if len(candidates) > MAX_CORESET_CANDIDATES and size < len(candidates):
            # Greedy k-center costs O(N * size): beyond this many patches it runs on a seeded
            # random sample, which bounds training time for hundreds of images.
            rng = np.random.default_rng(seed)
            candidates = np.sort(rng.choice(candidates, MAX_CORESET_CANDIDATES, replace=False))
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
        # One image has no other to hold out: fresh variation views of it stand in.
        held_out = (
            [extractor(view) for view in variation_views(
                images[0], ONE_SHOT_HELD_OUT_VIEWS, seed=seed, stream=0)]
            if len(images) == 1 and (config.variation_views or config.threshold_views) else []
        )
        judge = Judge.of(config, spec, plan, layout, mask_background=mask_background)
        good_scores, n_parts, method = holdout_scores(
            judged_views, bank, bank_owner, seed, judge, held_out
        )
        defect_scores = np.array(
            [judge.score(extractor(check_image_array(img)), bank) for img in defect_images],
            dtype=np.float64,
        )
        calibration = calibrate(
            good_scores,
            config.target_false_reject_rate,
            method=method,
            n_parts=n_parts,
            defect_scores=defect_scores if len(defect_scores) else None,
        )
        timings["calibration_s"] = time.perf_counter() - t2

        tq = time.perf_counter()
        report(0.8, "quality")
        quality = quality_report(
            images, extractor=extractor, patch_scores=judge.patch_scores,
            image_score=judge.image_score, bank=bank, bank_owner=bank_owner,
            good_scores=good_scores, threshold=calibration.threshold, seed=seed,
            n_parts=n_parts, target_false_reject_rate=config.target_false_reject_rate,
            judged_cells=judge.judged_cells if judge.masks_cells else None,
            profile=quality_profile,
            compared_good=_without_threshold_views(good_scores, config, threshold_views),
        ).with_floor(config.min_expected_auroc)
        if angle_unknown:
            quality = quality.warned(ONE_ANGLE_WARNING)
        timings["quality_s"] = time.perf_counter() - tq

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
                    "light": plan.describe_light(),
                    "normalise": f"(x - {list(spec.mean)}) / {list(spec.std)}",
                    "distance": "euclidean between patch features scaled to unit length "
                    "(cosine)" if unit_length(config) else "euclidean between patch features",
                    "background": "cells off the image's own foreground (the side of the first "
                    "principal component of its patch features away from the border) are not "
                    "judged" if mask_background else "every cell judged",
                    "outputs": "score: float32 [1], " + _score_rule(judge)
                    + "; patch_scores: float32 [h, w], the judged patch distances on the "
                    "patch grid; anomaly_map: float32 [H, W], patch_scores smoothed and resized "
                    "to the image",
                    "decision": "anomalous when score > threshold" + (
                        f" and a defect region covers at least {config.min_defect_area_px} px"
                        if config.min_defect_area_px else ""),
                }
            ),
            METADATA_PREFIX + "regions": RegionRule(
                min_area_px=config.min_defect_area_px).to_json(),
            LAYOUT_METADATA: layout.to_json(),
            TRAINED_IGNORE_METADATA: json.dumps(layout.to_dict()["ignore"]),
            METADATA_PREFIX + "config": json.dumps(config.to_dict()),
            METADATA_PREFIX + "resize_plan": json.dumps(asdict(plan)),
            METADATA_PREFIX + "calibration": json.dumps(calibration.to_dict()),
            METADATA_PREFIX + "quality": json.dumps(quality.to_dict()),
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
            edge_band=judge.edge_band,
            edge_weight=judge.edge_weight,
            layout=layout,
            unit_length=unit_length(config),
            mask_background=mask_background,
        )
        onnx_bytes = model.SerializeToString()
        timings["export_s"] = time.perf_counter() - t3
        timings["total_s"] = time.perf_counter() - t0
        report(1.0, "done")
        return FittedModel(
            onnx_bytes=onnx_bytes,
            calibration=calibration,
            quality=quality,
            config=config,
            bank_size=len(bank),
            n_images=len(good_images),
            backbone=backbone,
            timings=timings,
        )

    def _fit_auto(
        self,
        config: DetectorConfig,
        fit_candidate: Callable[[DetectorConfig, ProgressCallback], FittedModel],
        progress: ProgressCallback | None,
    ) -> FittedModel:
        """The ``auto`` preset: every preset whose cost (``Preset.cost``, a measured constant)
        is within ``config.auto_latency_budget`` is fitted by ``fit_candidate`` (``fit`` on the
        same images), and the one whose quality report expects the highest image AUROC is kept
        (a tie: the cheaper); its report records every candidate's and why it was chosen.
        Costs the sum of its candidates."""
        report = progress or (lambda fraction, stage: None)
        budget = config.auto_latency_budget
        candidates = sorted((p for p in PRESETS.values() if p.cost <= budget),
                            key=lambda p: p.cost)
        fits: list[tuple[Preset, FittedModel]] = []
        t0 = time.perf_counter()
        for n, preset in enumerate(candidates):
            def share(fraction: float, stage: str, n: int = n, name: str = preset.name) -> None:
                report((n + fraction) / len(candidates), f"{name}: {stage}")

            fitted = fit_candidate(replace(config, preset=preset.name, **preset.settings), share)
            fits.append((preset, fitted))
        kept = auto_pick({p.name: f.quality.expected_image_auroc for p, f in fits})
        chosen, best = next((p, f) for p, f in fits if p.name == kept)
        choice = {
            "chosen": chosen.name,
            "rule": f"the highest expected image AUROC among the presets costing at most "
                    f"{budget:g}x fast's time per image (one without an estimate comes last); "
                    "a tie goes to the cheaper",
            "candidates": [{"preset": p.name, "cost": p.cost,
                            "expected_image_auroc": f.quality.expected_image_auroc,
                            "warnings": list(f.quality.warnings)} for p, f in fits],
        }
        quality = replace(best.quality, choice=choice)
        model = onnx.load_from_string(best.onnx_bytes)
        for prop in model.metadata_props:  # the file says what the API says
            if prop.key == METADATA_PREFIX + "quality":
                prop.value = json.dumps(quality.to_dict())
        timings = {**best.timings, "auto_s": time.perf_counter() - t0}
        return replace(best, onnx_bytes=model.SerializeToString(), quality=quality,
                       timings=timings)

    def patch_scores(
        self,
        image: np.ndarray,
        bank: np.ndarray,
        config: DetectorConfig,
        plan: ResizePlan,
        backbone: onnx.ModelProto | None = None,
        layout: Layout | None = None,
        mask_background: bool = False,
    ) -> PatchFeatures:
        """The engine's own scoring path: ``(h * w,)`` nearest distances on the patch grid,
        edge patches weighted and the layout applied as the model's graph does it (and the
        background left out when the model does: ``mask_background``).

        ``backbone``: the model's own (``FittedModel.backbone``) where it is not the shared
        float32 one (int8 models).
        """
        spec = get_backbone(config.backbone)
        extractor = (
            self.extractor(config, plan)
            if backbone is None
            else FeatureExtractor.for_config(spec, backbone, plan, self.options, config)
        )
        feats = extractor(check_image_array(image))
        judge = Judge.of(config, spec, plan, layout, mask_background=mask_background)
        return PatchFeatures(patches=judge.patch_scores(feats, bank), grid=feats.grid,
                             foreground=feats.foreground)


@dataclass(frozen=True)
class Judge:
    """How patch distances become an image score, as the scoring graph computes it: edge
    patches weighted (``memory.edge_weights``), the cells the layout does not judge set to 0,
    then the max or the top-fraction mean over the judged cells."""

    top_fraction: float = 0.0
    edge_band: int = 0
    edge_weight: float = 1.0
    layout: Layout = field(default_factory=Layout)
    mask_background: bool = False  # cells off the image's own foreground are not judged

    @classmethod
    def of(cls, config: DetectorConfig, spec: BackboneSpec, plan: ResizePlan,
           layout: Layout | None = None, *, mask_background: bool = False) -> Judge:
        """The judge of a model with ``config`` on ``spec`` under ``plan``."""
        return cls(config.score_top_fraction, edge_band(spec, plan, config.edge_reach),
                   config.edge_weight, layout or Layout(), mask_background)

    @property
    def weighs_edges(self) -> bool:
        return self.edge_band > 0 and self.edge_weight != 1.0

    @property
    def masks_cells(self) -> bool:
        """Whether some cells are not judged (a layout, or the background left out)."""
        return not self.layout.is_empty or self.mask_background

    def weights(self, feats: PatchFeatures) -> np.ndarray | None:
        """Per-patch factors (edges, layout, background); None where every patch counts."""
        grid = feats.grid
        factors = edge_weights(grid, self.edge_band, self.edge_weight) \
            if self.weighs_edges else None
        judged = self.judged_cells(feats)
        if judged is None:
            return factors
        return judged if factors is None else factors * judged

    def judged_cells(self, feats: PatchFeatures) -> np.ndarray | None:
        """``(h * w,)`` 1 where the layout and the foreground judge a cell; None: all."""
        cells = None if self.layout.is_empty else \
            self.layout.cell_masks(feats.grid)[1].ravel().astype(np.float32)
        if self.mask_background and feats.foreground is not None:
            cells = feats.foreground if cells is None else cells * feats.foreground
        return cells

    def judged(self, feats: PatchFeatures) -> int:
        """How many cells are judged (the top fraction's base)."""
        cells = self.judged_cells(feats)
        return feats.grid[0] * feats.grid[1] if cells is None else int(cells.sum())

    def patch_scores(self, feats: PatchFeatures, bank: np.ndarray) -> np.ndarray:
        """Weighted nearest distances ``(h * w,)`` of ``feats`` to ``bank``."""
        distances = nearest_distances(feats.patches, bank)
        weights = self.weights(feats)
        return distances if weights is None else distances * weights

    def score(self, feats: PatchFeatures, bank: np.ndarray) -> float:
        return self.image_score(self.patch_scores(feats, bank), feats)

    def image_score(self, patch_scores: np.ndarray, feats: PatchFeatures) -> float:
        """The image score of weighted patch scores of ``feats`` (max or top-fraction mean)."""
        return image_score(patch_scores, self.top_fraction, judged=self.judged(feats))

    def region_holdout(self, feats: PatchFeatures) -> float:
        return region_holdout_score(feats.patches, feats.grid, top_fraction=self.top_fraction,
                                    weights=self.weights(feats), judged=self.judged(feats))


def _score_rule(judge: Judge) -> str:
    """The image score's rule in words, for the model's metadata."""
    rule = ("max nearest-neighbour patch distance" if judge.top_fraction <= 0 else
            f"mean of the top {judge.top_fraction:g} of nearest-neighbour patch distances")
    if judge.weighs_edges:
        rule += (f", patches fewer than {judge.edge_band} cells from an edge weighted "
                 f"x{judge.edge_weight:g}")
    return rule


def edge_band(spec: BackboneSpec, plan: ResizePlan, reach: EdgeReach) -> int:
    """Cells of the patch grid next to each edge that the mirrored margin reaches: its own
    cells, and as far again as the patch neighbourhood averages it inward. Each layer is
    averaged at its own stride (``graph._aggregate``): ``finest`` counts the finest layer's
    neighbourhood (Lite0 and Lite2: 2 + 1), ``coarsest`` the coarsest layer's, in cells of the
    grid (2 + 1 x 16 / 8 = 4). None without a margin."""
    if plan.border <= 0:
        return 0
    stride = spec.patch_stride if reach == "finest" else max(layer.stride for layer in spec.layers)
    return (math.ceil(plan.border * spec.size_multiple / spec.patch_stride)
            + math.ceil(spec.neighbourhood // 2 * stride / spec.patch_stride))


def holdout_scores(
    views: list[list[PatchFeatures]],
    bank: np.ndarray,
    bank_owner: np.ndarray,
    seed: int,
    judge: Judge,
    held_out: Sequence[PatchFeatures] = (),
) -> tuple[np.ndarray, int, str]:
    """Scores of good views as if unseen, the number of parts they come from, and the method.

    ``views[i]``: image i's photo, then its allowed-variation views. Each image's views are
    scored against the bank minus every patch of that image (leave-one-out). Removing an
    image's members from the shared coreset approximates a coreset built without it
    (slightly sparser, so slightly pessimistic). With one image: region hold-out (each patch
    against the rest of the photo), and ``held_out`` views of it, scored against the bank,
    so that its own allowed variations are never rejected.
    """
    if len(views) == 1:
        scores = [judge.region_holdout(views[0][0])]
        scores += [judge.score(view, bank) for view in held_out]
        return np.asarray(scores), 1, "region-holdout+views" if held_out else "region-holdout"
    images = np.arange(len(views))
    if len(images) > MAX_CALIBRATION_IMAGES:
        rng = np.random.default_rng(seed + 1)
        images = np.sort(rng.choice(len(images), MAX_CALIBRATION_IMAGES, replace=False))
    scores = []
    for i in images:
        others = bank[bank_owner != i]
        for view in views[i]:
            # An image that owns the whole bank has nothing to be compared with: judge it
            # against the rest of itself, as with one shot.
            scores.append(judge.score(view, others) if len(others) else judge.region_holdout(view))
    return np.asarray(scores), len(images), "leave-one-out"


def _without_threshold_views(good_scores: np.ndarray, config: DetectorConfig,
                             threshold_views: int) -> np.ndarray:
    """The leave-one-out scores of ``holdout_scores`` less those of the threshold views (the
    last ``threshold_views`` of each image's 1 + variation_views + threshold_views): what the
    quality report compares with, so that the views move the threshold and nothing else."""
    if not threshold_views:
        return good_scores
    per_image = 1 + config.variation_views + threshold_views
    return good_scores.reshape(-1, per_image)[:, : per_image - threshold_views].ravel()


def resize_plan(config: DetectorConfig, images: Sequence[np.ndarray]) -> ResizePlan:
    """The resize plan of a model fitted on ``images`` (fixed scale: their median shorter side;
    light normalise: their mean level and contrast, a grey level at least; contrast: that
    contrast alone)."""
    spec = get_backbone(config.backbone)
    reference = float(np.median([min(image.shape[:2]) for image in images]))
    light_mean = light_std = None
    if config.light != "keep":
        levels = np.array([light_statistics(image) for image in images])
        light_std = max(1.0, float(levels[:, 1].mean()))
        if config.light == "normalise":
            light_mean = float(levels[:, 0].mean())
    return ResizePlan(
        policy=config.resize,
        resolution=config.resolution or spec.default_resolution,
        max_aspect=config.max_aspect,
        border=spec.border if config.border is None else config.border,
        reference_side=reference if config.resize == "fixed_scale" else None,
        light_mean=light_mean,
        light_std=light_std,
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
