"""Adding a strategy is one registration: served by the live planner and simulated, with no other edit."""

import numpy as np
import pytest

from conftest import write_dataset
from polypal.sampler import strategies
from polypal.serving import ActiveLearningState
from polypal.sampler import DIVERSITY, REGISTRY, Selection, StrategySpec, register, resolve, server_strategies


@pytest.fixture
def toy():
    """A toy strategy: the unlabeled frames with the largest latent norm."""

    def pick(info, labeled, available, budget, seed, gamma):
        norm = np.linalg.norm(info.latents[available], axis=1)
        idx = available[np.argsort(-norm, kind="stable")[:budget]]
        return Selection(idx.astype(np.int64), [DIVERSITY] * budget)

    spec = register(StrategySpec("toy_norm", "largest latent norm", pick, needs=("latents",), fallback="random",
                                 server_name="toy", aliases=("toynorm",)))
    yield spec
    REGISTRY.pop("toy_norm")


def test_registered_strategy_is_served_by_the_live_planner(tmp_path, toy):
    st = ActiveLearningState(tmp_path / "st", batch_size=3, lease_seconds=100)
    ids = [f"f{i:02d}" for i in range(12)]
    lat = np.zeros((12, 4), np.float32)
    lat[:, 0] = np.arange(12)  # f11 has the largest norm
    s = st.next_frame("toy", "a", ids, set(), "none")  # no model yet: the declared fallback (random)
    assert s.model_version == "fallback:random" and "fell back to random" in s.note
    st.add_scores("v1", ids, np.zeros(12), lat)
    s = st.next_frame("toy", "b", ids, set(), "v1")  # the model is scored: the fallback plan is replaced
    assert s.id == "f11" and s.cycle == 2 and s.model_version == "v1"
    assert [r[1] for r in st.current_plan("toy")["rows"]] == ["f11", "f10", "f09"]
    assert "toy" in server_strategies() and resolve("toynorm") is toy


def test_registered_strategy_is_simulated(tmp_path, toy):
    from polypal.data import load_folder
    from polypal.learner import get_profile
    from polypal.experiments.simulate import RunSpec, run

    fs = load_folder(write_dataset(tmp_path / "d", 30, seed=4), size=32)
    pool, val, test = fs.subset(range(0, 20)), fs.subset(range(20, 25)), fs.subset(range(25, 30))
    recs = run(pool, val, test, RunSpec.parse("toynorm"), get_profile("smoke"), seed=0, n_initial=4, budget=3,
               cycles=1, out_file=tmp_path / "toy.jsonl", device="cpu")
    assert [r["n_labeled"] for r in recs] == [4, 7]
    assert len(recs[0]["selected"]) == 3


def test_names_are_unique():
    with pytest.raises(ValueError, match="taken"):
        register(StrategySpec("other", "x", strategies._random, server_name="bvsb"))
    assert "other" not in REGISTRY


def test_an_alias_runs_under_the_strategys_name():
    """polypal-sim --strategies bvsb_ta_coreset wrote bvsb_ta_coreset@g0.5-seed0.jsonl beside unc_ta_coreset's,
    and the report showed the same strategy twice."""
    from polypal.experiments.simulate import RunSpec

    assert RunSpec.parse("bvsb_ta_coreset:mean:0.25") == RunSpec.parse("unc_ta_coreset:mean:0.25")
    assert RunSpec.parse("bvsb_ta_coreset").label == "unc_ta_coreset@g0.5"
    assert RunSpec.parse("bvsb:topk").label == "uncertainty+topk"
