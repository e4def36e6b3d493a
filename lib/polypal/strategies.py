"""Selection strategies under one interface, usable by name.

Every strategy answers the same question: given a universe of N frames, the
indices already labeled, and what the learner knows about each frame, which
``budget`` new frames should be labeled next? Each returns a Selection with
exactly ``min(budget, unlabeled)`` new indices, disjoint from the labeled set,
without duplicates, and the sampler that chose each one.

The live server and the offline simulation both call ``select``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import EmptyPoolError
from .kcenter import k_center_greedy

UNCERTAINTY, DIVERSITY, BOTH, RANDOM = "uncertainty", "diversity", "both", "random"


@dataclass
class PoolInfo:
    """What strategies may use about the N frames of the universe (any may be None)."""

    n: int
    scores: np.ndarray | None = None  # (N,) BvSB image scores from the current model
    latents: np.ndarray | None = None  # (N, d) learner bottleneck latents
    image_features: np.ndarray | None = None  # (N, k) e.g. PCA of raw images


@dataclass
class Selection:
    indices: np.ndarray  # picked universe indices, in pick order
    picked_by: list[str]  # per pick: "uncertainty", "diversity", "both" or "random"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)


def _unlabeled(n: int, labeled) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(labeled, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def _require(info: PoolInfo, attr: str, strategy: str) -> np.ndarray:
    v = getattr(info, attr)
    if v is None:
        raise ValueError(f"strategy {strategy!r} needs {attr} from a trained model, but none were given")
    if len(v) != info.n:
        raise ValueError(f"strategy {strategy!r}: {attr} has {len(v)} rows for a universe of {info.n}")
    return np.asarray(v)


def top_uncertain(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k candidates with the highest score; ties go to the lower index."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    cand = np.sort(np.asarray(candidates, dtype=np.int64))
    order = np.argsort(-scores[cand], kind="stable")
    return cand[order[:k]]


def pca_features(images: np.ndarray, n_components: int = 512, seed: int = 0) -> np.ndarray:
    """PCA-Coreset's features: raw (resized) images flattened, projected to at most 512 dims.

    Uses sklearn's PCA; the dimension is min(n_components, N, pixels).
    """
    from sklearn.decomposition import PCA

    x = np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0
    k = int(min(n_components, x.shape[0], x.shape[1]))
    return PCA(n_components=k, random_state=seed, svd_solver="auto").fit_transform(x).astype(np.float32)


def unc_ta_coreset(scores, latents, labeled, budget: int, gamma: float = 0.5, seed: int = 0) -> Selection:
    """Algorithm 1: B_u = round(gamma*B) most uncertain + B_d = B - B_u by k-center.

    Both samplers pick from what is still unlabeled and unpicked; k-center's
    centers are the labeled set plus everything picked in earlier rounds. A
    frame chosen by both counts once ("both"), and the shortfall is filled by
    repeating the same split on what is missing until exactly B are chosen.

    Rounding: B_u is ``round(gamma * r)`` for the r frames still missing in
    each round, with Python's rounding (exact halves go to the even integer).
    With gamma = 0.5: B_u = 2 for r = 5 but 4 for r = 7, 2 for r = 3, 0 for
    r = 1 (so a one-frame refill always goes to k-center); gamma = 0.25, 0.75
    round 2.5 to 2 and 4.5 to 4 alike. The paper's budgets (100, 40) never
    round; refill rounds can. tests/test_algorithm1_reference.py holds the
    table and an independent reference implementation.

    Pick order: each round's uncertainty picks (most uncertain first, ties to
    the lower index), then its k-center picks not already taken (greedy order,
    ties to the lower index).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    n = len(scores)
    labeled = np.asarray(labeled, dtype=np.int64)
    available = _unlabeled(n, labeled)
    budget = int(min(budget, len(available)))
    chosen: list[int] = []
    by: dict[int, str] = {}
    while len(chosen) < budget:
        need = budget - len(chosen)
        b_u = int(round(gamma * need))
        b_d = need - b_u
        cand = np.setdiff1d(available, np.asarray(chosen, dtype=np.int64), assume_unique=True)
        u = top_uncertain(scores, cand, b_u)
        centers = np.concatenate([labeled, np.asarray(chosen, dtype=np.int64)])
        d = k_center_greedy(latents, centers, b_d, candidates=cand, seed=seed)
        u_set = set(u.tolist())
        for j in u.tolist():
            chosen.append(j)
            by[j] = UNCERTAINTY
        for j in d.tolist():
            if j in u_set:
                by[j] = BOTH
            else:
                chosen.append(j)
                by[j] = DIVERSITY
    idx = np.asarray(chosen, dtype=np.int64)
    return Selection(idx, [by[j] for j in chosen])


