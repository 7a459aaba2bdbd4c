"""A verdict from a model's outputs: the one documented post-processing after the graph.

The graph computes every score (the image's, each region of interest's, each patch's); what
ONNX cannot do is group patches into defect regions (no connected-components operator). This
function does that and decides, from the outputs and the file's own metadata alone, so the
service and anyone holding the downloaded file reach the same verdict::

    import onnx, onnxruntime as ort
    from app.detector.verdict import OUTPUTS, read_verdict
    meta = {p.key: p.value for p in onnx.load("model.onnx").metadata_props}
    session = ort.InferenceSession("model.onnx")
    names = [o.name for o in session.get_outputs() if o.name in OUTPUTS]
    outputs = dict(zip(names, session.run(names, {"image": rgb_uint8_hwc})))
    verdict = read_verdict(meta, rgb_uint8_hwc.shape[:2], outputs)

Rules: a region of interest is anomalous when its score is above the threshold and, if it
(or the model) has a minimum defect area, one of its regions is at least that large; the
image is anomalous when one of its regions of interest is (without regions of interest: by
the same rule over the whole judged frame). Regions lie in the cells their region of interest
judges (a cell belongs where its centre lies, as in the graph). With ``score_top_fraction`` > 0
each region of interest's score is the top-fraction mean of its own cells against the
image's threshold (a small region is then closer to its maximum), and a good verdict may list
patches above the threshold as regions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from app.detector.calibration import normalize_score
from app.detector.layout import LAYOUT_METADATA, Layout
from app.detector.regions import DefectRegion, RegionRule

# The graph outputs a verdict reads (``anomaly_map`` only for pictures).
OUTPUTS = ("score", "patch_scores", "roi_scores")
_THRESHOLD = "nominal.threshold"
_REGIONS = "nominal.regions"


@dataclass(frozen=True)
class RegionOfInterestVerdict:
    name: str
    score: float
    normalized_score: float
    is_anomalous: bool


@dataclass(frozen=True)
class Verdict:
    """One inspected image: raw and normalised score against the model's threshold, where the
    anomalous patches are (highest score first, at most the number asked for), and one verdict
    per region of interest."""

    score: float
    normalized_score: float
    threshold: float
    is_anomalous: bool
    regions: tuple[DefectRegion, ...] = ()
    regions_of_interest: tuple[RegionOfInterestVerdict, ...] = ()
    anomaly_map: np.ndarray | None = None  # (H, W) float32 when requested


def region_dict(region: DefectRegion, threshold: float) -> dict[str, object]:
    """A defect region as the API answers and records store it."""
    return {"bbox": list(region.bbox), "area_px": region.area_px,
            "max_score": region.max_score,
            "normalized_max_score": normalize_score(region.max_score, threshold),
            "region_of_interest": region.region_of_interest}


def region_of_interest_dict(verdict: RegionOfInterestVerdict) -> dict[str, object]:
    """A region of interest's verdict as the API answers and records store it."""
    return {"name": verdict.name, "score": verdict.score,
            "normalized_score": verdict.normalized_score, "is_anomalous": verdict.is_anomalous}


@dataclass(frozen=True)
class VerdictRules:
    """What a model file's metadata says about turning its outputs into a verdict."""

    threshold: float
    regions: RegionRule
    layout: Layout

    @classmethod
    def of(cls, metadata: Mapping[str, str]) -> VerdictRules:
        return cls(threshold=float(metadata[_THRESHOLD]),
                   regions=RegionRule.from_json(metadata.get(_REGIONS)),
                   layout=Layout.from_json(metadata.get(LAYOUT_METADATA)))


def read_verdict(metadata: Mapping[str, str] | VerdictRules, image_size: tuple[int, int],
                 outputs: Mapping[str, np.ndarray | float], *, max_regions: int | None = None,
                 anomaly_map: np.ndarray | None = None) -> Verdict:
    """The verdict on an image of ``image_size`` (height, width) from the graph's ``outputs``
    (``score``, ``patch_scores`` and, in files with a layout, ``roi_scores``)."""
    rules = metadata if isinstance(metadata, VerdictRules) else VerdictRules.of(metadata)
    threshold, rule = rules.threshold, rules.regions
    score = float(np.asarray(outputs["score"]).reshape(-1)[0])
    if "patch_scores" not in outputs:  # a format-1 file as downloaded: the score alone
        return Verdict(score=score, normalized_score=normalize_score(score, threshold),
                       threshold=threshold, is_anomalous=score > threshold,
                       anomaly_map=anomaly_map)
    grid = np.asarray(outputs["patch_scores"])
    layout = rules.layout
    rois = layout.regions_of_interest
    if not rois:
        judged = None if layout.is_empty else layout.cell_masks(grid.shape)[1]
        regions = rule.regions(grid, threshold, image_size, cells=judged)
        anomalous = score > threshold and (rule.min_area_px <= 0 or bool(regions))
        roi_verdicts: tuple[RegionOfInterestVerdict, ...] = ()
    else:
        roi_scores = np.asarray(outputs["roi_scores"]).reshape(-1)
        per_roi, _ = layout.cell_masks(grid.shape)
        regions, verdicts = [], []
        for roi, roi_score, cells in zip(rois, roi_scores.tolist(), per_roi, strict=True):
            minimum = rule.min_area_px if roi.min_defect_area_px is None \
                else roi.min_defect_area_px
            own = rule.regions(grid, threshold, image_size, cells=cells,
                               min_area_px=minimum, region_of_interest=roi.name)
            regions += own
            verdicts.append(RegionOfInterestVerdict(
                name=roi.name, score=roi_score,
                normalized_score=normalize_score(roi_score, threshold),
                is_anomalous=roi_score > threshold and (minimum <= 0 or bool(own))))
        regions.sort(key=lambda r: r.max_score, reverse=True)
        roi_verdicts = tuple(verdicts)
        anomalous = any(v.is_anomalous for v in verdicts)
    return Verdict(
        score=score,
        normalized_score=normalize_score(score, threshold),
        threshold=threshold,
        is_anomalous=anomalous,
        regions=tuple(regions if max_regions is None else regions[:max_regions]),
        regions_of_interest=roi_verdicts,
        anomaly_map=anomaly_map,
    )
