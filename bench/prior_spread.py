"""How far the scores of *new* good parts lie from a model's leave-one-out scores, measured on
training images only (no test split): for each data set, k and draw, fit on k images of
``train/good`` and score up to 60 other ``train/good`` images the model never saw.

Reports per set and k: the relative spread of the new parts' scores (standard deviation of
their logs) and how far their median lies above the leave-one-out median (log ratio), and the
share of new parts above the calibrated threshold. These are what the calibration's prior
(``PRIOR_LOG_SPREAD`` in app/detector/calibration.py) stands for. At k = 1 it also says
whether the image's own allowed-variation views (``variations``, ``VIEWS`` of them scored by
the model) tell where new parts lie: the log ratio of the new parts' 90th percentile to the
highest view score, and to the held-out (region hold-out) score.

    python -m bench.prior_spread ../shared/datasets/{mvtec_bottle_512,...} [--set NAME=VALUE]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from app.detector.config import DetectorConfig
from app.detector.engine import Detector
from app.detector.runtime import CompiledModel, RuntimeOptions
from app.detector.variations import variation_views
from app.evaluation.dataset import load_dataset, load_image
from app.evaluation.evaluate import parse_settings

SHOTS = "2,4,8,16"
DRAWS = 3
NEW_PARTS = 60
VIEWS = 8


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--shots", default=SHOTS, help="comma-separated k values")
    parser.add_argument("--set", dest="settings", action="append", default=[])
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args(argv)
    config = DetectorConfig.from_dict(parse_settings(args.settings))
    detector = Detector(Path(args.models_dir), RuntimeOptions(threads=1))
    print("| data | k | spread of new parts (log sd) | median new / median LOO (log) "
          "| new parts above threshold | k = 1: p90 new / held-out (log) "
          "| k = 1: p90 new / highest view (log) |")
    print("|---|---|---|---|---|---|---|")
    for root in args.datasets:
        dataset = load_dataset(root)
        for k in (int(part) for part in args.shots.split(",")):
            spreads, offsets, above = [], [], []
            over_held, over_views = [], []
            for draw in range(DRAWS):
                rng = np.random.default_rng([draw, k])
                order = rng.permutation(len(dataset.train))
                train = [load_image(dataset.train[i]) for i in order[:k]]
                fitted = detector.fit(train, config, seed=draw)
                model = CompiledModel(fitted.onnx_bytes, detector.options)
                new = np.array([model.score(load_image(dataset.train[i]))
                                for i in order[k:k + NEW_PARTS]])
                loo = np.asarray(fitted.calibration.good_scores)  # k = 1: region hold-out
                spreads.append(float(np.std(np.log(new), ddof=1)))
                offsets.append(float(np.log(np.median(new) / np.median(loo))))
                above.append(float(np.mean(new > fitted.threshold)))
                if k == 1:
                    p90 = float(np.quantile(new, 0.9))
                    views = [model.score(view) for view in
                             variation_views(train[0], VIEWS, seed=draw, stream=0)]
                    over_held.append(math.log(p90 / float(loo[0])))
                    over_views.append(math.log(p90 / max(views)))
            one = (f"{np.mean(over_held):+.3f} | {np.mean(over_views):+.3f}" if k == 1
                   else "- | -")
            print(f"| {root.name} | {k} | {np.mean(spreads):.3f} | {np.mean(offsets):+.3f} "
                  f"| {np.mean(above):.3f} | {one} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
