"""Memory-bank maths: chunked nearest-neighbour distances and the greedy k-center coreset."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from app.detector import memory
from app.detector.memory import greedy_coreset, nearest_distances


def _brute_force(patches: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Exact nearest distances in float64 over the full (N, M) matrix: the reference."""
    x = patches.astype(np.float64)
    y = bank.astype(np.float64)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=2)
    return np.sqrt(d2.min(axis=1))


def _coverage_radius(points: np.ndarray, selected: np.ndarray) -> float:
    """Largest distance from any point to its nearest selected point (k-center objective)."""
    return float(_brute_force(points, points[selected]).max())


# --- nearest_distances -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "m", "bank_chunk", "query_block"),
    [
        (37, 50, 4096, 4096),  # one chunk, one block (the default path)
        (300, 500, 64, 50),  # ragged last chunk and last block
        (256, 512, 128, 64),  # exact multiples
        (90, 7, 3, 1000),  # bank smaller than a chunk boundary: chunks of 3, 3, 1
        (5, 1, 4, 2),  # one-row bank
    ],
)
def test_nearest_distances_match_brute_force(
    monkeypatch: pytest.MonkeyPatch, n: int, m: int, bank_chunk: int, query_block: int
) -> None:
    monkeypatch.setattr(memory, "BANK_CHUNK", bank_chunk)
    monkeypatch.setattr(memory, "_QUERY_BLOCK", query_block)
    rng = np.random.default_rng(n * 1000 + m)
    patches = rng.standard_normal((n, 24)).astype(np.float32)
    bank = rng.standard_normal((m, 24)).astype(np.float32)
    got = nearest_distances(patches, bank)
    assert got.shape == (n,)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _brute_force(patches, bank), rtol=1e-5, atol=1e-5)


def test_nearest_distances_chunking_does_not_change_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(3)
    patches = rng.standard_normal((200, 16)).astype(np.float32)
    bank = rng.standard_normal((333, 16)).astype(np.float32)
    whole = nearest_distances(patches, bank)
    monkeypatch.setattr(memory, "BANK_CHUNK", 10)
    monkeypatch.setattr(memory, "_QUERY_BLOCK", 17)
    np.testing.assert_allclose(nearest_distances(patches, bank), whole, rtol=1e-6, atol=1e-6)


def test_nearest_distances_are_exact_for_near_duplicates_far_from_the_origin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large norms, tiny distances: ``|x|^2 - 2 x.y + |y|^2`` alone cancels catastrophically
    (float32 error ~1e-2 on values ~1e5); the recomputed ``|x - y*|`` must not."""
    monkeypatch.setattr(memory, "BANK_CHUNK", 32)
    rng = np.random.default_rng(7)
    bank = (100.0 + rng.standard_normal((100, 16))).astype(np.float32)
    offsets = rng.standard_normal((100, 16)).astype(np.float32) * 1e-3
    patches = (bank + offsets).astype(np.float32)
    got = nearest_distances(patches, bank)
    expected = _brute_force(patches, bank)
    assert expected.max() < 0.01
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_nearest_distances_zero_for_bank_members() -> None:
    rng = np.random.default_rng(11)
    bank = rng.standard_normal((40, 8)).astype(np.float32) * 5
    assert np.all(nearest_distances(bank[::3], bank) < 1e-5)


# --- greedy_coreset ----------------------------------------------------------------------


def _clustered(n_per: list[int], dim: int, seed: int) -> np.ndarray:
    """Gaussian clusters of unequal sizes (some rare) with well separated centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(n_per), dim)) * 10.0
    parts = [c + rng.standard_normal((k, dim)) * 0.5 for c, k in zip(centres, n_per, strict=True)]
    return np.concatenate(parts).astype(np.float32)


def test_coreset_returns_unique_indices_of_the_requested_size() -> None:
    x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    for size in (1, 2, 37, 499):
        idx = greedy_coreset(x, size, seed=1)
        assert len(idx) == size
        assert len(np.unique(idx)) == size
        assert idx.min() >= 0 and idx.max() < len(x)


def test_coreset_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    x = np.random.default_rng(0).standard_normal((400, 200)).astype(np.float32)  # projected
    a = greedy_coreset(x, 40, seed=5)
    b = greedy_coreset(x, 40, seed=5)
    c = greedy_coreset(x, 40, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [10, 11, 1000])
