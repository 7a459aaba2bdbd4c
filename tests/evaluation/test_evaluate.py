"""``nominal evaluate`` end to end on a tiny generated MVTec-AD-layout folder (64 x 64 images,
masks for the defects): the JSON has the pixel AUROC, PRO and the image AUROC per defect type,
with sane values, and the pixel metrics are null without masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from app.detector.calibration import threshold_from_good
from tests.conftest import textured_part

SIZE = 64


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _dataset(root: Path) -> Path:
    for i in range(3):
        _save(root / "train" / "good" / f"{i:03d}.png", textured_part(i, SIZE, SIZE))
    for i in range(3):
        _save(root / "test" / "good" / f"{i:03d}.png", textured_part(100 + i, SIZE, SIZE))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    defects = {
        "blob": [((yy - 30) ** 2 + (xx - 30) ** 2 <= 49), ((yy - 15) ** 2 + (xx - 45) ** 2 <= 25)],
        # Two regions in one image: a square and a bar.
        "stain": [((yy > 8) & (yy < 16) & (xx > 8) & (xx < 16))
                  | ((yy > 40) & (yy < 44) & (xx > 10) & (xx < 50))],
    }
    for label, masks in defects.items():
        for i, mask in enumerate(masks):
            image = textured_part(200 + i, SIZE, SIZE)
            image[mask] = (20, 20, 20) if label == "blob" else (240, 200, 40)
            _save(root / "test" / label / f"{i:03d}.png", image)
            _save(root / "ground_truth" / label / f"{i:03d}_mask.png",
                  (mask * 255).astype(np.uint8))
    return root


def _evaluate(dataset: Path, out: Path, models_dir: Path) -> dict[str, Any]:
    code = main(["evaluate", str(dataset), "--shots", "2", "--seeds", "2", "--resolution", "64",
                 "--models-dir", str(models_dir), "--threads", "1", "--json", str(out)])
    assert code == 0
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_evaluate_reports_pixel_auroc_pro_and_per_defect_auroc(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _evaluate(_dataset(tmp_path / "parts"), tmp_path / "out.json", models_dir)
    printed = capsys.readouterr().out
    assert "| PRO (FPR 0.3) |" in printed and "Image AUROC per defect type" in printed
    assert data["test_images"] == 6
    assert len(data["results"]) == 2
    for result in data["results"]:
        # The existing fields keep their names.
        for key in ("k", "seed", "image_auroc", "pixel_auroc", "false_reject_rate",
                    "defect_recall", "threshold", "fit_s", "ms_per_image", "bank_size"):
            assert key in result, key
        assert 0.5 < result["pixel_auroc"] <= 1.0  # dark and bright blobs on a texture
        assert 0.0 < result["pro"] <= 1.0
        assert set(result["image_auroc_per_defect"]) == {"blob", "stain"}
        assert all(0.0 <= v <= 1.0 for v in result["image_auroc_per_defect"].values())
    (row,) = data["summary"]
    assert row["k"] == 2 and row["draws"] == 2
    assert row["pro"] == pytest.approx(np.mean([r["pro"] for r in data["results"]]))
    assert row["image_auroc_per_defect"]["stain"] == pytest.approx(
        np.mean([r["image_auroc_per_defect"]["stain"] for r in data["results"]]))
    assert data["pixel_metrics"]["pro_fpr_limit"] == 0.3
    # Defect regions: each candidate rule, found share and the minimum-area table.
    assert "Defect regions by peak fraction" in printed
    for result in data["results"]:
        assert result["ground_truth_defects"] >= 4  # at least one blob per defect image
        assert set(result["regions_found"]) == {"0", "0.5", "0.75"}
        assert all(0.0 <= v <= 1.0 for v in result["regions_found"].values())
        table = result["min_area"]["0"]
        assert [t["min_area_px"] for t in table] == [0, 64, 256, 1024, 4096]
        assert table[0]["recall"] == pytest.approx(result["defect_recall"])
        assert table[0]["false_reject_rate"] == pytest.approx(result["false_reject_rate"])
        recalls = [t["recall"] for t in table]
        assert recalls == sorted(recalls, reverse=True)  # a larger minimum never flags more
    assert row["regions_found"]["0"] == pytest.approx(
        np.mean([r["regions_found"]["0"] for r in data["results"]]))
    # Each draw's quality report, beside the real figures.
    assert "quality reports (from their training images) against the test split" in printed
    for result in data["results"]:
        assert 0.0 <= result["expected_image_auroc"] <= 1.0
        assert 0.0 <= result["estimated_false_reject_rate"] <= 1.0
    assert row["expected_image_auroc"] == pytest.approx(
        np.mean([r["expected_image_auroc"] for r in data["results"]]))


def test_each_draws_evidence_replays_its_threshold_and_figures(
    tmp_path: Path, models_dir: Path
) -> None:
    """The stored good scores give back the draw's threshold through the calibration rule,
    and the stored test scores its false-reject rate and recall: a rule can be replayed."""
    data = _evaluate(_dataset(tmp_path / "parts"), tmp_path / "out.json", models_dir)
    assert len(data["draw_evidence"]) == len(data["results"])
    for evidence, result in zip(data["draw_evidence"], data["results"], strict=True):
        assert (evidence["k"], evidence["seed"]) == (result["k"], result["seed"])
        calibration = evidence["calibration"]
        replayed = threshold_from_good(np.asarray(calibration["good_scores"]),
                                       calibration["target_false_reject_rate"],
                                       calibration["n_parts"])
        assert replayed == pytest.approx(evidence["threshold"], rel=1e-5)
        assert evidence["threshold"] == pytest.approx(result["threshold"])
        scores = np.asarray(evidence["test_scores"])
        defect = np.asarray(evidence["test_is_defect"])
        assert len(scores) == data["test_images"] and defect.any() and not defect.all()
        flagged = scores > evidence["threshold"]
        assert flagged[~defect].mean() == pytest.approx(result["false_reject_rate"])
        assert flagged[defect].mean() == pytest.approx(result["defect_recall"])


def test_without_masks_the_pixel_metrics_are_null(tmp_path: Path, models_dir: Path) -> None:
    dataset = _dataset(tmp_path / "parts")
    shutil.rmtree(dataset / "ground_truth")
    data = _evaluate(dataset, tmp_path / "out.json", models_dir)
    for result in data["results"]:
        assert result["pixel_auroc"] is None and result["pro"] is None
        assert set(result["image_auroc_per_defect"]) == {"blob", "stain"}
    assert data["summary"][0]["pro"] is None


def test_any_detector_setting_can_be_set(tmp_path: Path, models_dir: Path) -> None:
    dataset = _dataset(tmp_path / "parts")
    out = tmp_path / "set.json"
    code = main(["evaluate", str(dataset), "--shots", "2", "--seeds", "1", "--resolution", "64",
                 "--set", "variation_views=1", "--set", "edge_weight=0.5", "--set",
                 "border=null", "--models-dir", str(models_dir), "--threads", "1",
                 "--json", str(out)])
    assert code == 0
    config = json.loads(out.read_text())["config"]
    assert (config["variation_views"], config["edge_weight"], config["border"]) == (1, 0.5, None)


@pytest.mark.parametrize(("pair", "message"), [
    ("views=2", "NAME one of"),
    ("variation_views", "NAME one of"),
    ("variation_views=two", "not a valid int"),
    ("edge_weight=2", "edge_weight must be within 0..1"),
])
def test_bad_settings_are_refused_naming_them(tmp_path: Path, models_dir: Path, pair: str,
                                              message: str) -> None:
    dataset = _dataset(tmp_path / "parts")
    with pytest.raises(SystemExit, match=message):
        main(["evaluate", str(dataset), "--set", pair, "--models-dir", str(models_dir)])