def select(
    name: str,
    info: PoolInfo,
    labeled,
    budget: int,
    seed: int = 0,
    gamma: float = 0.5,
) -> Selection:
    """Pick ``budget`` new frames with strategy ``name`` (a registered name or alias).

    Raises EmptyPoolError when nothing is unlabeled. A pool smaller than the
    budget gives the whole pool, with a note saying so.
    """
    resolve(name)  # unknown names raise here, before any work
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    if len(labeled) and (labeled.min() < 0 or labeled.max() >= info.n):
        raise ValueError(f"labeled indices must lie in [0, {info.n})")
    available = _unlabeled(info.n, labeled)
    if len(available) == 0:
        raise EmptyPoolError(f"no unlabeled frames left to select from (all {info.n} are labeled)")
    notes = []
    if budget > len(available):
        notes.append(f"pool has only {len(available)} unlabeled frames (< budget {budget}): returning all of them")
        budget = len(available)

    spec = resolve(name)
    sel = spec.fn(info, labeled, available, budget, seed, gamma)
    sel.notes = notes + sel.notes
    return sel


# -- the registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategySpec:
    """One selection strategy, declared once; the server, polypal-sim and /info read it from REGISTRY.

    ``fn(info, labeled, available, budget, seed, gamma) -> Selection`` picks from ``available``
    (unlabeled indices); ``needs`` are PoolInfo fields it uses; ``fallback`` is the strategy used when
    they are missing (the live server before a model exists); ``server_name`` is its name on
    ``/activelearning/<name>`` (None: offline only); ``aliases`` are other accepted names.
    """

    name: str
    description: str
    fn: Callable
    needs: tuple[str, ...] = ()
    fallback: str | None = None
    server_name: str | None = None
    aliases: tuple[str, ...] = ()
    uses_gamma: bool = False  # takes the uncertainty share gamma

    @property
    def needs_model(self) -> bool:
        return bool({"scores", "latents"} & set(self.needs))


REGISTRY: dict[str, StrategySpec] = {}


def register(spec: StrategySpec) -> StrategySpec:
    """Add a strategy (its name and aliases must be new)."""
    for n in (spec.name, *spec.aliases, *((spec.server_name,) if spec.server_name else ())):
        other = next((s for s in REGISTRY.values() if n in (s.name, *s.aliases, s.server_name)), None)
        if other is not None and other.name != spec.name:
            raise ValueError(f"strategy name {n!r} is taken by {other.name!r}")
    REGISTRY[spec.name] = spec
    return spec


def resolve(name: str) -> StrategySpec:
    """The strategy of a name, alias or server name."""
    for s in REGISTRY.values():
        if name in (s.name, *s.aliases) or name == s.server_name:
            return s
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(REGISTRY)}")


def server_strategies() -> dict[str, StrategySpec]:
    """Server name -> strategy, for every strategy the live server offers."""
    return {s.server_name: s for s in REGISTRY.values() if s.server_name}


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
STRATEGIES = tuple(REGISTRY)  # the built-in strategies, in this order
