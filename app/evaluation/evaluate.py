"""Few-shot evaluation on an MVTec-AD-layout folder (``nominal evaluate``).

For each k and seed: draw k images from ``train/good`` (seeded), fit, and score the whole
``test/`` split through the shipped single-file ONNX model, exactly as production would.
Reports image AUROC (overall and per defect type: that type's images against all of
``test/good``), pixel AUROC and the per-region overlap PRO (null without ``ground_truth/``),
the false-reject rate on ``test/good`` and the defect recall at the calibrated threshold, fit
seconds and ms/image. No parameter is tuned on test labels: the threshold comes from the
training draw alone.

Test images are streamed: each is decoded when it is scored, and its anomaly map and mask go
into fixed-size histograms (``metrics.PixelMetrics``) before the next one is read, so memory
does not grow with the number of test images.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import onnxruntime as ort

from app.detector.calibration import Calibration, stored_scores
from app.detector.config import SETTINGS, DetectorConfig
from app.detector.engine import Detector
from app.detector.heatmap import render_heatmap_png
from app.detector.runtime import CompiledModel, RuntimeOptions
from app.detector.views import (
    PerturbationResult,
    mean_over_draws,
    perturbation_report,
    training_view,
)
from app.errors import InvalidInputError
from app.evaluation.dataset import Dataset, TestImage, load_dataset, load_image, load_mask
from app.evaluation.metrics import (
    PRO_FPR_LIMIT,
    PixelMetrics,
    ScoreBins,
    auroc,
    recall_at_false_reject_rate,
)
from app.evaluation.regions import RegionTally
from app.evaluation.report import DrawScores, Example, ReportInput, write_report


def line_false_reject_rate(k: int) -> float:
    """The false-reject rate a line tolerates from a model of k good images: 10 % from one
    (nothing in one photo says how much parts differ), 5 % from more."""
    return 0.10 if k == 1 else 0.05


@dataclass
class DrawResult:
    k: int
    seed: int
    image_auroc: float
    pixel_auroc: float | None
    false_reject_rate: float
    defect_recall: float
    threshold: float
    fit_s: float
    ms_per_image: float
    bank_size: int
    pro: float | None = None
    # Each defect type's images against all test/good images.
    image_auroc_per_defect: dict[str, float] = field(default_factory=dict)
    # Defect regions (app/evaluation/regions.py), per candidate peak fraction: the share of
    # ground-truth defects a region finds (None without masks), and FRR / recall by minimum
    # defect area.
    ground_truth_defects: int = 0
    regions_found: dict[str, float | None] = field(default_factory=dict)
    min_area: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The model's quality report (from its training images), beside the real figures above.
    expected_image_auroc: float | None = None
    expected_pixel_auroc: float | None = None
    estimated_false_reject_rate: float | None = None
    # The recall a threshold set on the test split itself reaches at the false-reject rate a
    # line tolerates (line_false_reject_rate), and the calibrated threshold's recall as a
    # share of it: what calibrating without test labels costs.
    recall_at_line_frr: float | None = None
    recall_share: float | None = None


def _nan_to_none(value: float) -> float | None:
    return None if np.isnan(value) else value


@dataclass
class Draw:
    """One draw's figures, plus what the report shows of it (scores, worst cases)."""

    result: DrawResult
    scores: DrawScores
    examples: list[Example]
    calibration: Calibration

    def evidence(self) -> dict[str, Any]:
        """What a threshold rule needs to be replayed on this draw without refitting: the
        good scores it was calibrated from and every test image's score and label."""
        return {
            "k": self.result.k,
            "seed": self.result.seed,
            "threshold": self.calibration.threshold,
            "calibration": self.calibration.to_dict(),
            "test_scores": stored_scores(self.scores.scores),
            "test_is_defect": [bool(v) for v in self.scores.is_defect],
        }


def training_draw(dataset: Dataset, k: int, seed: int) -> list[np.ndarray]:
    """The seeded draw of k training images (decoded)."""
    rng = np.random.default_rng(seed)
    k_eff = min(k, len(dataset.train))
    chosen = sorted(rng.choice(len(dataset.train), k_eff, replace=False))
    return [load_image(dataset.train[i]) for i in chosen]


