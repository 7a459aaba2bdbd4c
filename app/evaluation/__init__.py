"""Few-shot evaluation on MVTec-AD-layout folders (``nominal evaluate``).

``dataset``: the folder's index, decoding and masks; ``metrics``: image AUROC (exact) and the
pixel metrics accumulated image by image (pixel AUROC, PRO); ``evaluate``: the draws, the
streamed scoring, the summary, table and JSON.
"""

from app.evaluation.dataset import Dataset, TestImage, load_dataset
from app.evaluation.evaluate import (
    DrawResult,
    evaluate_draw,
    format_per_defect,
    format_table,
    run_evaluation_command,
    summarise,
)
from app.evaluation.metrics import PixelMetrics, PixelRoc, ProCurve, ScoreBins, auroc

__all__ = [
    "Dataset",
    "DrawResult",
    "PixelMetrics",
    "PixelRoc",
    "ProCurve",
    "ScoreBins",
    "TestImage",
    "auroc",
    "evaluate_draw",
    "format_per_defect",
    "format_table",
    "load_dataset",
    "run_evaluation_command",
    "summarise",
]