def test_coreset_keeps_everything_when_size_reaches_n(size: int) -> None:
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.sort(greedy_coreset(x, size, seed=0)), np.arange(10))


@pytest.mark.parametrize("size", [0, -3])
def test_coreset_rejects_sizes_below_one(size: int) -> None:
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=str(size)):
        greedy_coreset(x, size, seed=0)


@pytest.mark.parametrize("dim", [16, 152])  # 152 > projection_dim: distances in a projection
def test_coreset_covers_the_data_better_than_random_subsets(dim: int) -> None:
    # 2 big clusters and 10 rare ones; 30 points are enough to reach every cluster.
    x = _clustered([600, 600] + [8] * 10, dim, seed=dim)
    size = 30
    coreset = _coverage_radius(x, greedy_coreset(x, size, seed=0))
    rng = np.random.default_rng(1)
    random_best = min(
        _coverage_radius(x, rng.choice(len(x), size, replace=False)) for _ in range(5)
    )
    assert coreset < random_best
    # Every cluster is reached: the radius is of the order of a cluster's own spread.
    assert coreset < 0.5 * np.sqrt(dim) * 3.0


@pytest.mark.parametrize("kind", ["clustered", "uniform", "duplicates", "far_from_origin",
                                  "projected"])
def test_pruning_keeps_the_unpruned_selection(kind: str) -> None:
    # Clusters (most steps pruned), isotropic noise (most steps fall back to every distance),
    # repeated rows (zero distances), an offset (rounding relative to large norms) and
    # features wider than the random projection.
    rng = np.random.default_rng(3)
    x = {
        "clustered": lambda: _clustered([900, 700] + [10] * 20, 32, seed=4),
        "uniform": lambda: rng.standard_normal((2000, 32)).astype(np.float32),
        "duplicates": lambda: np.repeat(rng.standard_normal((300, 16)), 5, axis=0)
        .astype(np.float32),
        "far_from_origin": lambda: (_clustered([800, 800, 50], 16, seed=5) + 300.0)
        .astype(np.float32),
        "projected": lambda: _clustered([700, 500] + [20] * 10, 300, seed=6),  # > 128 dims
    }[kind]()
    size = 400
    np.testing.assert_array_equal(greedy_coreset(x, size, seed=9),
                                  greedy_coreset(x, size, seed=9, prune=False))


def test_coreset_reports_progress_and_can_be_cancelled() -> None:
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    seen: list[float] = []
    greedy_coreset(x, 100, seed=0, should_stop=seen.append)
    assert seen, "should_stop was never called"
    assert all(0.0 < f < 1.0 for f in seen)
    assert seen == sorted(seen)

    class Stop(Exception):
        pass

    def stop(fraction: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        greedy_coreset(x, 100, seed=0, should_stop=stop)


def _peak_bytes_of_coreset(n: int, dim: int, size: int) -> tuple[int, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    tracemalloc.start()
    try:
        idx = greedy_coreset(x, size, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, idx


def test_coreset_of_a_large_bank_never_builds_an_n_by_n_matrix() -> None:
    n, dim, size = 200_000, 152, 64
    peak, idx = _peak_bytes_of_coreset(n, dim, size)
    assert len(np.unique(idx)) == size
    # N x N float32 would be 160 GB; the input itself is 122 MB. Allow a few O(N x C) copies.
    assert peak < 5 * n * dim * 4
    assert peak < n * n * 4 / 100


def test_coreset_projection_stays_float32() -> None:
    n, dim, size = 200_000, 152, 8
    peak, _ = _peak_bytes_of_coreset(n, dim, size)
    # The projected float32 copy is n x 128 x 4 bytes (0.84 of the input) plus O(N) vectors.
    assert peak < 1.5 * n * dim * 4


@pytest.mark.slow
def test_coreset_of_200k_patches_to_2000(request: pytest.FixtureRequest) -> None:
    # ~25-50 s on 2 cores; `make test` selects every marker, so run only when asked for.
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow (~30 s): select with -m slow")
    n, dim, size = 200_000, 152, 2000
    peak, idx = _peak_bytes_of_coreset(n, dim, size)
    assert len(idx) == size
    assert len(np.unique(idx)) == size
    assert peak < 5 * n * dim * 4
