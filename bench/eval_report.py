"""Markdown tables from ``nominal evaluate --json`` files, for BENCHMARKS.md.

    python -m bench.eval_report bench/results/eval_*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app.evaluation import format_per_defect, format_table
from app.evaluation.evaluate import format_perturbations


def describe(payload: dict) -> str:
    config = payload["config"]
    return (f"**{Path(payload['dataset']).name}**: backbone `{config['backbone']}`, resize "
            f"`{config['resize']}`, resolution {config['resolution'] or 'default'}, augment "
            f"`{config['augment']}`, precision `{config.get('precision', 'float32')}`, "
            f"{payload['test_images']} test images")


def main(paths: list[str]) -> int:
    for path in paths:
        payload = json.loads(Path(path).read_text())
        print(f"{describe(payload)} (`{Path(path).name}`)\n")
        print(format_table(payload["summary"]))
        per_defect = format_per_defect(payload["summary"])  # empty for older files
        if per_defect:
            print("\n" + per_defect)
        if payload.get("perturbations"):  # written with --perturb
            print(f"\nAllowed variations at k = {payload['summary'][-1]['k']}:\n")
            print(format_perturbations(payload["perturbations"]))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
