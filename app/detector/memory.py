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

    Exact float32 search (the nearest row maximises ``x.y - |y|^2 / 2``, then the exact
    ``|x - y*|``): the reference that the ONNX graph's 8-bit shortlist approximates (exactly,
    but for near-ties the shortlist may drop). ``x`` with a 1 appended against ``y`` with
    ``-|y|^2 / 2`` appended makes that criterion one matrix product per block, written into
    one reused buffer, with nothing but its argmax read over the block (the quality report
    and the calibration score tens of images this way in every fit).
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    bank = np.asarray(bank, dtype=np.float32)
    if len(bank) == 0:
        raise ValueError("cannot score against an empty memory bank")
    out = np.empty(len(patches), dtype=np.float32)
    half_sq = 0.5 * np.sum(bank.astype(np.float64) ** 2, axis=1)
    bank_ext = np.concatenate([bank, (-half_sq).astype(np.float32)[:, None]], axis=1)
    queries = np.concatenate([patches, np.ones((len(patches), 1), np.float32)], axis=1)
    block = np.empty((min(_QUERY_BLOCK, len(patches)), min(BANK_CHUNK, len(bank))), np.float32)
    for q0 in range(0, len(patches), _QUERY_BLOCK):
        x = queries[q0 : q0 + _QUERY_BLOCK]
        rows = np.arange(len(x))
        best_val = np.full(len(x), -np.inf, dtype=np.float32)
        best_idx = np.zeros(len(x), dtype=np.int64)
        for b0 in range(0, len(bank), BANK_CHUNK):
            chunk = bank_ext[b0 : b0 + BANK_CHUNK]
            gain = block[: len(x), : len(chunk)]
            np.matmul(x, chunk.T, out=gain)
            local = np.argmax(gain, axis=1)
            val = gain[rows, local]
            better = val > best_val
            best_val[better] = val[better]
            best_idx[better] = local[better] + b0
        diff = patches[q0 : q0 + len(x)] - bank[best_idx]
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


# A step of the pruned coreset computes distances only for the points the triangle inequality
# cannot rule out; when more than this fraction remain it computes them all, which is cheaper
# than gathering most rows (textures, where every patch is near every other).
_PRUNED_STEP_MAX_FRACTION = 0.25
# Slack on the pruning bound, so that a pruned point is one the full step would not have
# moved and the selection is the same as without pruning: relative to the bound, and absolute
# in units of the largest squared norm, since float32 rounding of ``|x|^2 - 2 x.c + |c|^2``
# grows with the norms (a 128-term dot errs by about 1e-6 of them, 1e-5 at worst).
_PRUNE_SLACK = 1e-3
_PRUNE_ABS_SLACK = 1e-4
_REACH_FACTOR = np.float32(4.0 * (1.0 + _PRUNE_SLACK))
# The most steps a coreset waits before trying to prune again.
_MAX_BACKOFF = 32


def greedy_coreset(
    features: np.ndarray,
    size: int,
    *,
    seed: int,
    projection_dim: int = 128,
    should_stop: Callable[[float], None] | None = None,
    prune: bool = True,
) -> np.ndarray:
    """Indices of a greedy k-center coreset of ``features (N, C)`` (PatchCore, Alg. 1).

    Each step adds the point farthest from the current selection, so the bank covers every
    mode of normality, rare ones included. Distances are taken in a seeded Gaussian random
    projection to ``projection_dim`` (Johnson-Lindenstrauss) for speed. Memory is the
    projected copy, a few ``(N,)`` arrays and the chosen rows; time is at most
    ``O(N * size * projection_dim)``.

    A step skips the points the new centre cannot come closer to: a point whose nearest
    centre ``a`` lies at ``d(x, a)`` gets no nearer to ``c`` unless ``d(a, c) < 2 d(x, a)``
    (triangle inequality). Late steps, when each point sits close to its centre, touch a small
    fraction of the points; the chosen indices are those of the unpruned algorithm
    (``prune=False``, kept to measure against: BENCHMARKS.md, "Training").

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
    slack = np.float32(_PRUNE_ABS_SLACK * float(x_sq.max(initial=0.0)))
    centre_x = np.empty((size, x.shape[1]), dtype=np.float32)  # the chosen rows, contiguous
    centre_sq = np.empty(size, dtype=np.float32)
    selected = np.empty(size, dtype=np.int64)
    selected[0] = int(rng.integers(n))
    min_d2 = np.full(n, np.inf, dtype=np.float32)
    # Per point: its centre's position in ``selected``, and the squared centre distance from
    # which a new centre cannot move it (4 d(x, a)^2, with slack against rounding).
    nearest = np.zeros(n, dtype=np.intp)
    reach = np.full(n, np.inf, dtype=np.float32)
    centre_gap = np.empty(n, dtype=np.float32)
    maybe = np.empty(n, dtype=bool)
    # Steps to wait before trying to prune again: doubles while a check leaves more than
    # _PRUNED_STEP_MAX_FRACTION of the points to compute.
    wait, backoff = 0, 1
    report_every = max(1, size // 50)
    for i in range(1, size + 1):
        c = selected[i - 1]
        centre_x[i - 1], centre_sq[i - 1] = x[c], x_sq[c]
        candidates = None
        if wait > 0:
            wait -= 1
        elif prune and i > 1:
            cc2 = (centre_sq[: i - 1] - 2.0 * np.einsum("ij,j->i", centre_x[: i - 1], x[c])
                   + x_sq[c])
            np.take(cc2, nearest, out=centre_gap)
            np.less(centre_gap, reach, out=maybe)
            candidates = np.flatnonzero(maybe)
            if len(candidates) > _PRUNED_STEP_MAX_FRACTION * n:
                candidates, wait, backoff = None, backoff, min(2 * backoff, _MAX_BACKOFF)
            else:
                backoff = 1
        if candidates is None:
            # einsum, not ``x @ x[c]``: a multi-threaded BLAS call per step spends more time
            # waking threads than computing (measured 3-7x slower on 2 busy cores).
            d2 = x_sq - 2.0 * np.einsum("ij,j->i", x, x[c]) + x_sq[c]
            closer = np.flatnonzero(d2 < min_d2)
            d2_closer = d2[closer]
        else:
            d2 = x_sq[candidates] - 2.0 * np.einsum("ij,j->i", x[candidates], x[c]) + x_sq[c]
            moved = d2 < min_d2[candidates]
            closer, d2_closer = candidates[moved], d2[moved]
        min_d2[closer] = d2_closer
        reach[closer] = _REACH_FACTOR * d2_closer + slack
        nearest[closer] = i - 1
        if i == size:
            break
        selected[i] = int(np.argmax(min_d2))
        if should_stop is not None and i % report_every == 0:
            should_stop(i / size)
    return selected
