"""An ignore mask over a printed lot number: false rejects with and without it.

    python -m bench.ignore_text                   # bottle, k = 16, 3 draws
    python -m bench.ignore_text --quick           # smoke test

Bottle's good test images get a random lot number (text, seeded per image) printed into one
fixed area, as a label that changes from part to part would. Per draw of k training images
(seeded, the clean photos): the default model, the same model given an ignore mask over that
area and a margin around it (``MASK``; ``graph.with_layout``: a new version, same bank and
threshold) and a model trained with the mask (its bank without the masked patches).
Reported, at each model's calibrated threshold: the false-reject rate of the good images
without text and with it, and the defect recall on the defect images with the same text, so
a mask that hid defects would show.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path
from typing import Any

import numpy as np

from bench import common

# Where the lot number goes, in relative coordinates: the bottom-left corner of the photo.
TEXT_AREA = {"x": 0.04, "y": 0.86, "width": 0.6, "height": 0.11}
# The ignore mask: the text area and a margin of 0.08 of the frame (2.5 patch cells of the
# default model on 512 px photos) around it, clipped to the frame. A patch's score sees its
# neighbourhood (the 3 x 3 aggregation, the backbone's receptive field), so the patches next
# to the text score high too: a mask the size of the text alone leaves them judged.
MARGIN = 0.08
MASK = {"x": 0.0, "y": TEXT_AREA["y"] - MARGIN,
        "width": TEXT_AREA["x"] + TEXT_AREA["width"] + MARGIN,
        "height": 1.0 - (TEXT_AREA["y"] - MARGIN)}


def _lot_number(rng: np.random.Generator) -> str:
    digits = "".join(rng.choice(list(string.digits), 4))
    letter = rng.choice(list(string.ascii_uppercase))
    return f"LOT {digits}-{letter} {int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d}"


def with_text(image: np.ndarray, seed: int) -> np.ndarray:
    """``image`` with a random lot number printed inside ``TEXT_AREA`` (dark ink)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, round(0.055 * height)))
    x = TEXT_AREA["x"] * width + rng.uniform(0, 0.05) * width
    y = TEXT_AREA["y"] * height + rng.uniform(0, 0.02) * height
    ink = int(rng.integers(20, 70))
    draw.text((x, y), _lot_number(rng), font=font, fill=(ink, ink, ink))
    return np.asarray(canvas)


def _defects(dataset: Path) -> list[Path]:
    folders = sorted(p for p in (dataset / "test").iterdir() if p.is_dir() and p.name != "good")
    return [path for folder in folders for path in common.images_in(folder)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.draws = 2, 1

    import onnx

    from app.detector.config import DetectorConfig
    from app.detector.engine import Detector
    from app.detector.graph import with_layout
    from app.detector.layout import Layout
    from app.detector.runtime import CompiledModel, RuntimeOptions

    options = RuntimeOptions(threads=args.threads)
    detector = Detector(common.MODELS_DIR, options)
    layout = Layout.from_dict({"ignore": [MASK]})
    pool = common.images_in(args.dataset / "train" / "good")
    good = [common.decode(p) for p in common.images_in(args.dataset / "test" / "good")]
    defects = [common.decode(p) for p in _defects(args.dataset)]
    if args.quick:
        good, defects = good[:3], defects[:3]
    texted_good = [with_text(image, 1000 + i) for i, image in enumerate(good)]
    texted_defects = [with_text(image, 5000 + i) for i, image in enumerate(defects)]

    rows: list[dict[str, Any]] = []
    for seed in range(args.draws):
        rng = np.random.default_rng(seed)
        train = [common.decode(pool[i]) for i in sorted(rng.choice(len(pool), args.k,
                                                                   replace=False))]
        fitted = detector.fit(train, DetectorConfig(), seed=seed)
        graph = onnx.load_from_string(fitted.onnx_bytes)
        with_layout(graph, layout)
        models = {
            "no mask": CompiledModel(fitted.onnx_bytes, options),
            "mask, new version": CompiledModel(graph.SerializeToString(), options),
            "mask, trained with it": CompiledModel(
                detector.fit(train, DetectorConfig(), seed=seed, layout=layout).onnx_bytes,
                options),
        }
        for name, model in models.items():
            def rate(images: list[np.ndarray], model: CompiledModel = model) -> float:
                return float(np.mean([model.inspect(image).is_anomalous for image in images]))

            rows.append({"draw": seed, "model": name,
                         "frr_without_text": rate(good), "frr_with_text": rate(texted_good),
                         "recall_with_text": rate(texted_defects)})
            print(rows[-1], flush=True)

    names = list(dict.fromkeys(r["model"] for r in rows))
    summary = {name: {m: float(np.mean([r[m] for r in rows if r["model"] == name]))
                      for m in ("frr_without_text", "frr_with_text", "recall_with_text")}
               for name in names}
    print()
    print(common.markdown_table(
        ["model", "FRR, good without text", "FRR, good with text", "recall, defects with text"],
        [[name, f"{s['frr_without_text']:.3f}", f"{s['frr_with_text']:.3f}",
          f"{s['recall_with_text']:.3f}"] for name, s in summary.items()]))
    common.write_results(args.out or common.default_out("ignore_text", args.quick), {
        "bench": "ignore_text",
        "machine": common.machine_info(args.threads),
        "dataset": str(args.dataset), "k": args.k, "draws": args.draws,
        "text_area": TEXT_AREA, "mask": MASK,
        "good_images": len(good), "defect_images": len(defects),
        "rows": rows, "summary": summary,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