def evaluate_draw(
    detector: Detector,
    dataset: Dataset,
    config: DetectorConfig,
    k: int,
    seed: int,
    test_items: list[TestImage],
    *,
    worst: int = 0,
) -> Draw:
    """Fit on a seeded draw of k training images and score the test split, one image at a
    time (decoded here, not kept). ``worst`` > 0: render that many of the highest-scoring
    good images and of the lowest-scoring defects as heatmap thumbnails."""
    train = training_draw(dataset, k, seed)
    k_eff = len(train)
    t0 = time.perf_counter()
    fitted = detector.fit(train, config, seed=seed)
    fit_s = time.perf_counter() - t0
    del train
    model = CompiledModel(fitted.onnx_bytes, detector.options)

    want_maps = dataset.has_masks
    pixels = PixelMetrics(fitted.threshold) if want_maps else None
    tally = RegionTally(fitted.threshold)
    scores, times = [], []
    for item in test_items:
        image = load_image(item.path)
        t = time.perf_counter()
        out = model.outputs(image, with_map=pixels is not None)
        times.append(time.perf_counter() - t)
        scores.append(out.score)
        mask = None
        if pixels is not None:
            assert out.anomaly_map is not None
            mask = load_mask(item, out.anomaly_map.shape)
            pixels.add(out.anomaly_map, mask)
        tally.add(out.score, out.patch_scores, image.shape[:2], item.label != "good", mask)
        del image, out, mask
    s = np.asarray(scores)
    y = np.asarray([item.label != "good" for item in test_items])
    kinds = np.asarray([item.label for item in test_items])
    per_defect = {
        label: auroc(s[(kinds == label) | ~y], y[(kinds == label) | ~y])
        for label in sorted(set(kinds[y].tolist()))
    }
    flagged = s > fitted.threshold
    recall = float(flagged[y].mean()) if y.any() else float("nan")
    yardstick = _nan_to_none(recall_at_false_reject_rate(s, y, line_false_reject_rate(k_eff)))
    result = DrawResult(
        k=k_eff,
        seed=seed,
        image_auroc=auroc(s, y),
        pixel_auroc=None if pixels is None else _nan_to_none(pixels.auroc()),
        false_reject_rate=float(flagged[~y].mean()) if (~y).any() else float("nan"),
        defect_recall=recall,
        threshold=fitted.threshold,
        fit_s=fit_s,
        ms_per_image=1000.0 * statistics.median(times),
        bank_size=fitted.bank_size,
        pro=None if pixels is None else _nan_to_none(pixels.pro()),
        image_auroc_per_defect=per_defect,
        ground_truth_defects=tally.ground_truth,
        regions_found=tally.found_share() if pixels is not None else {},
        min_area=tally.min_area_rates(),
        expected_image_auroc=fitted.quality.expected_image_auroc,
        expected_pixel_auroc=fitted.quality.expected_pixel_auroc,
        estimated_false_reject_rate=fitted.quality.estimated_false_reject_rate,
        recall_at_line_frr=yardstick,
        recall_share=(recall / yardstick if yardstick else None),
    )
    examples = _worst_cases(model, test_items, s, y, worst) if worst else []
    return Draw(result, DrawScores(k_eff, seed, fitted.threshold, s, y), examples,
                fitted.calibration)


def _worst_cases(model: CompiledModel, items: list[TestImage], scores: np.ndarray,
                 is_defect: np.ndarray, count: int) -> list[Example]:
    """The good images closest to (or past) rejection and the defects furthest from it."""
    good = [int(i) for i in np.flatnonzero(~is_defect)[np.argsort(-scores[~is_defect])][:count]]
    missed = [int(i) for i in np.flatnonzero(is_defect)[np.argsort(scores[is_defect])][:count]]
    examples = []
    for kind, indices in (("good", good), ("defect", missed)):
        for i in indices:
            item = items[i]
            image = load_image(item.path)
            _, amap = model.run(image)
            verdict = "rejected" if scores[i] > model.threshold else "passed"
            examples.append(Example(
                kind=kind, png=render_heatmap_png(_thumbnail_of(image), _thumbnail_of(amap),
                                                  model.threshold),
                title=f"{item.label}/{item.path.name}: score {scores[i]:.3g}, threshold "
                      f"{model.threshold:.3g}, {verdict}"))
    return examples


def _thumbnail_of(array: np.ndarray, side: int = 256) -> np.ndarray:
    """Every n-th pixel, so the longer side is about ``side`` (thumbnails only)."""
    step = max(1, int(np.ceil(max(array.shape[:2]) / side)))
    return np.ascontiguousarray(array[::step, ::step])


