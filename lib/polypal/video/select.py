"""One frame per group of near-duplicates, informative frames first: a pure function for the server
and ``polypal-sim``.

``dedupe_candidates(ids, groups, flagged, representatives, labeled)`` takes
frame ids in the order a strategy would serve them (a planned batch, a ranked
pool, or the pool in any order) and returns them

- with at most one frame per group: the group's representative when it is
  among ``ids`` and not flagged, else the group's first unflagged id in
  ``ids``, else its first id, placed at the position of the group's
  first-ranked member;
- in tiers, each keeping the input order:
  0. representatives and frames of no group, not flagged;
  1. other unflagged frames (their group's representative is labeled or not
     in ``ids``);
  2. frames of a group that already holds a labeled frame;
  3. flagged frames (blurred, black, overexposed).

So the first B ids never hold two frames of one group, and a flagged frame or a
second frame of a labeled group only comes when nothing better is left. Ids
not in ``groups`` are their own group (frames that did not come from a video).

``spread_across_videos(ids, video_of, batch_size)`` then caps how many frames
of one video the first ``batch_size`` ids hold (procedure-aware batches).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import numpy as np

TIER_NAMES = ("representative", "non_representative", "group_labeled", "flagged")


def dedupe_tiers(ids: Iterable[str], groups: Mapping[str, str], flagged: Collection[str] = (),
                 representatives: Collection[str] | None = None,
                 labeled: Iterable[str] = ()) -> list[tuple[str, int]]:
    """(id, tier) pairs, one per group, in serving order (see the module docstring)."""
    ids = list(dict.fromkeys(ids))
    flagged = set(flagged)
    reps = set(representatives) if representatives is not None else None
    labeled = set(labeled)
    labeled_groups = {groups.get(i, i) for i in labeled}
    members: dict[str, list[str]] = {}
    for i in ids:
        members.setdefault(groups.get(i, i), []).append(i)
    out: list[tuple[str, int]] = []
    for g, ms in members.items():  # dict order = position of the group's first-ranked member
        rep = [i for i in ms if reps is not None and i in reps and i not in flagged]
        clean = [i for i in ms if i not in flagged]
        pick = (rep or clean or ms)[0]
        if pick in flagged:
            tier = 3
        elif g in labeled_groups and pick not in labeled:
            tier = 2
        elif reps is None or pick in reps or pick not in groups:
            tier = 0
        else:
            tier = 1
        out.append((pick, tier))
    return sorted(out, key=lambda t: t[1])  # stable: input order within a tier


def dedupe_candidates(ids: Iterable[str], groups: Mapping[str, str], flagged: Collection[str] = (),
                      representatives: Collection[str] | None = None, labeled: Iterable[str] = (),
                      max_tier: int = 3) -> list[str]:
    """Ids in serving order, at most one per group (see the module docstring). ``max_tier`` drops
    worse tiers (``max_tier=0``: only clean representatives and ungrouped frames)."""
    return [i for i, t in dedupe_tiers(ids, groups, flagged, representatives, labeled) if t <= max_tier]


def spread_across_videos(ids: Iterable[str], video_of: Mapping[str, str], batch_size: int,
                         max_per_video: int | None = None) -> list[str]:
    """Reorder ranked ids so the first ``batch_size`` take at most ``max_per_video`` frames of one video
    (default: ceil(batch_size / videos among ids)), keeping rank order otherwise. When the cap leaves
    the batch short (too few videos), the best-ranked deferred ids fill it. Ids not in ``video_of``
    (stills) are not capped. Returns every id once."""
    ids = list(dict.fromkeys(ids))
    videos = {video_of[i] for i in ids if i in video_of}
    cap = max_per_video or max(1, -(-batch_size // max(1, len(videos))))
    taken, deferred, count = [], [], {}
    for i in ids:
        v = video_of.get(i)
        if len(taken) < batch_size and (v is None or count.get(v, 0) < cap):
            taken.append(i)
            if v is not None:
                count[v] = count.get(v, 0) + 1
        else:
            deferred.append(i)
    fill = batch_size - len(taken)
    if fill > 0:
        taken += deferred[:fill]
        deferred = deferred[fill:]
    return taken + deferred


def grouped_candidates(names: list[str], labeled_idx, groups: Mapping[str, str], flagged: Collection[str] = (),
                       representatives: Collection[str] | None = None, need: int = 1) -> list[int]:
    """Indices into ``names`` that a strategy may pick from when near-duplicates are grouped: tier 0 of
    ``dedupe_candidates`` (one clean representative per group that holds no label yet, and ungrouped
    frames). When those are fewer than ``need`` (a simulation's budget: every stage gets its labels),
    the next tiers, one at a time (one frame per group; flagged frames last); when those are still too
    few, every unlabeled index."""
    labeled = {names[i] for i in labeled_idx}
    unlabeled = [n for n in names if n not in labeled]
    tiers = dedupe_tiers(unlabeled, groups, flagged, representatives, labeled)
    keep = [i for i, t in tiers if t == 0]
    for tier in (1, 2, 3):
        if len(keep) >= need:
            break
        keep += [i for i, t in tiers if t == tier]
    if len(keep) < need:
        keep = unlabeled
    keep = set(keep)
    return [i for i, n in enumerate(names) if n in keep]


def plan_universe(universe: list[str], labeled: Collection[str], groups: Mapping[str, str],
                  flagged: Collection[str] = (), representatives: Collection[str] | None = None) -> list[str]:
    """The frames a batch may be planned over: every labeled frame (k-center's centers) plus
    ``grouped_candidates`` (one clean representative per group with no label yet; when none is left, the
    next tier), in ``universe`` order.
    A plan over this universe never holds two frames of one group, nor a frame whose group is labeled,
    nor a flagged frame, while such frames are left."""
    labeled = set(labeled)
    lab_idx = [k for k, i in enumerate(universe) if i in labeled]
    keep = set(grouped_candidates(universe, lab_idx, groups, flagged, representatives)) | set(lab_idx)
    return [i for k, i in enumerate(universe) if k in keep]


# -- procedure-aware batches: a cap on how many frames of one video a batch holds ---------------------

CAP_OFF, CAP_AUTO = "off", "auto"


def parse_cap(value) -> int | str:
    """A cap setting (``--conf video_cap`` / ``polypal-sim --video-cap``): 'auto', 'off' or an int >= 1."""
    s = str(value if value is not None else CAP_AUTO).strip().lower()
    if s in (CAP_OFF, CAP_AUTO):
        return s
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"video cap must be 'auto', 'off' or an integer >= 1, got {value!r}")
    return n


def fill_cap(per_video: Mapping, stills: int, budget: int, cap: int) -> int:
    """The smallest cap >= ``cap`` with which the batch can still be filled: sum over videos of
    min(frames available, cap) plus the stills (never capped) reaches ``budget`` (or every frame)."""
    avail = sorted(per_video.values())
    need = min(budget, stills + sum(avail))

    def room(c):
        return stills + sum(min(a, c) for a in avail)

    while room(cap) < need:  # at most max(avail) steps; batches are small
        cap += 1
    return cap


def _sub_info(info, sub: np.ndarray):
    from polypal.sampler import PoolInfo

    def cut(a):
        return None if a is None else a[sub]

    return PoolInfo(n=len(sub), scores=cut(info.scores), latents=cut(info.latents),
                    image_features=cut(info.image_features), images=cut(info.images), options=info.options)


def capped_select(name: str, info, labeled, budget: int, video_of_idx, cap: int | str = CAP_AUTO,
                  seed: int = 0, gamma: float = 0.5):
    """A registered strategy's selection with at most ``cap`` new frames of one video in the batch.

    ``video_of_idx[j]``: the video of universe index j, or None (a still: never capped).
    ``cap``: an int, ``'auto'`` (ceil(budget / videos with unlabeled frames)) or ``'off'``; either
    number is raised to the smallest cap that still fills the batch (``fill_cap``: a pool with too
    few frames outside one video gives a full batch, as even as the pool allows, not a short one).

    Method: run the strategy; accept its picks in pick order up to the first pick whose video is
    already at the cap; then run the strategy again for the shortfall on the universe without the
    unlabeled frames of the videos at the cap, with every accepted pick added to the labeled set (so
    they are k-center's centers and no strategy picks them again, like Algorithm 1's refill); repeat
    until the batch is full. For strategies that pick greedily one frame at a time (uncertainty's
    top-k, k-center greedy) this is exactly the strategy's greedy rule restricted to the videos
    below the cap at each pick; for random it is a uniform draw under the cap; for unc_ta_coreset
    each rerun asks uncertainty for what is left of the batch's round(gamma * B) and k-center for
    the rest, so the batch keeps Algorithm 1's split when the cap binds. When the cap does
    not bind, the result is the strategy's own selection (one run). Every round accepts at least
    one pick, so there are at most (videos that reach the cap) + 1 runs. Deterministic: the same
    inputs and seed give the same selection.

    Returns the strategy's ``Selection`` (indices into the universe, in accepted order) with a note.
    """
    from polypal.sampler import Selection, resolve, select
    from polypal.sampler.selection import BOTH, UNCERTAINTY

    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    vid = list(video_of_idx)
    if len(vid) != info.n:
        raise ValueError(f"video_of_idx has {len(vid)} entries for a universe of {info.n}")
    cap = parse_cap(cap)
    lab = set(labeled.tolist())
    avail = [j for j in range(info.n) if j not in lab]
    per_video: dict = {}
    for j in avail:
        if vid[j] is not None:
            per_video[vid[j]] = per_video.get(vid[j], 0) + 1
    if cap == CAP_OFF or not per_video:
        return select(name, info, labeled, budget, seed=seed, gamma=gamma)
    b = min(int(budget), len(avail))
    asked = -(-b // len(per_video)) if cap == CAP_AUTO else int(cap)
    cap_n = fill_cap(per_video, len(avail) - sum(per_video.values()), b, max(1, asked))
    accepted: list[int] = []
    by: list[str] = []
    count: dict = {}
    full: set = set()
    notes: list[str] = []
    rounds = 0
    split = resolve(name).uses_gamma
    b_u = int(round(gamma * b))  # Algorithm 1's uncertainty share of the whole batch
    g = gamma
    while len(accepted) < b:
        rounds += 1
        if split and rounds > 1:  # the rerun asks each sampler for what it still owes the batch (before,
            # it split the shortfall by gamma again: the uncertainty picks, served first, were accepted
            # and the k-center picks after a capped one dropped, round after round, so that with the
            # cap on, gamma 0.5 gave about 89% uncertainty picks)
            owed = b_u - sum(p in (UNCERTAINTY, BOTH) for p in by)
            g = min(1.0, max(0.0, owed / (b - len(accepted))))
        taken = lab | set(accepted)
        sub = np.asarray([j for j in range(info.n) if j in taken or vid[j] is None or vid[j] not in full],
                         dtype=np.int64)
        sub_lab = np.searchsorted(sub, np.asarray(sorted(taken), dtype=np.int64))
        sel = select(name, _sub_info(info, sub) if len(sub) < info.n else info, sub_lab, b - len(accepted),
                     seed=seed, gamma=g)
        if rounds == 1:
            notes += sel.notes
        for j, pb in zip(sub[sel.indices].tolist(), sel.picked_by):
            v = vid[j]
            if v is not None and count.get(v, 0) >= cap_n:
                full.add(v)
                break
            accepted.append(j)
            by.append(pb)
            if v is not None:
                count[v] = count.get(v, 0) + 1
                if count[v] >= cap_n:
                    full.add(v)
    raised = f" (raised from {asked} to fill the batch)" if cap_n > asked else ""
    notes.append(f"video cap: at most {cap_n} frames per video{raised}; {len(per_video)} videos, "
                 f"{rounds} selection run{'s' if rounds > 1 else ''}")
    return Selection(np.asarray(accepted, dtype=np.int64), by, notes)
