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
                       representatives: Collection[str] | None = None) -> list[int]:
    """Indices into ``names`` that a strategy may pick from when near-duplicates are grouped: tier 0 of
    ``dedupe_candidates`` (one clean representative per group that holds no label yet, and ungrouped
    frames); every unlabeled index when no such frame is left."""
    labeled = {names[i] for i in labeled_idx}
    unlabeled = [n for n in names if n not in labeled]
    keep = set(dedupe_candidates(unlabeled, groups, flagged, representatives, labeled, max_tier=0) or unlabeled)
    return [i for i, n in enumerate(names) if n in keep]


def plan_universe(universe: list[str], labeled: Collection[str], groups: Mapping[str, str],
                  flagged: Collection[str] = (), representatives: Collection[str] | None = None) -> list[str]:
    """The frames a batch may be planned over: every labeled frame (k-center's centers) plus
    ``grouped_candidates`` (one clean representative per group with no label yet), in ``universe`` order.
    A plan over this universe never holds two frames of one group, nor a frame whose group is labeled,
    nor a flagged frame, while such frames are left."""
    labeled = set(labeled)
    lab_idx = [k for k, i in enumerate(universe) if i in labeled]
    keep = set(grouped_candidates(universe, lab_idx, groups, flagged, representatives)) | set(lab_idx)
    return [i for k, i in enumerate(universe) if k in keep]