@dataclass
class PerturbedDraw:
    """One draw of the allowed-variation benchmark: its rows and its model's calibration."""

    k: int
    seed: int
    calibration: Calibration
    rows: list[PerturbationResult]

    def evidence(self) -> dict[str, Any]:
        """What a threshold rule needs to be replayed on this draw's views without refitting
        (as ``Draw.evidence`` for the test split): the calibration and every view's score."""
        return {
            "k": self.k,
            "seed": self.seed,
            "threshold": self.calibration.threshold,
            "calibration": self.calibration.to_dict(),
            "views": [{"name": row.name,
                       "good_scores": stored_scores(row.good_scores),
                       "defect_scores": stored_scores(row.defect_scores)}
                      for row in self.rows],
        }


def perturbation_draw(detector: Detector, dataset: Dataset, config: DetectorConfig, k: int,
                      seed: int, test_items: list[TestImage], *,
                      views_per_image: int) -> PerturbedDraw:
    """Fit on the training views (central windows) of a seeded draw, then score good and
    defect test images under each allowed variation (``app.detector.views``)."""
    train = [training_view(image) for image in training_draw(dataset, k, seed)]
    fitted = detector.fit(train, config, seed=seed)
    model = CompiledModel(fitted.onnx_bytes, detector.options)
    del train
    # Decoded when reached, once per perturbation: memory holds one image and its views.
    good = _Decoded([t for t in test_items if t.label == "good"])
    defects = _Decoded([t for t in test_items if t.label != "good"])
    return PerturbedDraw(k, seed, fitted.calibration,
                         perturbation_report(model, good, defects,
                                             views_per_image=views_per_image, seed=seed))


