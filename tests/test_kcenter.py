import numpy as np
import pytest

from polypal.sampler import kcenter as _kc
from polypal.sampler.kcenter import k_center_greedy, min_sq_dists


@pytest.fixture(autouse=True)
def _pruned_path_even_for_small_inputs(monkeypatch):
    """Small inputs go to the one-pass version by default; here every test runs the pruned one."""
    monkeypatch.setattr(_kc, "ONE_PASS_MAX_ELEMENTS", 0)


def brute_force_kcenter(x, labeled, budget, seed=0):
    """Reference: full N x N float64 distance matrix, plain (x - c)^2 sums."""
    x = np.asarray(x, dtype=np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    n = len(x)
    centers = list(labeled)
    picks = []
    avail = np.ones(n, dtype=bool)
    avail[centers] = False
    for _ in range(budget):
        if not centers:
            cand = np.flatnonzero(avail)
            j = int(cand[np.random.default_rng(seed).integers(len(cand))])
        else:
            md = d[:, centers].min(axis=1)
            md[~avail] = -1
            j = int(np.argmax(md))
        picks.append(j)
        centers.append(j)
        avail[j] = False
    return np.array(picks)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n_labeled", [0, 1, 7])
def test_matches_brute_force(seed, n_labeled):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((120, 9))
    labeled = rng.choice(120, size=n_labeled, replace=False)
    got = k_center_greedy(x, labeled, 25, seed=seed, chunk=17)  # small chunk: exercise chunking
    want = brute_force_kcenter(x, labeled.tolist(), 25, seed=seed)
    np.testing.assert_array_equal(got, want)


def test_float32_matches_on_separated_data():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    labeled = rng.choice(300, size=20, replace=False)
    np.testing.assert_array_equal(k_center_greedy(x, labeled, 40), brute_force_kcenter(x, labeled.tolist(), 40))


def test_ties_broken_by_lowest_index():
    # four points at equal distance from the single center: the lowest index wins
    x = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float64)
    assert k_center_greedy(x, [0], 1).tolist() == [1]


def test_never_picks_labeled_or_duplicates_and_caps_budget():
    x = np.zeros((10, 3))  # all identical: every distance is zero
    picks = k_center_greedy(x, [2, 5], 100)
    assert len(picks) == 8 and len(set(picks.tolist())) == 8
    assert not {2, 5} & set(picks.tolist())


def test_empty_labeled_start_is_seeded():
    x = np.random.default_rng(0).standard_normal((50, 4))
    a = k_center_greedy(x, [], 5, seed=11)
    b = k_center_greedy(x, [], 5, seed=11)
    np.testing.assert_array_equal(a, b)
    assert a[0] == np.random.default_rng(11).integers(50)


