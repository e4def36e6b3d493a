import numpy as np
import pytest

from polypal.errors import EmptyPoolError
from polypal.sampler import STRATEGIES, PoolInfo, pca_features, select, top_uncertain, unc_ta_coreset


def make_info(n=200, d=16, seed=0, with_features=True):
    rng = np.random.default_rng(seed)
    return PoolInfo(
        n=n, scores=rng.random(n), latents=rng.standard_normal((n, d)).astype(np.float32),
        image_features=rng.standard_normal((n, 8)).astype(np.float32) if with_features else None,
    )


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_exactly_b_new_unique_indices(name, seed):
    info = make_info(seed=seed)
    labeled = np.random.default_rng(seed).choice(200, 30, replace=False)
    sel = select(name, info, labeled, 37, seed=seed)
    idx = sel.indices.tolist()
    assert len(idx) == 37 and len(set(idx)) == 37
    assert not set(idx) & set(labeled.tolist())
    assert all(0 <= i < 200 for i in idx)
    assert len(sel.picked_by) == 37


@pytest.mark.parametrize("name", STRATEGIES)
def test_deterministic(name):
    info = make_info()
    a = select(name, info, [1, 2, 3], 20, seed=4).indices
    b = select(name, info, [1, 2, 3], 20, seed=4).indices
    np.testing.assert_array_equal(a, b)


def test_random_is_without_replacement_and_seed_dependent():
    info = PoolInfo(n=50)
    a = select("random", info, [], 50, seed=0).indices
    assert sorted(a.tolist()) == list(range(50))
    assert select("random", info, [], 10, seed=0).indices.tolist() != select("random", info, [], 10, seed=1).indices.tolist()


def test_uncertainty_takes_top_scores():
    info = PoolInfo(n=6, scores=np.array([0.1, 0.9, 0.5, 0.95, 0.2, 0.9]))
    sel = select("uncertainty", info, [3], 2)
    assert sel.indices.tolist() == [1, 5]  # 3 is labeled; 1 and 5 tie at 0.9: lower index first


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gamma_extremes_equal_pure_strategies(seed):
    info = make_info(seed=seed)
    labeled = np.arange(0, 200, 9)
    ta = select("ta_coreset", info, labeled, 30, seed=seed)
    unc = select("uncertainty", info, labeled, 30, seed=seed)
    g0 = select("unc_ta_coreset", info, labeled, 30, seed=seed, gamma=0.0)
    g1 = select("unc_ta_coreset", info, labeled, 30, seed=seed, gamma=1.0)
    np.testing.assert_array_equal(g0.indices, ta.indices)
    np.testing.assert_array_equal(g1.indices, unc.indices)
    assert set(g0.picked_by) == {"diversity"} and set(g1.picked_by) == {"uncertainty"}


def test_algorithm1_split_and_refill():
    # Make uncertainty and k-center agree on several frames, so overlaps must be refilled.
    n = 100
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((n, 4)) * 0.01
    far = np.arange(10)
    latents[far] += rng.standard_normal((10, 4)) * 10  # outliers: k-center's first picks
    scores = rng.random(n) * 0.1
    scores[far] = 1.0  # ... and the most uncertain too
    sel = unc_ta_coreset(scores, latents, labeled=[50], budget=10, gamma=0.5)
    assert len(sel.indices) == 10 and len(set(sel.indices.tolist())) == 10
    assert 50 not in sel.indices
    assert "both" in sel.picked_by  # at least one frame picked by both samplers
    # the first B_u = 5 are the five most uncertain (ties by index: 0..4)
    assert sel.indices[:5].tolist() == [0, 1, 2, 3, 4]
    assert sel.picked_by[:5] == ["uncertainty"] * 5 or "both" in sel.picked_by[:5]
    counts = {k: sel.picked_by.count(k) for k in set(sel.picked_by)}
    assert sum(counts.values()) == 10


def test_gamma_half_counts():
    info = make_info(seed=3)
    sel = select("unc_ta_coreset", info, [], 10, gamma=0.5, seed=3)
    assert len(sel.indices) == 10
    unc_like = sum(p in ("uncertainty", "both") for p in sel.picked_by)
    assert unc_like >= 5


def test_pool_smaller_than_budget_returns_all_with_note():
    info = make_info(n=12)
    sel = select("ta_coreset", info, list(range(5)), 50)
    assert sorted(sel.indices.tolist()) == list(range(5, 12))
    assert sel.notes and "only 7" in sel.notes[0]


