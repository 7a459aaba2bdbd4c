"""The evaluation report (``nominal evaluate --report DIR``): one self-contained HTML page.

People choosing a configuration would rather look at curves and at the worst images than read
a table. The page holds, per k: the ROC curve of each draw, the histograms of good and defect
scores with the calibrated threshold drawn, image AUROC per defect type, the perturbation
table when one was run, and the worst false rejects and missed defects as heatmap thumbnails.
Every picture is embedded as a ``data:`` URI, so the file opens anywhere, offline, alone.

Plots are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no global
backend state), so making a report changes nothing else in the process.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

REPORT_FILE = "index.html"


@dataclass
class DrawScores:
    """What one draw's plots need: its image scores, which are defects, and its threshold."""

    k: int
    seed: int
    threshold: float
    scores: np.ndarray
    is_defect: np.ndarray


@dataclass
class Example:
    """One thumbnail of the worst cases: a heatmap overlay PNG and what it shows."""

    kind: str  # "good" (highest-scoring good images) or "defect" (lowest-scoring defects)
    title: str
    png: bytes


@dataclass
class ReportInput:
    dataset: str
    config: dict[str, Any]
    summary: list[dict[str, Any]]
    draws: list[DrawScores]
    examples: list[Example] = field(default_factory=list)
    perturbations: list[dict[str, Any]] | None = None


def roc_curve(scores: np.ndarray, is_defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every distinct score, from (0, 0)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], is_defect[order].astype(bool)
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return _data_uri(buffer.getvalue())


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _roc_figure(k: int, draws: Sequence[DrawScores]) -> str:
    figure = Figure(figsize=(4.2, 4.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for draw in draws:
        fpr, tpr = roc_curve(draw.scores, draw.is_defect)
        axes.plot(fpr, tpr, linewidth=1.4, label=f"seed {draw.seed}")
    axes.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, linestyle="--")
    axes.set(xlabel="false-positive rate (good images flagged)",
             ylabel="true-positive rate (defects flagged)", title=f"ROC, k = {k}",
             xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def _histogram_figure(draw: DrawScores) -> str:
    figure = Figure(figsize=(5.2, 3.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    good, defect = draw.scores[~draw.is_defect], draw.scores[draw.is_defect]
    top = float(max(draw.scores.max(initial=0.0), draw.threshold) * 1.05) or 1.0
    bins = np.linspace(0.0, top, 41).tolist()
    axes.hist(good, bins=bins, alpha=0.6, label=f"good ({len(good)})", color="tab:green")
    axes.hist(defect, bins=bins, alpha=0.6, label=f"defect ({len(defect)})", color="tab:red")
    axes.axvline(draw.threshold, color="black", linewidth=1.2, label="threshold")
    axes.set(xlabel="image score", ylabel="images",
             title=f"scores, k = {draw.k}, seed {draw.seed}")
    axes.legend(fontsize=8)
    return _png(figure)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d232a; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #cdd3da; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef1f4; } td:first-child, th:first-child { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #4a5561; max-width: 260px; }
.thumbs img { width: 256px; height: auto; border: 1px solid #cdd3da; }
code { background: #eef1f4; padding: 0 0.25em; }
"""


_WORST_HEADINGS = {
    "good": "Worst false rejects: the highest-scoring good images (rejected past the threshold)",
    "defect": "Worst missed defects: the lowest-scoring defects (missed under the threshold)",
}


def render_report(data: ReportInput) -> str:
    """The page as one HTML string (no external reference of any kind)."""
    parts = [f"<h1>Evaluation: {html.escape(Path(data.dataset).name)}</h1>",
             "<p>Configuration: " + ", ".join(
                 f"<code>{html.escape(k)}={html.escape(str(v))}</code>"
                 for k, v in data.config.items()) + "</p>",
             "<h2>Summary (means over draws)</h2>",
             _table(["k", "draws", "image AUROC", "pixel AUROC", "PRO (FPR 0.3)",
                     "FRR (test good)", "defect recall", "ms/image"],
                    [[r["k"], r["draws"], r.get("image_auroc"), r.get("pixel_auroc"),
                      r.get("pro"), r.get("false_reject_rate"), r.get("defect_recall"),
                      r.get("ms_per_image")] for r in data.summary])]
    labels = sorted({label for r in data.summary
                     for label in (r.get("image_auroc_per_defect") or {})})
    if labels:
        parts += ["<h2>Image AUROC per defect type</h2>",
                  "<p>Each defect type's images against all good test images.</p>",
                  _table(["k", *labels],
                         [[r["k"], *[(r.get("image_auroc_per_defect") or {}).get(label)
                                     for label in labels]] for r in data.summary])]
    for k in sorted({d.k for d in data.draws}):
        draws = [d for d in data.draws if d.k == k]
        parts += [f"<h2>k = {k}</h2>", '<div class="plots">',
                  f'<figure><img alt="ROC curve, k = {k}" src="{_roc_figure(k, draws)}">'
                  "<figcaption>ROC of each draw over the whole test split.</figcaption>"
                  "</figure>",
                  f'<figure><img alt="score histograms, k = {k}" '
                  f'src="{_histogram_figure(draws[0])}">'
                  "<figcaption>Good and defect image scores of the first draw; the line is "
                  "the threshold calibrated on its training images alone.</figcaption>"
                  "</figure></div>"]
    if data.perturbations:
        parts += ["<h2>Allowed variations of good parts</h2>",
                  "<p>False-reject rate of perturbed good views at the calibrated threshold, "
                  "recall on equally perturbed defects, image AUROC; means over draws.</p>",
                  _table(["perturbation", "good views", "defect views", "FRR", "recall",
                          "AUROC"],
                         [[p["name"], p.get("n_good_views"), p.get("n_defect_views"),
                           p.get("false_reject_rate"), p.get("recall"), p.get("auroc")]
                          for p in data.perturbations])]
    for kind, heading in _WORST_HEADINGS.items():
        shown = [e for e in data.examples if e.kind == kind]
        if not shown:
            continue
        parts += [f"<h2>{heading}</h2>", '<div class="plots thumbs">']
        parts += [f'<figure><img alt="{html.escape(e.title)}" src="{_data_uri(e.png)}">'
                  f"<figcaption>{html.escape(e.title)}</figcaption></figure>" for e in shown]
        parts.append("</div>")
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>Evaluation: {html.escape(Path(data.dataset).name)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_report(directory: Path, data: ReportInput) -> Path:
    """Write ``directory/index.html``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    path.write_text(render_report(data), encoding="utf-8")
    return path
