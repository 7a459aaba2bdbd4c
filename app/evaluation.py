"""Few-shot evaluation on an MVTec-AD-layout folder (``nominal evaluate``).

For each k and seed: draw k images from ``train/good`` (seeded), fit, and score the whole
``test/`` split through the shipped single-file ONNX model, exactly as production would.
Reports image AUROC, pixel AUROC (null without ``ground_truth/``), the false-reject rate on
``test/good`` and the defect recall at the calibrated threshold, fit seconds and ms/image.
No parameter is tuned on test labels: the threshold comes from the training draw alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from app.detector.config import DetectorConfig
from app.detector.engine import Detector
from app.detector.imaging import decode_image
from app.detector.runtime import CompiledModel, RuntimeOptions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class TestImage:
    path: Path
    label: str  # "good" or the defect type
    mask: Path | None


@dataclass(frozen=True)
class Dataset:
    root: Path
    train: list[Path]
    test: list[TestImage]
    has_masks: bool


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


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_dataset(root: Path) -> Dataset:
    """Index ``root``; masks are optional (image-level labels only -> pixel metrics null)."""
    train_dir, test_dir = root / "train" / "good", root / "test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise SystemExit(f"{root} is not in MVTec AD layout (train/good and test/ needed)")
    test: list[TestImage] = []
    for label_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        for path in _images(label_dir):
            mask = root / "ground_truth" / label_dir.name / f"{path.stem}_mask.png"
            test.append(TestImage(path, label_dir.name, mask if mask.exists() else None))
    has_masks = any(t.mask is not None for t in test if t.label != "good")
    return Dataset(root=root, train=_images(train_dir), test=test, has_masks=has_masks)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _load(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes()).pixels


def _mask(item: TestImage, shape: tuple[int, int]) -> np.ndarray:
    if item.mask is None:
        return np.zeros(shape, dtype=bool)
    with Image.open(item.mask) as mask:
        return np.asarray(mask.convert("L")) > 127


def evaluate_draw(
    detector: Detector,
    dataset: Dataset,
    config: DetectorConfig,
    k: int,
    seed: int,
    test_images: list[tuple[TestImage, np.ndarray]],
) -> DrawResult:
    """Fit on a seeded draw of k training images and score the test split."""
    rng = np.random.default_rng(seed)
    k_eff = min(k, len(dataset.train))
    chosen = sorted(rng.choice(len(dataset.train), k_eff, replace=False))
    train = [_load(dataset.train[i]) for i in chosen]
    t0 = time.perf_counter()
    fitted = detector.fit(train, config, seed=seed)
    fit_s = time.perf_counter() - t0
    model = CompiledModel(fitted.onnx_bytes, detector.options)

    want_maps = dataset.has_masks
    scores, labels, times = [], [], []
    pixel_scores: list[np.ndarray] = []
    pixel_labels: list[np.ndarray] = []
    for item, image in test_images:
        t = time.perf_counter()
        if want_maps:
            score, amap = model.run(image)
        else:
            score = model.score(image)
        times.append(time.perf_counter() - t)
        scores.append(score)
        labels.append(item.label != "good")
        if want_maps:
            pixel_scores.append(amap.ravel())
            pixel_labels.append(_mask(item, amap.shape).ravel())
    s, y = np.asarray(scores), np.asarray(labels)
    pixel = None
    if want_maps:
        pixel = auroc(np.concatenate(pixel_scores), np.concatenate(pixel_labels))
    flagged = s > fitted.threshold
    return DrawResult(
        k=k_eff,
        seed=seed,
        image_auroc=auroc(s, y),
        pixel_auroc=pixel,
        false_reject_rate=float(flagged[~y].mean()) if (~y).any() else float("nan"),
        defect_recall=float(flagged[y].mean()) if y.any() else float("nan"),
        threshold=fitted.threshold,
        fit_s=fit_s,
        ms_per_image=1000.0 * statistics.median(times),
        bank_size=fitted.bank_size,
    )


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


def summarise(results: list[DrawResult]) -> list[dict[str, float | int | None]]:
    """Means over seeds per k."""
    rows = []
    for k in sorted({r.k for r in results}):
        group = [r for r in results if r.k == k]
        rows.append(
            {
                "k": k,
                "draws": len(group),
                **{
                    f: _mean([getattr(r, f) for r in group])
                    for f in (
                        "image_auroc",
                        "pixel_auroc",
                        "false_reject_rate",
                        "defect_recall",
                        "fit_s",
                        "ms_per_image",
                        "bank_size",
                    )
                },
            }
        )
    return rows


def format_table(rows: list[dict[str, float | int | None]]) -> str:
    def fmt(v: float | int | None, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = [
        "| k | draws | image AUROC | pixel AUROC | FRR (test good) | defect recall | fit s "
        "| ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['draws']} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | "
            f"{fmt(r['false_reject_rate'])} | {fmt(r['defect_recall'])} | {fmt(r['fit_s'], 2)} | "
            f"{fmt(r['ms_per_image'], 1)} |"
        )
    return "\n".join(lines)


def run_evaluation_command(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset)
    options = {
        "backbone": args.backbone or None,
        "resolution": args.resolution,
        "resize": args.resize,
        "augment": args.augment,
        "precision": args.precision,
        "coreset_ratio": args.coreset_ratio,
        "target_false_reject_rate": args.target_frr,
    }
    # Options not given take the detector's defaults.
    config = DetectorConfig.from_dict({k: v for k, v in options.items() if v is not None})
    detector = Detector(Path(args.models_dir), RuntimeOptions(threads=args.threads))
    test_items = dataset.test[: args.max_test] if args.max_test else dataset.test
    test_images = [(item, _load(item.path)) for item in test_items]
    shots = _parse_shots(args.shots, len(dataset.train))

    results: list[DrawResult] = []
    for k in shots:
        # Every image is the same draw whatever the seed: one draw is enough.
        seeds = [0] if k >= len(dataset.train) else list(range(args.seeds))
        for seed in seeds:
            result = evaluate_draw(detector, dataset, config, k, seed, test_images)
            results.append(result)
            pixel = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.4f}"
            print(
                f"k={result.k} seed={seed} image_auroc={result.image_auroc:.4f} "
                f"pixel_auroc={pixel} "
                f"frr={result.false_reject_rate:.3f} recall={result.defect_recall:.3f} "
                f"fit={result.fit_s:.2f}s {result.ms_per_image:.1f}ms/img",
                flush=True,
            )
    rows = summarise(results)
    print(
        f"\n{dataset.root.name}: {config.backbone}, resolution {config.resolution or 'default'}, "
        f"resize {config.resize}, augment {config.augment}, precision {config.precision}, "
        f"{len(test_images)} test images; "
        "means over seeds\n"
    )
    print(format_table(rows))
    if args.json:
        payload = {
            "dataset": str(dataset.root),
            "config": config.to_dict(),
            "test_images": len(test_images),
            "results": [asdict(r) for r in results],
            "summary": rows,
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