def test_empty_pool_raises():
    with pytest.raises(EmptyPoolError, match="no unlabeled"):
        select("random", PoolInfo(n=4), [0, 1, 2, 3], 2)


def test_missing_model_outputs_is_a_clear_error():
    with pytest.raises(ValueError, match="needs latents"):
        select("ta_coreset", PoolInfo(n=10), [], 2)
    with pytest.raises(ValueError, match="unknown strategy"):
        select("nope", PoolInfo(n=10), [], 2)


def test_pca_features_dimension():
    imgs = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    f = pca_features(imgs)
    assert f.shape == (20, 20)  # min(512, N, pixels)
    np.testing.assert_allclose(f, pca_features(imgs))


def test_top_uncertain_k_zero_or_negative_is_empty():
    scores = np.array([0.3, 0.9, 0.1])
    assert top_uncertain(scores, [0, 1, 2], 0).tolist() == []
    assert top_uncertain(scores, [0, 1, 2], -1).tolist() == []
    assert top_uncertain(scores, [2, 0, 1], 2).tolist() == [1, 0]  # candidate order does not matter


@pytest.mark.parametrize("bad", [[-1], [0, 200], [-2, 3], [0, 250]])
def test_labeled_outside_the_universe_is_refused(bad):
    with pytest.raises(ValueError, match="labeled indices"):
        select("random", make_info(), bad, 3)


def test_budget_below_one_is_refused():
    for b in (0, -3):
        with pytest.raises(ValueError, match="budget must be >= 1"):
            select("random", make_info(), [], b)


def test_unc_ta_coreset_default_seed_is_zero():
    info = make_info(n=40)
    a = unc_ta_coreset(info.scores, info.latents, [], 7)
    b = unc_ta_coreset(info.scores, info.latents, [], 7, gamma=0.5, seed=0)
    assert a.indices.tolist() == b.indices.tolist()


def test_pca_features_are_in_pixel_units():
    """Pixels scaled to [0, 1] before PCA: two frames one full-scale pixel apart are 1.0 apart."""
    imgs = np.zeros((2, 4, 4, 3), np.uint8)
    imgs[1, 0, 0, 0] = 255
    f = pca_features(imgs)
    assert f.shape == (2, 2)
    assert np.linalg.norm(f[0] - f[1]) == pytest.approx(1.0, abs=1e-5)
    # more frames than pixels: the dimension is the pixel count
    many = np.random.default_rng(1).integers(0, 255, (30, 2, 2, 3), dtype=np.uint8)
    assert pca_features(many).shape == (30, 12)


@pytest.mark.parametrize("attr", ["scores", "latents", "image_features"])
def test_model_outputs_of_the_wrong_length_are_refused(attr):
    name = {"scores": "uncertainty", "latents": "ta_coreset", "image_features": "pca_coreset"}[attr]
    for rows in (29, 31):
        info = make_info(n=30)
        full = getattr(make_info(n=31), attr)
        setattr(info, attr, full[:rows])
        with pytest.raises(ValueError, match=f"{attr} has {rows} rows for a universe of 30"):
            select(name, info, [], 3)


def test_pca_features_512_dims_and_seeded():
    """The paper's 512 dimensions when N and the pixel count allow; sklearn's randomized solver (used at
    this size) is seeded, default seed 0."""
    imgs = np.random.default_rng(0).integers(0, 255, (1000, 16, 16, 3), dtype=np.uint8)
    f = pca_features(imgs)
    assert f.shape == (1000, 512)
    np.testing.assert_array_equal(f, pca_features(imgs, seed=0))


@pytest.mark.parametrize("gamma", [-0.1, 1.1, float("nan")])
def test_gamma_outside_unit_interval_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma must be in"):
        select("unc_ta_coreset", make_info(), [], 5, gamma=gamma)


@pytest.mark.parametrize("name", STRATEGIES)
def test_select_default_seed_is_zero(name):
    info = make_info(n=60)
    assert select(name, info, [], 6).indices.tolist() == select(name, info, [], 6, seed=0).indices.tolist()


