"""The torch k-center path (for a GPU) against the numpy one, here on the CPU."""

import numpy as np
import pytest

from polypal.sampler import k_center_greedy
from polypal.sampler.kcenter_torch import k_center_greedy_torch


@pytest.mark.parametrize("n_labeled", [0, 1, 15])
@pytest.mark.parametrize("clustered", [False, True])
def test_same_picks_as_numpy_on_float64(n_labeled, clustered):
    rng = np.random.default_rng(n_labeled + 10 * clustered)
    x = rng.normal(size=(600, 24))
    if clustered:
        x = x * 0.05 + rng.normal(size=(12, 24))[rng.integers(12, size=600)] * 3
    labeled = rng.choice(600, size=n_labeled, replace=False)
    want = k_center_greedy(x, labeled, 40, seed=3)
    got = k_center_greedy_torch(x, labeled, 40, seed=3, device="cpu", chunk=128)  # several row chunks
    np.testing.assert_array_equal(got, want)


def test_candidates_ties_and_budget_like_numpy():
    x = np.repeat(np.arange(10, dtype=np.float64)[:, None], 3, axis=1)  # points on a line
    x = np.concatenate([x, x])  # every point twice: exact ties, the lower index must win
    cand = np.arange(0, 20, 2)
    np.testing.assert_array_equal(k_center_greedy_torch(x, [0], 5, candidates=cand, device="cpu"),
                                  k_center_greedy(x, [0], 5, candidates=cand))
    assert len(k_center_greedy_torch(x, [], 100, device="cpu")) == 20  # capped at the pool
    assert len(k_center_greedy_torch(x, np.arange(20), 3, device="cpu")) == 0