class _Decoded(Sequence[np.ndarray]):
    """Test images as a sequence that decodes each one when it is read."""

    def __init__(self, items: list[TestImage]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | Sequence[np.ndarray]:
        if isinstance(index, slice):
            return _Decoded(self._items[index])
        return load_image(self._items[index].path)


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``["variation_views=4", "border=0"]`` -> detector settings, each value converted to its
    declared type; ``SystemExit`` naming the pair for an unknown name or a bad value."""
    declared = {s.name: s for s in SETTINGS}
    settings: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or name not in declared:
            known = ", ".join(sorted(declared))
            raise SystemExit(f"--set expects NAME=VALUE with NAME one of {known}; got {pair!r}")
        kind = declared[name]
        text = text.strip()
        if text.lower() in ("null", "none") and kind.nullable:
            settings[name] = None
            continue
        convert = kind.type if kind.type in (int, float) else str
        try:
            settings[name] = convert(text)
        except ValueError:
            raise SystemExit(f"--set {name}: {text!r} is not a valid {convert.__name__}") from None
    return settings


def _parse_shots(text: str, n_train: int) -> list[int]:
    shots = []
    for part in text.split(","):
        part = part.strip().lower()
        shots.append(n_train if part == "all" else int(part))
    if any(k < 1 for k in shots):
        raise SystemExit(f"--shots must be positive integers or 'all', got {text!r}")
    return shots


def _mean(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(real)) if real else None


SUMMARY_FIELDS = (
    "image_auroc",
    "pixel_auroc",
    "pro",
    "false_reject_rate",
    "defect_recall",
    "fit_s",
    "ms_per_image",
    "bank_size",
    "expected_image_auroc",
    "expected_pixel_auroc",
    "estimated_false_reject_rate",
    "recall_at_line_frr",
    "recall_share",
)


def summarise(results: list[DrawResult]) -> list[dict[str, Any]]:
    """Means over seeds per k (per defect type too)."""
    rows = []
    for k in sorted({r.k for r in results}):
        group = [r for r in results if r.k == k]
        labels = sorted({label for r in group for label in r.image_auroc_per_defect})
        rows.append(
            {
                "k": k,
                "draws": len(group),
                **{f: _mean([getattr(r, f) for r in group]) for f in SUMMARY_FIELDS},
                "image_auroc_per_defect": {
                    label: _mean([r.image_auroc_per_defect.get(label) for r in group])
                    for label in labels
                },
                "ground_truth_defects": _mean([r.ground_truth_defects for r in group]),
                "regions_found": {
                    c: _mean([r.regions_found.get(c) for r in group])
                    for c in sorted({c for r in group for c in r.regions_found})
                },
                "min_area": {
                    c: [
                        {
                            "min_area_px": row["min_area_px"],
                            **{m: _mean([r.min_area[c][i][m] for r in group if c in r.min_area])
                               for m in ("false_reject_rate", "recall")},
                        }
                        for i, row in enumerate(next(r.min_area[c] for r in group
                                                     if c in r.min_area))
                    ]
                    for c in sorted({c for r in group for c in r.min_area})
                },
            }
        )
    return rows


def _fmt(v: float | int | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a markdown table (rows from JSON files written before PRO existed show
    n/a there)."""
    lines = [
        "| k | draws | image AUROC | pixel AUROC | PRO (FPR 0.3) | FRR (test good) "
        "| defect recall | fit s | ms/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['draws']} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} | "
            f"{_fmt(r.get('pro'))} | {_fmt(r['false_reject_rate'])} | "
            f"{_fmt(r['defect_recall'])} | {_fmt(r['fit_s'], 2)} | "
            f"{_fmt(r['ms_per_image'], 1)} |"
        )
    return "\n".join(lines)


def format_quality(rows: list[dict[str, Any]]) -> str:
    """Expected against real, per k: what the quality report said before the test split."""
    lines = ["| k | expected image AUROC | real | expected pixel AUROC | real | estimated FRR "
             "| real |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['k']} | {_fmt(r.get('expected_image_auroc'))} | {_fmt(r['image_auroc'])} | "
            f"{_fmt(r.get('expected_pixel_auroc'))} | {_fmt(r['pixel_auroc'])} | "
            f"{_fmt(r.get('estimated_false_reject_rate'))} | {_fmt(r['false_reject_rate'])} |")
    return "\n".join(lines)


def format_recall_cost(rows: list[dict[str, Any]]) -> str:
    """Per k: the calibrated threshold's FRR and recall against the recall of a threshold set
    on the test split at the false-reject rate a line tolerates (empty for older rows)."""
    lines = ["| k | FRR (test good) | line FRR | recall | recall at line FRR, test threshold "
             "| share |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("recall_at_line_frr") is None:
            continue
        lines.append(
            f"| {r['k']} | {_fmt(r['false_reject_rate'])} | "
            f"{_fmt(line_false_reject_rate(r['k']), 2)} | {_fmt(r['defect_recall'])} | "
            f"{_fmt(r['recall_at_line_frr'])} | {_fmt(r.get('recall_share'), 2)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def format_per_defect(rows: list[dict[str, Any]]) -> str:
    """Image AUROC per defect type (against all test/good images), one line per k; empty for
    rows without it."""
    lines = []
    for r in rows:
        per_defect = r.get("image_auroc_per_defect") or {}
        if per_defect:
            parts = ", ".join(f"{label} {_fmt(v)}" for label, v in per_defect.items())
            lines.append(f"k={r['k']}: {parts}")
    if not lines:
        return ""
    return "Image AUROC per defect type (against all test/good):\n" + "\n".join(lines)


def format_regions(rows: list[dict[str, Any]]) -> str:
    """Per k: ground-truth defects found by a region (IoU >= 0.3) and FRR / recall by minimum
    defect area, for each candidate peak fraction; empty for rows without them."""
    lines = []
    for r in rows:
        found, by_area = r.get("regions_found") or {}, r.get("min_area") or {}
        if not by_area:
            continue
        sizes = [row["min_area_px"] for row in next(iter(by_area.values()))]
        lines += [f"k={r['k']}, {_fmt(r.get('ground_truth_defects'), 1)} ground-truth defects "
                  "per draw:", "",
                  "| peak fraction | found (IoU >= 0.3) | "
                  + " | ".join(f"FRR / recall, min {size} px" for size in sizes) + " |",
                  "|---|---|" + "---|" * len(sizes)]
        for c, table in by_area.items():
            cells = " | ".join(f"{_fmt(t['false_reject_rate'])} / {_fmt(t['recall'])}"
                               for t in table)
            lines.append(f"| {c} | {_fmt(found.get(c))} | {cells} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def format_perturbations(rows: list[dict[str, Any]]) -> str:
    """The perturbation summary as a markdown table."""
    lines = ["| perturbation | good views | defect views | FRR | recall | image AUROC |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['n_good_views']} | {r['n_defect_views']} | "
                     f"{_fmt(r['false_reject_rate'])} | {_fmt(r['recall'])} | "
                     f"{_fmt(r['auroc'])} |")
    return "\n".join(lines)


def run_evaluation_command(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset)
    options = {
        "preset": args.preset,
        "backbone": args.backbone or None,
        "resolution": args.resolution,
        "resize": args.resize,
        "augment": args.augment,
        "precision": args.precision,
        "coreset_ratio": args.coreset_ratio,
        "target_false_reject_rate": args.target_frr,
    }
    # Options not given take the preset's values, or the detector's defaults.
    chosen = {k: v for k, v in options.items() if v is not None}
    chosen.update(parse_settings(args.settings))
    try:
        config = DetectorConfig.from_dict(chosen)
    except InvalidInputError as exc:
        raise SystemExit(f"nominal evaluate: {exc}") from None
    detector = Detector(Path(args.models_dir), RuntimeOptions(threads=args.threads))
    test_items = dataset.test[: args.max_test] if args.max_test else dataset.test
    shots = _parse_shots(args.shots, len(dataset.train))

    results: list[DrawResult] = []
    draws: list[Draw] = []
    perturbed: list[PerturbedDraw] = []
    worst = args.worst if args.report else 0
    for k in shots:
        # Every image is the same draw whatever the seed: one draw is enough.
        seeds = [0] if k >= len(dataset.train) else list(range(args.seeds))
        for seed in seeds:
            # The worst cases of the first draw at the largest k go into the report.
            first_of_last = k == shots[-1] and seed == seeds[0]
            draw = evaluate_draw(detector, dataset, config, k, seed, test_items,
                                 worst=worst if first_of_last else 0)
            draws.append(draw)
            result = draw.result
            results.append(result)
            pixel = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.4f}"
            pro = "n/a" if result.pro is None else f"{result.pro:.4f}"
            print(
                f"k={result.k} seed={seed} image_auroc={result.image_auroc:.4f} "
                f"pixel_auroc={pixel} pro={pro} "
                f"frr={result.false_reject_rate:.3f} recall={result.defect_recall:.3f} "
                f"fit={result.fit_s:.2f}s {result.ms_per_image:.1f}ms/img",
                flush=True,
            )
            if args.perturb and k == shots[-1]:
                perturbed.append(perturbation_draw(
                    detector, dataset, config, k, seed, test_items,
                    views_per_image=args.views_per_image))
    perturbations = [draw.rows for draw in perturbed]
    rows = summarise(results)
    print(
        f"\n{dataset.root.name}: {config.backbone}, resolution {config.resolution or 'default'}, "
        f"resize {config.resize}, augment {config.augment}, precision {config.precision}, "
        f"{len(test_items)} test images; "
        "means over seeds\n"
    )
    print(format_table(rows))
    print("\nThe models' quality reports (from their training images) against the test split:"
          "\n\n" + format_quality(rows))
    recall_cost = format_recall_cost(rows)
    if recall_cost:
        print("\nWhat calibrating without test labels costs (recall as a share of a threshold "
              "set on the test split at the FRR a line tolerates; mean of the draws' shares):"
              "\n\n" + recall_cost)
    per_defect = format_per_defect(rows)
    if per_defect:
        print("\n" + per_defect)
    regions = format_regions(rows)
    if regions:
        print("\nDefect regions by peak fraction of the region rule:\n\n" + regions)
    perturbation_rows = ([p.to_dict() for p in mean_over_draws(perturbations)]
                         if perturbations else [])
    if perturbation_rows:
        print(f"\nAllowed variations at k={shots[-1]} ({len(perturbations)} draws, "
              f"{args.views_per_image} views per image where random; fitted on central "
              "windows):\n")
        print(format_perturbations(perturbation_rows))
    if args.report:
        path = write_report(args.report, ReportInput(
            dataset=str(dataset.root), config=config.to_dict(), summary=rows,
            draws=[d.scores for d in draws], examples=[e for d in draws for e in d.examples],
            perturbations=perturbation_rows or None))
        print(f"\nreport: {path}")
    if args.json:
        bins = ScoreBins(1.0)
        payload = {
            "dataset": str(dataset.root),
            "config": config.to_dict(),
            "test_images": len(test_items),
            "results": [asdict(r) for r in results],
            "summary": rows,
            "perturbations": perturbation_rows or None,
            # Each draw's own rows (seed order), so one draw can be compared with another run's.
            "perturbation_draws": [[row.to_dict() for row in draw] for draw in perturbations]
            or None,
            # Per draw, the evidence to replay a threshold rule on the views (the same script).
            "perturbation_evidence": [draw.evidence() for draw in perturbed] or None,
            # Per draw, in run order: the evidence to replay a threshold rule on
            # (bench/calibration_rules.py).
            "draw_evidence": [draw.evidence() for draw in draws],
            "pixel_metrics": {
                "method": "histograms over fixed log-spaced bins around each draw's threshold",
                "bins": bins.count,
                "bins_per_decade": bins.bins_per_decade,
                "range_over_threshold": [bins.low, bins.high],
                "pro_fpr_limit": PRO_FPR_LIMIT,
                "pro_connectivity": 8,
            },
            "machine": {
                "python": platform.python_version(),
                "onnxruntime": ort.__version__,
                "processor": platform.processor() or platform.machine(),
                "threads": args.threads,
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return 0
