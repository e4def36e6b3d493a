import numpy as np
import pytest

from polypal.sampler.kcenter import k_center_greedy, min_sq_dists


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
