"""What a strategy sees and returns, and the selection algorithms themselves.

``PoolInfo`` is what the learner knows about the N frames of a universe;
``Selection`` is a strategy's answer. The algorithms are plain functions on
arrays: top-k by score, PCA features, and the paper's Algorithm 1
(``unc_ta_coreset``); k-center greedy (Algorithm 2) is in ``kcenter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from polypal.sampler.kcenter import k_center_greedy

UNCERTAINTY, DIVERSITY, BOTH, RANDOM = "uncertainty", "diversity", "both", "random"


@dataclass
class PoolInfo:
    """What strategies may use about the N frames of the universe (any may be None)."""

    n: int
    scores: np.ndarray | None = None  # (N,) BvSB image scores from the current model
    latents: np.ndarray | None = None  # (N, d) learner bottleneck latents
    image_features: np.ndarray | None = None  # (N, k) e.g. PCA of raw images
    images: np.ndarray | None = None  # (N, S, S, 3) uint8 frames, for strategies that train on them (VAAL)
    options: dict = field(default_factory=dict)  # strategy-specific settings, e.g. {"vaal_steps": 300}


@dataclass
class Selection:
    indices: np.ndarray  # picked universe indices, in pick order
    picked_by: list[str]  # per pick: "uncertainty", "diversity", "both" or "random"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)


def serving_order(sel: Selection, seed: int = 0) -> Selection:
    """The same picks, ordered so that every first m of them hold each sampler's share of the batch to
    within one frame (uncertainty's picks, "both" counted with them, and k-center's, each in its own pick
    order). The live server serves a batch from its start and plans a new one when a newer model is
    scored: in pick order (uncertainty first) a batch cut short by retraining was labelled almost only by
    uncertainty, whatever gamma said. Which sampler leads is drawn (seeded) with the probability of its
    share: a fixed tie-break still gave uncertainty every first frame, so training after every label
    still served uncertainty alone (a probe of the live cycle). Position m goes to uncertainty when
    floor(share * m + phase) steps up, phase ~ U[0, 1). A selection of one kind is returned unchanged."""
    by = sel.picked_by
    u = [k for k, p in enumerate(by) if p in (UNCERTAINTY, BOTH)]
    d = [k for k, p in enumerate(by) if p == DIVERSITY]
    if not u or not d or len(u) + len(d) != len(by):
        return sel
    share = len(u) / len(by)
    phase = float(np.random.default_rng(seed).random())
    order, iu, idv = [], 0, 0
    for m in range(1, len(by) + 1):
        if int(np.floor(share * m + phase)) > iu and iu < len(u) or idv == len(d):
            order.append(u[iu])
            iu += 1
        else:
            order.append(d[idv])
            idv += 1
    return Selection(sel.indices[order], [by[k] for k in order], list(sel.notes))


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
