"""Property-based tests (Hypothesis): the contract every strategy keeps, on any pool.

For every strategy, any universe size, labeled set, budget, gamma and seed:
exactly min(B, unlabeled) picks, all inside the universe, none labeled, no
duplicates, one sampler name per pick, and the same picks for the same seed.
Latents and scores are drawn with ties and duplicates on purpose.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polypal.errors import EmptyPoolError
from polypal.sampler import PoolInfo, STRATEGIES, k_center_greedy, select

SETTINGS = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SAMPLERS = {
    "random": {"random"},
    "uncertainty": {"uncertainty"},
    "ta_coreset": {"diversity"},
    "pca_coreset": {"diversity"},
    "unc_ta_coreset": {"uncertainty", "diversity", "both"},
}


@st.composite
def pools(draw):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    levels = draw(st.sampled_from([2, 5, 1000]))  # few levels: many ties and duplicate latents
    latents = rng.integers(0, levels, size=(n, d)).astype(draw(st.sampled_from([np.float32, np.float64])))
    scores = rng.integers(0, levels, size=n) / levels
    feats = rng.integers(0, levels, size=(n, 3)).astype(np.float32)
    labeled = draw(st.lists(st.integers(0, n - 1), max_size=n))  # may repeat, may cover everything
    budget = draw(st.integers(1, n + 3))
    gamma = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0.0, 1.0))
    return PoolInfo(n=n, scores=scores, latents=latents, image_features=feats), labeled, budget, gamma, seed


@pytest.mark.parametrize("name", STRATEGIES)
@SETTINGS
@given(pool=pools())
def test_strategy_contract(name, pool):
    info, labeled, budget, gamma, seed = pool
    unlabeled = sorted(set(range(info.n)) - set(labeled))
    if not unlabeled:
        with pytest.raises(EmptyPoolError):
            select(name, info, labeled, budget, seed=seed, gamma=gamma)
        return
    sel = select(name, info, labeled, budget, seed=seed, gamma=gamma)
    idx = sel.indices.tolist()
    assert len(idx) == min(budget, len(unlabeled))
    assert len(set(idx)) == len(idx)
    assert set(idx) <= set(unlabeled)
    assert len(sel.picked_by) == len(idx) and set(sel.picked_by) <= SAMPLERS[name]
    assert bool(sel.notes) == (budget > len(unlabeled))
    again = select(name, info, list(reversed(labeled)), budget, seed=seed, gamma=gamma)
    assert again.indices.tolist() == idx and again.picked_by == sel.picked_by


@SETTINGS
@given(pool=pools())
def test_unc_ta_coreset_gamma_extremes_are_the_pure_strategies(pool):
    info, labeled, budget, _, seed = pool
    if not set(range(info.n)) - set(labeled):
        return
    g0 = select("unc_ta_coreset", info, labeled, budget, seed=seed, gamma=0.0)
    g1 = select("unc_ta_coreset", info, labeled, budget, seed=seed, gamma=1.0)
    assert g0.indices.tolist() == select("ta_coreset", info, labeled, budget, seed=seed).indices.tolist()
    assert g1.indices.tolist() == select("uncertainty", info, labeled, budget, seed=seed).indices.tolist()


@SETTINGS
@given(pool=pools())
def test_uncertainty_picks_dominate_the_rest(pool):
    """Every frame uncertainty leaves out scores no higher than one it picked."""
    info, labeled, budget, _, seed = pool
    left = sorted(set(range(info.n)) - set(labeled))
    if not left:
        return
    idx = select("uncertainty", info, labeled, budget, seed=seed).indices.tolist()
    rest = sorted(set(left) - set(idx))
    if rest:
        assert info.scores[idx].min() >= info.scores[rest].max()
    assert list(info.scores[idx]) == sorted(info.scores[idx], reverse=True)


@SETTINGS
@given(pool=pools())
def test_kcenter_each_pick_is_a_farthest_point(pool):
    """Greedy invariant: when picked, each frame was at the largest distance to its nearest center."""
    info, labeled, budget, _, seed = pool
    x = info.latents.astype(np.float64)
    labeled = sorted(set(labeled))
    picks = k_center_greedy(x, labeled, budget, seed=seed).tolist()
    centers = list(labeled)
    left = [i for i in range(info.n) if i not in set(labeled)]
    assert len(picks) == min(budget, len(left))
    for j in picks:
        if centers:
            md = {i: min(((x[i] - x[c]) ** 2).sum() for c in centers) for i in left}
            assert md[j] == max(md.values())
            assert j == min(i for i in left if md[i] == md[j])  # lowest index among the farthest
        centers.append(j)
        left.remove(j)