def test_each_coreset_uses_its_own_features():
    from polypal.sampler import k_center_greedy

    info = make_info(n=50)
    lab = [3, 9]
    pca = select("pca_coreset", PoolInfo(n=50, image_features=info.image_features), lab, 6)
    np.testing.assert_array_equal(pca.indices, k_center_greedy(info.image_features, lab, 6))
    assert select("pca_coreset", info, lab, 6).indices.tolist() == pca.indices.tolist()  # latents ignored
    ta = select("ta_coreset", PoolInfo(n=50, latents=info.latents), lab, 6)
    np.testing.assert_array_equal(ta.indices, k_center_greedy(info.latents, lab, 6))
    assert ta.indices.tolist() != pca.indices.tolist()


# ------------------------------------------------------------------ the registry's declarations (mutation survivors)


def test_needs_model_follows_the_declared_needs():
    """A strategy needs a model when it reads scores or latents; what the server's stale-plan check relies on."""
    from polypal.sampler import REGISTRY, StrategySpec

    want = {"random": False, "uncertainty": True, "ta_coreset": True, "pca_coreset": False, "unc_ta_coreset": True,
            "vaal": False}
    assert {n: s.needs_model for n, s in REGISTRY.items() if n in want} == want
    assert StrategySpec("t", "t", len, needs=("scores", "latents")).needs_model is True
    assert StrategySpec("t", "t", len, needs=()).needs_model is False


def test_specs_are_frozen():
    import dataclasses

    from polypal.sampler import REGISTRY

    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY["random"].name = "other"


def test_name_collisions_are_refused_whatever_the_order_and_re_registering_is_not():
    from polypal.sampler import REGISTRY, StrategySpec, register, strategies

    before = dict(REGISTRY)
    # an existing strategy's server name, alias or name, taken by a name sorting after and before it
    for spec in (StrategySpec("zzz", "x", strategies._random, server_name="bvsb"),
                 StrategySpec("aaa", "x", strategies._random, server_name="bvsb"),
                 StrategySpec("zzz", "x", strategies._random, aliases=("random",)),
                 StrategySpec("aaa", "x", strategies._random, aliases=("unc_ta_coreset",))):
        with pytest.raises(ValueError, match="is taken by"):
            register(spec)
    assert REGISTRY == before
    assert register(REGISTRY["random"]) is before["random"]  # the same spec again: allowed, nothing changes
    assert REGISTRY == before


def test_only_unc_ta_coreset_uses_gamma():
    """``uses_gamma`` (what polypal-sim and the report read) is true exactly for the strategies whose picks
    depend on gamma."""
    from polypal.sampler import REGISTRY

    info = make_info(n=60)
    for name in STRATEGIES:
        a = select(name, info, [0, 1, 2], 8, gamma=0.0).indices.tolist()
        b = select(name, info, [0, 1, 2], 8, gamma=1.0).indices.tolist()
        assert (a != b) == REGISTRY[name].uses_gamma, name
    assert [n for n, s in REGISTRY.items() if s.uses_gamma] == ["unc_ta_coreset"]


def _frames(n):
    return np.random.default_rng(0).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("rows", [None, 9, 11])
def test_vaal_needs_one_image_per_frame(rows):
    info = PoolInfo(n=10, images=None if rows is None else _frames(rows), options={"vaal_steps": 1})
    with pytest.raises(ValueError, match="strategy 'vaal' needs the pool's images"):
        select("vaal", info, [0, 1], 3)


def test_vaal_keeps_the_strategy_contract():
    info = PoolInfo(n=10, images=_frames(10), options={"vaal_steps": 1})
    sel = select("vaal", info, [0, 1], 3, seed=2)
    idx = sel.indices.tolist()
    assert len(idx) == 3 and len(set(idx)) == 3 and not {0, 1} & set(idx) and all(2 <= i < 10 for i in idx)
    assert sel.picked_by == ["vaal"] * 3
    assert select("vaal", info, [0, 1], 3, seed=2).indices.tolist() == idx


def test_vaal_with_no_labeled_frame_says_it_draws_at_random():
    """VAAL's discriminator learns labeled against unlabeled: with no labeled frame its scores were
    near-constant (about 0.49) and its picks a random draw in disguise. Now it is a seeded random draw
    that says so."""
    info = PoolInfo(n=10, images=_frames(10), options={"vaal_steps": 1})
    sel = select("vaal", info, [], 3, seed=2)
    assert sel.picked_by == ["random"] * 3 and any("no labeled frame" in n for n in sel.notes)
    assert sel.indices.tolist() == select("random", info, [], 3, seed=2).indices.tolist()
