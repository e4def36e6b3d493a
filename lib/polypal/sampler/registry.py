"""The strategy registry: each strategy declared once, and ``select`` to run one by name.

Every strategy answers the same question: given a universe of N frames, the
indices already labeled, and what the learner knows about each frame, which
``budget`` new frames should be labeled next? Each returns a Selection with
exactly ``min(budget, unlabeled)`` new indices, disjoint from the labeled set,
without duplicates, and the sampler that chose each one.

The live server, ``polypal-sim``, the report and ``/info`` all read
``REGISTRY``; the built-in strategies register themselves in
``polypal.sampler.strategies`` (imported at the end of this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from polypal.errors import EmptyPoolError
from polypal.sampler.selection import PoolInfo, Selection, _unlabeled

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


from polypal.sampler import strategies as _builtin  # noqa: E402,F401 - registers the built-in strategies
