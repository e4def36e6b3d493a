"""The built-in strategies, registered once each (name, aliases, needs, fallback, server name).

Adding a strategy: write its function ``fn(info, labeled, available, budget,
seed, gamma) -> Selection`` and ``register`` a ``StrategySpec`` for it; the
server, ``polypal-sim``, the report and ``/info`` pick it up from the registry
(tests/test_registry.py shows a toy strategy served and simulated that way).
"""

from __future__ import annotations

import numpy as np

from polypal.sampler.kcenter import k_center_greedy
from polypal.sampler.registry import REGISTRY, StrategySpec, register
from polypal.sampler.selection import (DIVERSITY, RANDOM, UNCERTAINTY, Selection, _require, top_uncertain,
                                       unc_ta_coreset)


def _random(info, labeled, available, budget, seed, gamma):
    idx = np.random.default_rng(seed).choice(available, size=budget, replace=False)
    return Selection(idx.astype(np.int64), [RANDOM] * budget)


def _uncertainty(info, labeled, available, budget, seed, gamma):
    return Selection(top_uncertain(_require(info, "scores", "uncertainty"), available, budget), [UNCERTAINTY] * budget)


def _coreset(field, name):
    def fn(info, labeled, available, budget, seed, gamma):
        return Selection(k_center_greedy(_require(info, field, name), labeled, budget, seed=seed), [DIVERSITY] * budget)
    return fn


def _unc_ta(info, labeled, available, budget, seed, gamma):
    return unc_ta_coreset(_require(info, "scores", "unc_ta_coreset"), _require(info, "latents", "unc_ta_coreset"),
                          labeled, budget, gamma=gamma, seed=seed)


register(StrategySpec("random", "Random frames (without replacement)", _random, server_name="random"))
register(StrategySpec("uncertainty", "Most uncertain frames by Best-vs-Second-Best (paper eqn 4)", _uncertainty,
                      needs=("scores",), fallback="pca_coreset", server_name="bvsb", aliases=("bvsb",)))
register(StrategySpec("ta_coreset", "Task-aware coreset: k-center greedy on the U-Net bottleneck latents",
                      _coreset("latents", "ta_coreset"), needs=("latents",), fallback="pca_coreset",
                      server_name="ta_coreset"))
register(StrategySpec("pca_coreset", "k-center greedy on PCA features of the raw frames",
                      _coreset("image_features", "pca_coreset"), needs=("image_features",), fallback="random",
                      server_name="pca_coreset"))
register(StrategySpec("unc_ta_coreset", "The paper's method: gamma*B by BvSB, the rest by task-aware coreset",
                      _unc_ta, needs=("scores", "latents"), fallback="pca_coreset", server_name="bvsb_ta_coreset",
                      aliases=("bvsb_ta_coreset",), uses_gamma=True))


def _vaal(info, labeled, available, budget, seed, gamma):
    from polypal.sampler.vaal import vaal_select  # trains its own small networks on the raw frames

    if info.images is None or len(info.images) != info.n:
        raise ValueError("strategy 'vaal' needs the pool's images (PoolInfo.images)")
    if len(labeled) == 0:  # its discriminator learns labeled vs unlabeled: with no labeled frame its scores
        sel = _random(info, labeled, available, budget, seed, gamma)  # are near-constant, a disguised draw
        sel.notes.append("vaal: no labeled frame yet, so a seeded random draw")
        return sel
    return vaal_select(info.images, labeled, budget, seed=seed, steps=int(info.options.get("vaal_steps", 300)))


register(StrategySpec("vaal", "VAAL baseline (Sinha et al. 2019): a VAE + discriminator on the raw frames", _vaal,
                      needs=("images",)))

# the built-in strategies that select from arrays alone (VAAL trains networks on the images)
STRATEGIES = tuple(n for n, s in REGISTRY.items() if "images" not in s.needs)
