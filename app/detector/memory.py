"""Memory bank maths in numpy: coreset selection and nearest-neighbour distances.

Both stay bounded in memory for hundreds of training images: nothing here builds an
``N x N`` or ``N x M x C`` array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.detector.graph import BANK_CHUNK

# Rows of the query processed per block in ``nearest_distances``: bounds the (rows, chunk)
# distance block to 64 MiB.
_QUERY_BLOCK = 4096


@dataclass(frozen=True)
class PatchFeatures:
    """Patch features of one image: ``patches (h * w, C)`` in row-major grid order, and, when
    the extractor computes it, its foreground ``(h * w,)`` (1 on the part, 0 on background)."""

    patches: np.ndarray
    grid: tuple[int, int]
    foreground: np.ndarray | None = None


def nearest_distances(patches: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Distance of each row of ``patches (N, C)`` to its nearest row of ``bank (M, C)``: ``(N,)``.

    Exact float32 search (chunked ``|y|^2 - 2 x.y`` for the argmin, then the exact
    ``|x - y*|``): the reference that the ONNX graph's 8-bit shortlist approximates (exactly,
    but for near-ties the shortlist may drop).
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    if len(bank) == 0:
        raise ValueError("cannot score against an empty memory bank")
    out = np.empty(len(patches), dtype=np.float32)
    bank_sq = np.sum(bank.astype(np.float64) ** 2, axis=1).astype(np.float32)
    for q0 in range(0, len(patches), _QUERY_BLOCK):
        x = patches[q0 : q0 + _QUERY_BLOCK]
        best_val = np.full(len(x), np.inf, dtype=np.float32)
        best_idx = np.zeros(len(x), dtype=np.int64)
        for b0 in range(0, len(bank), BANK_CHUNK):
            partial = bank_sq[b0 : b0 + BANK_CHUNK] - 2.0 * (x @ bank[b0 : b0 + BANK_CHUNK].T)
            local = np.argmin(partial, axis=1)
            val = partial[np.arange(len(x)), local]
            better = val < best_val
            best_val[better] = val[better]
            best_idx[better] = local[better] + b0
        diff = x - bank[best_idx]
        out[q0 : q0 + len(x)] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def edge_weights(grid: tuple[int, int], band: int, weight: float) -> np.ndarray:
    """Factor per patch ``(h * w,)`` float32, row-major: ``weight`` for patches fewer than
    ``band`` cells from the frame's edge, 1 elsewhere (the scoring graph's ``_weigh_edges``).

    Edge patches see the mirrored margin, whose content moves with the part: a good part a
    few pixels off its usual place scores high there (BENCHMARKS.md, "Tolerance of allowed
    variations").
    """
    h, w = grid
    rows, cols = np.arange(h), np.arange(w)
    to_edge = np.minimum.outer(np.minimum(rows, h - 1 - rows), np.minimum(cols, w - 1 - cols))
    return np.where(to_edge < band, np.float32(weight), np.float32(1.0)).ravel()


def image_score(patch_scores: np.ndarray, top_fraction: float,
                judged: int | None = None) -> float:
    """Image score from patch scores ``(N,)``: the maximum (PatchCore), or with
    ``top_fraction > 0`` the mean of the highest ``ceil(top_fraction * N)`` patches, which one
    noisy patch cannot dominate (AnomalyDINO uses the top 1 %). ``judged``: the number of
    patches a layout judges, in place of N (the others score 0)."""
    if top_fraction <= 0:
        return float(np.max(patch_scores))
    base = len(patch_scores) if judged is None else judged
    # In float32, as the graph computes it: ceil(0.07 * 100) is 8 in float64, 7 in float32.
    k = min(len(patch_scores), max(1, math.ceil(float(np.float32(top_fraction)
                                                      * np.float32(base)))))
    return float(np.mean(np.partition(patch_scores, len(patch_scores) - k)[-k:]))


def greedy_coreset(
    features: np.ndarray,
    size: int,
    *,
    seed: int,
    projection_dim: int = 128,
    should_stop: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Indices of a greedy k-center coreset of ``features (N, C)`` (PatchCore, Alg. 1).

    Each step adds the point farthest from the current selection, so the bank covers every
    mode of normality, rare ones included. Distances are taken in a seeded Gaussian random
    projection to ``projection_dim`` (Johnson-Lindenstrauss) for speed. Memory is ``O(N)``
    besides the projected copy; time is ``O(N * size * projection_dim)``.

    ``should_stop(progress)`` is called now and then with the fraction done; it may raise to
    abort (training cancellation).
    """
    n = len(features)
    if size >= n:
        return np.arange(n)
    if size < 1:
        raise ValueError(f"coreset size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.shape[1] > projection_dim:
        proj = rng.standard_normal((x.shape[1], projection_dim)).astype(np.float32)
        x = x @ (proj / np.float32(np.sqrt(projection_dim)))  # stay float32
    x_sq = np.einsum("ij,ij->i", x, x)
    selected = np.empty(size, dtype=np.int64)
    selected[0] = int(rng.integers(n))
    min_d2 = np.full(n, np.inf, dtype=np.float32)
    report_every = max(1, size // 50)
    for i in range(1, size + 1):
        c = selected[i - 1]
        # einsum, not ``x @ x[c]``: a multi-threaded BLAS call per step spends more time
        # waking threads than computing (measured 3-7x slower on 2 busy cores).
        d2 = x_sq - 2.0 * np.einsum("ij,j->i", x, x[c]) + x_sq[c]
        np.minimum(min_d2, d2, out=min_d2)
        if i == size:
            break
        selected[i] = int(np.argmax(min_d2))
        if should_stop is not None and i % report_every == 0:
            should_stop(i / size)
    return selected
