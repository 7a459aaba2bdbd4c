"""The baseline of BENCHMARKS.md as two markdown tables, from bench/baseline.sh's JSON files:
every configuration x data set x k, and the allowed-variation tables where they were run.

    python -m bench.baseline_table bench/results/baseline/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from app.detector.backbones import get_backbone
from app.evaluation.evaluate import format_perturbations


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_row(label: str, payload: dict[str, Any], row: dict[str, Any]) -> str:
    """One summary row (one k) of an evaluation JSON as a markdown row, under ``label``."""
    return (f"| {label} | {Path(payload['dataset']).name} | {row['k']} "
            f"| {fmt(row['image_auroc'])} | {fmt(row['pixel_auroc'])} "
            f"| {fmt(row.get('pro'))} | {fmt(row['false_reject_rate'])} "
            f"| {fmt(row['defect_recall'])} | {fmt(row['ms_per_image'], 1)} |")


def _configuration(payload: dict[str, Any]) -> str:
    config = payload["config"]
    parts = [config["backbone"]]
    if config.get("resolution"):
        parts.append(str(config["resolution"]))
    if config.get("resize") != "fixed_scale":
        parts.append(config["resize"])
    if config.get("variation_views"):
        parts.append(f"views {config['variation_views']}")
    border = config.get("border")
    if border is None:
        border = get_backbone(config["backbone"]).border
    if border > 0 and config.get("edge_weight", 1.0) != 1.0:  # no margin: no edge band
        parts.append(f"edge x{config['edge_weight']:g}")
    return " ".join(parts)


def main(paths: list[str]) -> int:
    payloads = [json.loads(Path(p).read_text()) for p in sorted(paths)]
    print("| configuration | data | k | image AUROC | pixel AUROC | PRO | FRR | recall "
          "| ms/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for payload in payloads:
        for row in payload["summary"]:
            print(summary_row(_configuration(payload), payload, row))
    for payload in payloads:
        if payload.get("perturbations"):
            print(f"\n**{_configuration(payload)}, {Path(payload['dataset']).name}, "
                  f"k = {payload['summary'][-1]['k']}** (means over "
                  f"{payload['perturbations'][0]['n_draws']} draws)\n")
            print(format_perturbations(payload["perturbations"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
