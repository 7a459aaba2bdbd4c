"""``nominal evaluate --report DIR --perturb`` on a tiny generated folder: the JSON holds the
perturbation table, and the report is one self-contained page that renders in headless
Chromium with every picture loaded and nothing fetched from anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.cli import main
from app.detector.views import STANDARD_PERTURBATIONS
from app.evaluation.report import roc_curve
from tests.browser import visit
from tests.evaluation.test_evaluate import _dataset


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    dataset, out, report = _dataset(root / "parts"), root / "out.json", root / "report"
    code = main(["evaluate", str(dataset), "--shots", "1,2", "--seeds", "2", "--resolution",
                 "64", "--models-dir", str(models_dir), "--threads", "1", "--json", str(out),
                 "--report", str(report), "--worst", "2", "--perturb",
                 "--views-per-image", "2"])
    assert code == 0
    return {"json": json.loads(out.read_text()), "page": report / "index.html"}


def test_the_json_holds_the_perturbation_table(evaluated: dict[str, Any]) -> None:
    rows = evaluated["json"]["perturbations"]
    assert [r["name"] for r in rows] == [p.name for p in STANDARD_PERTURBATIONS]
    for row in rows:
        assert row["n_draws"] == 2  # the two seeds of the largest k
        assert row["n_good_views"] > 0 and row["n_defect_views"] > 0
        assert 0.0 <= row["false_reject_rate"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
    shift = next(r for r in rows if r["name"] == "shift_4pct")
    none = next(r for r in rows if r["name"] == "none")
    assert shift["n_good_views"] == 2 * none["n_good_views"]  # two views per image, random
    # Each draw's own rows too, whose mean is the table.
    draws = evaluated["json"]["perturbation_draws"]
    assert len(draws) == 2 and all(len(draw) == len(rows) for draw in draws)
    assert none["false_reject_rate"] == pytest.approx(
        sum(draw[0]["false_reject_rate"] for draw in draws) / 2)


def test_the_json_holds_each_views_score_and_the_calibration_to_replay(
    evaluated: dict[str, Any]
) -> None:
    """The evidence a threshold rule is replayed on (bench/calibration_rules.py): every view's
    score, whose rate above the draw's own threshold is the draw's row."""
    payload = evaluated["json"]
    for draw, evidence in zip(payload["perturbation_draws"], payload["perturbation_evidence"],
                              strict=True):
        assert evidence["k"] == 2 and evidence["calibration"]["good_scores"]
        assert [v["name"] for v in evidence["views"]] == [row["name"] for row in draw]
        for row, view in zip(draw, evidence["views"], strict=True):
            assert len(view["good_scores"]) == row["n_good_views"]
            assert len(view["defect_scores"]) == row["n_defect_views"]
            above = np.mean(np.asarray(view["good_scores"]) > evidence["threshold"])
            assert above == pytest.approx(row["false_reject_rate"], abs=1e-9)


def test_the_page_is_self_contained(evaluated: dict[str, Any]) -> None:
    page = evaluated["page"].read_text()
    assert "http://" not in page and "https://" not in page and "src=\"data:image/png" in page
    for heading in ("Summary", "Image AUROC per defect type", "k = 1", "k = 2",
                    "Allowed variations", "Worst false rejects: the highest-scoring good images",
                    "Worst missed defects: the lowest-scoring defects"):
        assert heading in page, heading


def test_the_page_renders_in_a_browser(evaluated: dict[str, Any]) -> None:
    def pictures(page: Any) -> list[int]:
        return page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")

    seen = visit(evaluated["page"].as_uri(), allowed=lambda url: url.startswith("file:"),
                 wait_for=("h2", "Allowed variations"), inspect=pictures)
    assert seen.outside == [] and seen.errors == []
    # 2 k x (ROC + histogram) + 2 worst of each kind; every one decoded.
    assert len(seen.result) == 8 and min(seen.result) > 0


def test_roc_curve_of_known_scores() -> None:
    fpr, tpr = roc_curve(np.array([0.9, 0.8, 0.8, 0.1]), np.array([True, False, True, False]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
