"""The planner: one AL cycle's batch for a strategy, from the frames and what is known about them.

``plan_batch`` is a pure function of its inputs (the frame ids, the labeled set, the model
version and a read-only view of the feature store): it runs outside any lock, and the
caller swaps the result in atomically (``plans.PlanBook``). Before a strategy's inputs
exist (no model, model not scored yet, no thumbnails) the registry's fallback chain is
followed, and the plan records a ``fallback:<name>`` version so that it is replaced once
the better inputs exist. Frames added or replaced since the last scoring run do not send a
whole batch there: while they are at most ``MAX_UNSCORED`` of the unlabeled frames, the plan
leaves them out (its note says how many) and a later batch considers them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polypal.sampler import PoolInfo, pca_features, resolve, select
from polypal.sampler.selection import serving_order
from polypal.serving.features import NO_MODEL, THUMB

FALLBACK_PCA = "fallback:pca_coreset"  # no (scored) model yet: PCA-Coreset on thumbnails
FALLBACK_RANDOM = "fallback:random"  # no thumbnails yet either: random (the chain is in the registry)


def is_fallback(plan_version) -> bool:
    return isinstance(plan_version, str) and plan_version.startswith("fallback")


@dataclass
class Plan:
    """A planned batch: (image id, score or None, picked by) in serving order."""

    rows: list[tuple[str, float | None, str]]
    version: str  # the model version it was planned with, or "fallback:<strategy>"
    note: str | None = None


def plan_batch(strategy: str, all_ids: list[str], labeled: set[str], version: str, features, batch_size: int,
               gamma: float, seed: int, cycle: int, video=None, video_cap="auto") -> Plan | None:
    """Select the batch of ``cycle`` for a registered strategy; None when nothing is left to label.

    ``features``: a ``FeatureStore`` (only read); ``video``: a ``polypal.video.VideoIndex`` whose
    groups of near-duplicates and flagged frames are set aside (one representative per group), and
    whose videos a batch is spread across: at most ``video_cap`` new frames of one video ('auto':
    ceil(batch / videos), 'off', or an int; ``polypal.video.capped_select``).
    """
    spec = resolve(strategy)
    bad = features.bad_ids()
    universe = sorted(i for i in all_ids if i not in bad)
    notes = []
    if video is not None and video.groups:  # never two near-duplicates (or a useless frame) in one batch
        from polypal.video import plan_universe

        n0 = len(universe)
        universe = plan_universe(universe, labeled, video.groups, video.flagged, video.representatives)
        if len(universe) < n0:
            notes.append(f"video: {n0 - len(universe)} near-duplicate or flagged frames set aside")
    labeled_idx = np.array([k for k, i in enumerate(universe) if i in labeled], dtype=np.int64)
    if len(universe) - len(labeled_idx) <= 0:
        return None
    plan_version = version
    info = PoolInfo(n=len(universe))
    while True:  # the registry's fallback chain: while this strategy's inputs are missing, use its fallback
        missing, universe, labeled_idx, info = _inputs(spec, info, universe, labeled, labeled_idx, version,
                                                       features, seed, notes)
        if missing is None:
            break
        if spec.fallback is None:
            raise RuntimeError(f"strategy {spec.name!r} lacks {missing} and has no fallback")
        notes.append(f"{missing}: fell back to {spec.fallback}" +
                     (" on image features" if spec.fallback == "pca_coreset" else ""))
        plan_version = f"fallback:{spec.fallback}"  # differs from every model version: replaced once inputs exist
        spec = resolve(spec.fallback)
    if video is not None and video.video_of and str(video_cap).lower() != "off":  # spread the batch across videos
        from polypal.video import capped_select

        sel = capped_select(spec.name, info, labeled_idx, batch_size, [video.video_of.get(i) for i in universe],
                            cap=video_cap, seed=seed * 1000 + cycle, gamma=gamma)
    else:
        sel = select(spec.name, info, labeled_idx, batch_size, seed=seed * 1000 + cycle, gamma=gamma)
    notes += sel.notes
    sel = serving_order(sel, seed=seed * 1000 + cycle)  # a batch cut short by a newer model: gamma's mix
    rows = [(universe[j], None if info.scores is None else float(info.scores[j]), by)
            for j, by in zip(sel.indices.tolist(), sel.picked_by)]
    return Plan(rows, plan_version, "; ".join(notes) or None)


MAX_UNSCORED = 0.10  # a plan leaves out frames not yet scored (or thumbnailed) when they are at most this share
#                      of the unlabeled ones; above it, the strategy waits for them on its fallback


def _restrict(universe, labeled, have: set, what: str):
    """(universe, note) keeping the frames in ``have``, when few unlabeled ones are missing; None otherwise.
    Frames added since the last scoring run (or replaced) join a later batch instead of sending the whole
    batch to the fallback."""
    unl = [i for i in universe if i not in labeled]
    missing = sum(1 for i in unl if i not in have)
    if not unl or missing == len(unl) or missing > MAX_UNSCORED * len(unl):
        return None
    keep = [i for i in universe if i in have]
    note = f"{missing} new or changed frames not {what} yet: left for a later batch" if missing else None
    return keep, note


def _reindex(universe, labeled):
    return np.array([k for k, i in enumerate(universe) if i in labeled], dtype=np.int64), PoolInfo(n=len(universe))


def _inputs(spec, info, universe, labeled, labeled_idx, version, features, seed, notes):
    """Fill what ``spec`` needs into ``info``: (what is missing or None, universe, labeled_idx, info)."""
    if {"scores", "latents"} & set(spec.needs):
        if version == NO_MODEL:
            return "no model yet", universe, labeled_idx, info
        # labeled frames are k-center's initial centers: use their latents when this model has them
        full = features.scores_for(version, universe)
        if full is None:
            # frames this model has not scored: labeled ones (scored before it) are left out of the centers,
            # and a few unlabeled ones (new or replaced since its scoring run) wait for a later batch
            r = _restrict(universe, labeled, features.scored_ids(version), "scored by this model")
            if r is None:
                return f"model {version} not scored yet", universe, labeled_idx, info
            universe, note = r
            if note:
                notes.append(note)
            labeled_idx, info = _reindex(universe, labeled)
            full = features.scores_for(version, universe)
            if full is None:  # a frame's scores were dropped (replaced) since the line above read them
                return f"model {version} not scored yet", universe, labeled_idx, info
        scores, latents = full
        ok = np.isfinite(np.asarray(scores, dtype=np.float64)) & np.isfinite(np.asarray(latents)).all(axis=1)
        if not ok.all():  # a model that outputs NaN on some frames: those frames wait, k-center never sees NaN
            kept = [i for i, k in zip(universe, ok) if k]
            kept_idx, kept_info = _reindex(kept, labeled)
            if len(kept) - len(kept_idx) <= 0:  # nothing to pick: the fallback plans over the whole universe
                return f"model {version} gave no finite scores", universe, labeled_idx, info
            notes.append(f"{int((~ok).sum())} frames with non-finite scores or latents from model {version} "
                         f"left out")
            universe, labeled_idx, info = kept, kept_idx, kept_info
            scores, latents = scores[ok], latents[ok]
        info.scores, info.latents = scores, latents
    if "image_features" in spec.needs:
        th = features.thumbs_for(universe)
        if th is None:
            r = _restrict(universe, labeled, features.thumbed_ids(), "thumbnailed")
            if r is None:
                return "thumbnails not computed yet", universe, labeled_idx, info
            universe, note = r
            if note:
                notes.append(note)
            labeled_idx, info = _reindex(universe, labeled)
            th = features.thumbs_for(universe)
            if th is None:
                return "thumbnails not computed yet", universe, labeled_idx, info
        info.image_features = pca_features(th.reshape(len(universe), THUMB, THUMB, 3), seed=seed)
    return None, universe, labeled_idx, info