def test_min_sq_dists_chunked():
    rng = np.random.default_rng(3)
    x, c = rng.standard_normal((200, 6)), rng.standard_normal((30, 6))
    want = ((x[:, None] - c[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(min_sq_dists(x, c, chunk=7), want, rtol=1e-9, atol=1e-9)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_duplicates_of_labeled_frames_come_last(dtype):
    """A frame identical to a labeled one is at distance ~0 (float rounding of |x|^2 - 2x.c + |c|^2 aside):
    every distinct frame is picked before any duplicate."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((50, 16)) * 1000).astype(dtype)
    new = (rng.standard_normal((10, 16)) * 1000).astype(dtype)
    x = np.concatenate([a, a[:10], new])  # 50..59 duplicate labeled frames, 60..69 are new
    picks = k_center_greedy(x, np.arange(50), 20).tolist()
    assert sorted(picks[:10]) == list(range(60, 70)) and sorted(picks[10:]) == list(range(50, 60))


def test_default_seed_is_zero_and_features_must_be_2d():
    x = np.random.default_rng(1).standard_normal((30, 3))
    np.testing.assert_array_equal(k_center_greedy(x, [], 4), k_center_greedy(x, [], 4, seed=0))
    assert k_center_greedy(x, [], 0).tolist() == [] and k_center_greedy(x, [], -2).tolist() == []
    for bad in (x[:, 0], x[None]):
        with pytest.raises(ValueError, match="2-D"):
            k_center_greedy(bad, [], 2)


def test_memory_stays_linear_in_n():
    """No N x (centers) distance matrix: with 600 centers and chunk=16 the temporaries stay small."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 4))
    labeled = np.arange(600)
    want = k_center_greedy(x, labeled, 3)  # default chunk, as a reference for the picks
    tracemalloc.start()
    got = k_center_greedy(x, labeled, 3, chunk=16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(got, want)
    # a dense 20000 x 600 float64 block would be 96 MB; N-vectors are 160 kB each
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_min_sq_dists_tiny_chunk_many_centers():
    # chunk * 128 < number of centers: at least one row per block, never a zero-row step
    rng = np.random.default_rng(4)
    x, c = rng.standard_normal((40, 3)), rng.standard_normal((300, 3))
    want = ((x[:, None] - c[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(min_sq_dists(x, c, chunk=1), want, rtol=1e-9, atol=1e-9)
    picks = k_center_greedy(np.concatenate([c, x]), np.arange(300), 5, chunk=1)
    np.testing.assert_array_equal(picks, brute_force_kcenter(np.concatenate([c, x]), list(range(300)), 5))


def test_float64_features_keep_float64_resolution():
    # 1 and 1 + 1e-9 are one float32 number: only float64 arithmetic sees that frame 2 is farther
    x = np.array([[0.0], [1.0], [1.0 + 1e-9]])
    assert k_center_greedy(x, [0], 1).tolist() == [2]
    assert k_center_greedy(x.astype(np.float32), [0], 1).tolist() == [1]  # a tie in float32: lowest index
    assert k_center_greedy(np.array([[0], [3], [5]]), [0], 1).tolist() == [2]  # integers work too


# ---------------------------------------------------------------- pruning (triangle inequality)

from threadpoolctl import threadpool_limits  # noqa: E402


def clustered(n, d, k, seed, spread=0.3, offset=0.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    lab = rng.integers(k, size=n)
    x = offset + centers[lab] + spread * rng.uniform(0.5, 1.5, size=k)[lab, None] * rng.standard_normal((n, d))
    return x.astype(dtype)


def one_pass(x, labeled, budget, **kw):
    return _kc._k_center_greedy_one_pass(x, labeled, budget, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_labeled", [0, 1, 15])
def test_pruned_matches_brute_force_on_clustered_float64(seed, n_labeled):
    x = clustered(300, 12, 8, seed)
    labeled = np.random.default_rng(seed).choice(300, size=n_labeled, replace=False)
    want = brute_force_kcenter(x, labeled.tolist(), 60, seed=seed)
    np.testing.assert_array_equal(k_center_greedy(x, labeled, 60, seed=seed, chunk=37), want)
    np.testing.assert_array_equal(k_center_greedy(x, labeled, 60, seed=seed), want)


def test_pruning_skips_most_rows_on_clustered_data():
    x = clustered(4000, 32, 40, 0, spread=0.1)
    labeled = np.arange(0, 4000, 100)
    n, _ = x.shape
    mask = np.ones(n, dtype=bool)
    mask[labeled] = False
    run = _kc._Pruned(x, x.dtype, labeled, mask, 200, 0, _kc.DEFAULT_CHUNK)
    picks = run.run()
    np.testing.assert_array_equal(picks, one_pass(x, labeled, 200))
    # the one-pass version reads 200 x 4000 rows
    assert run.stats["rows_read"] < 0.2 * 200 * n, run.stats


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["clustered", "offset", "duplicates", "lattice", "candidates", "unlabeled"])
def test_pruned_equals_one_pass(case, dtype, threads):
    """The same picks as the version it replaced, bit-level ties included, at 1 and 2 BLAS threads,
    with N and chunk not multiples of 4 (rows in OpenBLAS's remainder kernel)."""
    rng = np.random.default_rng(7)
    n, d = 2003, 24
    cand = None
    if case == "clustered":
        x = clustered(n, d, 30, 1, spread=0.2)
    elif case == "offset":  # uncentered like the U-Net latents: norms >> distances
        x = clustered(n, d, 30, 2, spread=0.2, offset=40.0)
    elif case == "duplicates":  # exact copies of rows, some of them labeled: exact ties
        base = clustered(500, d, 10, 3)
        x = base[rng.integers(500, size=n)]
    elif case == "lattice":  # small integers: many exactly equal distances
        x = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
    elif case == "candidates":
        x = clustered(n, d, 30, 4)
        cand = rng.choice(n, size=700, replace=True)
    else:
        x = clustered(n, d, 30, 5)
    x = x.astype(dtype)
    labeled = [] if case == "unlabeled" else rng.choice(n, size=60, replace=False)
    with threadpool_limits(threads, user_api="blas"):
        for chunk in (_kc.DEFAULT_CHUNK, 501):
            want = one_pass(x, labeled, 150, candidates=cand, seed=3, chunk=chunk)
            got = k_center_greedy(x, labeled, 150, candidates=cand, seed=3, chunk=chunk)
            np.testing.assert_array_equal(got, want)


def test_pruned_float32_vs_float64():
    """float32 agrees with the float64 brute force on clustered data whose gaps exceed float32 rounding."""
    x = clustered(400, 16, 10, 9, spread=0.3)
    labeled = np.arange(0, 400, 40)
    want = brute_force_kcenter(x, labeled.tolist(), 50)
    np.testing.assert_array_equal(k_center_greedy(x, labeled, 50), want)
    np.testing.assert_array_equal(k_center_greedy(x.astype(np.float32), labeled, 50), want)


def test_float16_memmap_is_read_in_blocks(tmp_path):
    """A float16 memory map is never cast whole: peak numpy allocations stay below one float32 copy."""
    import tracemalloc

    n, d = 40000, 128
    x = clustered(n, d, 50, 11, spread=0.2).astype(np.float16)
    path = tmp_path / "lat.bin"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=(n, d))
    labeled = np.arange(0, n, 300)
    want = one_pass(x, labeled, 40)  # casts the whole matrix to float32 (19.5 MiB)
    tracemalloc.start()
    got = k_center_greedy(mm, labeled, 40, chunk=1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(got, want)
    assert peak < 0.5 * n * d * 4, f"peak {peak / 2**20:.1f} MiB"


def test_non_contiguous_input_uses_one_pass():
    x = np.asfortranarray(clustered(500, 8, 6, 12))
    labeled = [1, 2, 3]
    np.testing.assert_array_equal(k_center_greedy(x, labeled, 30), one_pass(x, labeled, 30))
    np.testing.assert_array_equal(k_center_greedy(x, labeled, 30), k_center_greedy(np.ascontiguousarray(x), labeled, 30))


@pytest.mark.skipif(_kc._blas_threads() == 0, reason="numpy's BLAS is not OpenBLAS")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gathered_dots_have_the_one_pass_bits(threads, dtype):
    """_OldLayout.dots on any row subset gives the bits of the one-pass version's chunked GEMV."""
    rng = np.random.default_rng(0)
    n, d, chunk = 3001, 40, 1003
    x = (rng.standard_normal((n, d)) * rng.exponential(3, (n, d))).astype(dtype)
    c = (rng.standard_normal(d) * 10).astype(dtype)
    with threadpool_limits(threads, user_api="blas"):
        want = np.concatenate([x[s : s + chunk] @ c for s in range(0, n, chunk)])
        layout = _kc._OldLayout(n, d, chunk, _kc._blas_threads())
        for rows in (np.arange(n), np.sort(rng.choice(n, 777, replace=False)), np.array([n - 1]), layout.rem):
            np.testing.assert_array_equal(layout.dots(x, rows, c, dtype, 256), want[rows])


def test_small_inputs_use_the_one_pass_version(monkeypatch):
    x = clustered(500, 8, 6, 13, dtype=np.float32)
    labeled = [0, 5, 9]
    pruned = k_center_greedy(x, labeled, 40)
    monkeypatch.setattr(_kc, "ONE_PASS_MAX_ELEMENTS", 1 << 21)
    monkeypatch.setattr(_kc, "_Pruned", None)  # would fail if used
    np.testing.assert_array_equal(k_center_greedy(x, labeled, 40), pruned)


# ---------------------------------------------------------------- mutation survivors (issue 17)


@pytest.mark.parametrize("path", ["pruned", "one_pass"])
def test_small_scale_features_match_brute_force(path, monkeypatch):
    """Distances far below 1 (features in [0, 0.01]): every clamp is at 0, never at a positive value."""
    if path == "one_pass":
        monkeypatch.setattr(_kc, "ONE_PASS_MAX_ELEMENTS", 1 << 21)
    rng = np.random.default_rng(21)
    x = rng.uniform(0, 0.01, size=(80, 5))
    for labeled in ([], [3, 40]):
        want = brute_force_kcenter(x, labeled, 30, seed=2)
        np.testing.assert_array_equal(k_center_greedy(x, labeled, 30, seed=2), want)
        np.testing.assert_array_equal(k_center_greedy(x, labeled, 30, seed=2, chunk=7), want)


def test_min_sq_dists_is_never_negative():
    """|x|^2 - 2 x.c + |c|^2 rounds below 0 for a row that is its own center: returned as 0, not negative."""
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal((200, 16)).astype(np.float32), 40 + rng.standard_normal((200, 16))):
        d = min_sq_dists(x, x[:50])
        assert (d >= 0).all() and (d[:50] < 1e-3).all()
        np.testing.assert_array_equal(d[50:] > 0, True)


@pytest.mark.parametrize("path", ["pruned", "one_pass"])
def test_identical_rows_without_labels_are_each_picked_once(path, monkeypatch):
    """All distances 0: the seeded first center, then the lowest indices in order, none picked twice."""
    if path == "one_pass":
        monkeypatch.setattr(_kc, "ONE_PASS_MAX_ELEMENTS", 1 << 21)
    x = np.ones((7, 3))
    for seed in range(4):
        first = int(np.random.default_rng(seed).integers(7))
        want = [first] + [i for i in range(7) if i != first]
        assert k_center_greedy(x, [], 7, seed=seed).tolist() == want
        assert k_center_greedy(x, [], 100, seed=seed).tolist() == want


@pytest.mark.parametrize("path", ["pruned", "one_pass"])
def test_labeled_candidates_are_never_picked_even_when_the_budget_covers_all(path, monkeypatch):
    if path == "one_pass":
        monkeypatch.setattr(_kc, "ONE_PASS_MAX_ELEMENTS", 1 << 21)
    x = clustered(60, 4, 3, 14)
    labeled = [2, 7, 30]
    cand = [1, 2, 3, 7, 8, 9, 30, 31, 31]  # labeled frames and a repeat among the candidates
    picks = k_center_greedy(x, labeled, 100, candidates=cand)
    assert sorted(picks.tolist()) == [1, 3, 8, 9, 31]
    assert picks.tolist() == brute_force_kcenter_candidates(x, labeled, [1, 3, 8, 9, 31])


def brute_force_kcenter_candidates(x, labeled, cand):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    centers, left, picks = list(labeled), list(cand), []
    while left:
        md = [d[i, centers].min() for i in left]
        j = left[int(np.argmax(md))]  # first among equal maxima: candidates are in increasing order
        picks.append(j)
        centers.append(j)
        left.remove(j)
    return picks


def test_one_pass_reference_default_seed_is_zero():
    x = np.random.default_rng(2).standard_normal((40, 3))
    np.testing.assert_array_equal(one_pass(x, [], 5), one_pass(x, [], 5, seed=0))
    assert one_pass(x, [], 1)[0] == np.random.default_rng(0).integers(40)


@pytest.mark.parametrize("path", ["pruned", "one_pass"])
def test_never_picks_labeled_with_the_budget_above_the_pool(path, monkeypatch):
    if path == "one_pass":
        monkeypatch.setattr(_kc, "ONE_PASS_MAX_ELEMENTS", 1 << 21)
    x = np.random.default_rng(3).standard_normal((10, 3))
    picks = k_center_greedy(x, [2, 5], 100)
    assert sorted(picks.tolist()) == [0, 1, 3, 4, 6, 7, 8, 9]
    assert picks.tolist() == brute_force_kcenter(x, [2, 5], 8).tolist()


def test_contiguous_1d_features_are_refused_on_the_pruned_path():
    with pytest.raises(ValueError, match="2-D"):
        k_center_greedy(np.zeros(30), [], 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pruned_equals_one_pass_through_the_duplicates(dtype):
    """Picking every frame of a pool of copies: after the distinct frames the order is set by distances that
    are 0 up to rounding (some round below 0 and are clamped to 0); the pruned version stores the same values."""
    rng = np.random.default_rng(4)
    base = (rng.standard_normal((6, 16)) * 37.3 + 11.1).astype(dtype)
    frame = rng.permutation(np.repeat(np.arange(6), 5))
    x = base[frame]  # 30 rows, 5 copies of each frame
    for labeled in ([], [0]):
        got = k_center_greedy(x, labeled, 30 - len(labeled), seed=1)
        np.testing.assert_array_equal(got, one_pass(x, labeled, 30 - len(labeled), seed=1))
        first = frame[got[: 6 - len(labeled)]].tolist()  # one copy of each frame not labeled comes first
        assert sorted(first) == sorted(set(range(6)) - set(frame[labeled].tolist()))


def test_pruning_statistics_of_a_first_center():
    """No labeled frame and one pick: the seeded center, then one full pass over every row."""
    x = clustered(50, 4, 3, 15)
    mask = np.ones(50, dtype=bool)
    run = _kc._Pruned(x, x.dtype, np.empty(0, np.int64), mask, 1, 0, _kc.DEFAULT_CHUNK)
    assert run.stats == {"rows_read": 0, "full_passes": 0, "groups_checked": 0}
    assert run.run().tolist() == [int(np.random.default_rng(0).integers(50))]
    assert run.stats == {"rows_read": 50, "full_passes": 1, "groups_checked": 0}


def test_more_than_1024_labeled_frames():
    """Labeled centers in more than one block of 1024: each candidate's nearest center is found across blocks."""
    x = clustered(1400, 5, 30, 16, spread=0.5)
    labeled = np.random.default_rng(16).choice(1400, size=1100, replace=False)
    want = brute_force_kcenter(x, labeled.tolist(), 40)
    np.testing.assert_array_equal(k_center_greedy(x, labeled, 40), want)
    np.testing.assert_array_equal(one_pass(x, labeled, 40), want)


@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_equals_one_pass_far_from_the_origin_float32(seed):
    """Norms 10^4 times the distances (float32): the rounding of |x|^2 - 2 x.c + |c|^2 is far larger than many
    gaps, so the pruning is only right because its margin covers that rounding (see _rounding_bound)."""
    x = clustered(1500, 16, 20, seed, spread=0.2, offset=3000.0, dtype=np.float32)
    labeled = np.random.default_rng(seed).choice(1500, 30, replace=False)
    with threadpool_limits(1, user_api="blas"):
        np.testing.assert_array_equal(k_center_greedy(x, labeled, 100), one_pass(x, labeled, 100))


def test_pruning_bound_uses_the_distance_between_centers():
    """On a line: the new center +10 is 20 from the labeled -10, so a frame may skip it only when nearer than
    10 to -10. Frame 0.3 (9.7 from +10) must move to +10; then -0.2 (9.8 from -10) is the farthest."""
    x = np.array([[-10.0], [10.0], [0.3], [-0.2]])
    assert k_center_greedy(x, [0], 2).tolist() == [1, 3]
    assert brute_force_kcenter(x, [0], 2).tolist() == [1, 3]


def test_one_pass_reference_negative_budget_is_empty():
    x = np.random.default_rng(2).standard_normal((10, 3))
    assert one_pass(x, [], -2).tolist() == [] and one_pass(x, [1], 0).tolist() == []


def test_one_pass_reference_refuses_non_2d_features():
    for bad in (np.zeros(5), np.zeros((5, 2, 2))):
        with pytest.raises(ValueError, match="features must be 2-D"):
            one_pass(bad, [], 1)


def test_non_finite_features_are_refused_naming_the_row():
    """A NaN latent (a diverged model) used to win the first pick and turn every distance into NaN, so the
    other picks followed index order; both implementations now refuse it."""
    from polypal.sampler.kcenter_torch import k_center_greedy_torch

    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[30, 2] = bad
        for f in (k_center_greedy, lambda *a: k_center_greedy_torch(*a, device="cpu")):
            with pytest.raises(ValueError, match="row 30"):
                f(y, [0, 1], 8)
