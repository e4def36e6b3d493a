"""The Sampler: which frames to label next (the paper's second box).

- ``uncertainty``: Best-vs-Second-Best per pixel and its image-level aggregations (the scorers);
- ``kcenter``: exact k-center greedy (Algorithm 2);
- ``selection``: ``PoolInfo`` (what a strategy may use), ``Selection``, Algorithm 1 (``unc_ta_coreset``);
- ``registry``: every strategy declared once (``REGISTRY``, ``register``, ``resolve``) and ``select``;
- ``strategies``: the built-in strategies; ``vaal``: the VAAL baseline.

Plain functions on arrays: no server, no files.
"""

from polypal.sampler.kcenter import k_center_greedy
from polypal.sampler.registry import REGISTRY, StrategySpec, register, resolve, select, server_strategies
from polypal.sampler.selection import (BOTH, DIVERSITY, RANDOM, UNCERTAINTY, PoolInfo, Selection, pca_features,
                                       top_uncertain, unc_ta_coreset)
from polypal.sampler.strategies import STRATEGIES
from polypal.sampler.uncertainty import AGGREGATIONS, BvSB, aggregate, bvsb_binary, bvsb_multiclass, image_scores

__all__ = ["AGGREGATIONS", "BOTH", "DIVERSITY", "RANDOM", "REGISTRY", "STRATEGIES", "UNCERTAINTY", "BvSB", "PoolInfo",
           "Selection", "StrategySpec", "aggregate", "bvsb_binary", "bvsb_multiclass", "image_scores",
           "k_center_greedy", "pca_features", "register", "resolve", "select", "server_strategies", "top_uncertain",
           "unc_ta_coreset"]
