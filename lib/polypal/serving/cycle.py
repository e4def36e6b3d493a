"""The refresh step of the live AL cycle: thumbnails -> scores -> re-plans, incrementally.

Thumbnails only for new frames, scores (one inference pass: image score + latent) only for
frames the current model has not scored, plans only when stale. Undecodable frames are
recorded with their error and never served. Memory stays bounded at any pool size
(frames are decoded ``chunk`` at a time).

``frames`` is anything with MONAI Label's datastore methods ``list_images()``,
``get_labeled_images()`` and ``get_image_uri(id)``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from polypal.data import DataError, read_rgb, resize_rgb
from polypal.learner import CheckpointError, load_checkpoint, predict
from polypal.sampler import BvSB, resolve, server_strategies
from polypal.serving.features import NO_MODEL, THUMB, model_version
from polypal.serving.fileops import file_signature
from polypal.serving.planner import is_fallback

logger = logging.getLogger(__name__)
CHUNK = 256  # frames decoded per step


class _Decoded(list):
    """The ids that decoded (a list), with each file's path and signature when it was read."""

    def unchanged(self) -> list:
        """Those whose file is still the one that was read: a frame replaced meanwhile had its features
        dropped (FeatureStore.forget), and storing what was computed from its old file would bring them back."""
        return [i for i in self if file_signature(self.paths[i]) == self.sigs[i]]


def _decode(state, frames, ids, size):
    ok, arrays = _Decoded(), []
    ok.paths, ok.sigs, ok.since = {}, {}, time.time()
    for i in ids:
        uri = sig = None
        try:
            uri = frames.get_image_uri(i)
            sig = file_signature(uri) if isinstance(uri, str) else None
            arrays.append(resize_rgb(read_rgb(uri), size))
            ok.append(i)
            ok.paths[i], ok.sigs[i] = uri, sig
        except DataError as e:
            if sig is not None and file_signature(uri) != sig:  # replaced meanwhile: the new file is read next time
                logger.info(f"frame {i} changed while being read; read again next time")
                continue
            logger.warning(f"skipping frame {i} in the pool: {e}")
            state.mark_bad(i, str(e), read_since=ok.since)
        except Exception as e:  # noqa: BLE001 - only a datastore's refusal of this one frame (an HTTP 4xx)
            status = getattr(e, "status_code", None)
            if not (isinstance(status, int) and 400 <= status < 500):
                raise
            why = str(getattr(e, "detail", e))
            logger.warning(f"skipping frame {i} in the pool: the datastore refused it ({status}: {why})")
            state.mark_bad(i, why, read_since=ok.since)
    return ok, (np.stack(arrays) if arrays else np.empty((0, size, size, 3), np.uint8))


def _keep_unchanged(ok: _Decoded, *arrays: np.ndarray):
    """(ids, *rows of each array) for the frames whose file did not change while they were computed."""
    keep = ok.unchanged()
    if len(keep) == len(ok):
        return (list(ok), *arrays)
    logger.info(f"{len(ok) - len(keep)} frames changed while being read; computed again next time")
    kept = set(keep)
    idx = [k for k, i in enumerate(ok) if i in kept]
    return (keep, *(a[idx] for a in arrays))


def _models_beside(model_path) -> set[str]:
    """The versions of the model files (``*.pt``) in the served model's folder, the served one included."""
    import glob
    import os

    return {model_version(p) for p in glob.glob(os.path.join(glob.escape(os.path.dirname(str(model_path))), "*.pt"))
            } | {model_version(model_path)}


def refresh_due(served: dict, current_version: str) -> bool:
    """Whether a refresh could change the answers, judging by a next-sample answer (``Served.to_dict``):
    the frame came from a fallback plan (no scores or thumbnails yet), from a batch planned with an
    older model by a strategy that uses the model, or it was the last of its batch."""
    planned_with = served.get("model_version")
    if is_fallback(planned_with):
        return True
    stale = planned_with not in (current_version, None) and resolve(served["al_strategy"]).needs_model
    return stale or served.get("position") == served.get("batch_size")


def refresh(state, frames, model_path, profile, aggregation: str = "mean", chunk: int = CHUNK) -> dict:
    """Bring ``state`` (an ActiveLearningState) up to date with the frames and the model at ``model_path``.

    Returns {"model_version", "scored", "planned", "bad_frames"}. A model file that does not load
    (``CheckpointError``) is never used: nothing is scored with it and the plans stay as they are.
    """
    all_ids = frames.list_images()
    labeled = set(frames.get_labeled_images())
    todo = state.missing_thumbs(all_ids)
    for s in range(0, len(todo), chunk):
        ok, th = _decode(state, frames, todo[s : s + chunk], THUMB)
        state.add_thumbs(*_keep_unchanged(ok, th), read_since=ok.since)
    version = model_version(model_path)
    scored = 0
    model = None
    if version != NO_MODEL:
        try:
            model, _, _ = load_checkpoint(model_path, expect=profile)
        except CheckpointError as e:  # never score with (or serve) a file that does not load
            logger.error(f"scoring skipped: {e}")
    if model is not None:
        scorer = BvSB(aggregation)
        # labeled frames are scored too: their latents are k-center's initial centers
        todo = state.unscored(version, all_ids)
        for s in range(0, len(todo), chunk):
            ok, ims = _decode(state, frames, todo[s : s + chunk], profile.size)
            if ok:
                pred = predict(model, ims, scorers=(scorer,), keep_probs=False)
                keep, sc, lat = _keep_unchanged(ok, np.asarray(pred.scores[scorer.name]), pred.latents)
                state.add_scores(version, keep, sc, lat, read_since=ok.since)
                scored += len(keep)
        # the pool is scored with this model: older models' scores and latents are never read again (kept: the
        # model files beside it, another profile's, which a server of that profile reads)
        dropped = state.features.prune({version, *_models_beside(model_path)})
        if dropped:
            logger.info(f"dropped the scores and latents of {len(dropped)} older model version(s)")
    planned = []
    # the labeled set again: labels saved while the pool was scored (minutes on a large pool) must not be planned
    labeled = set(frames.get_labeled_images())
    for name in server_strategies():
        if state.plan_is_stale(name, version, all_ids, labeled):
            if state.plan(name, all_ids, labeled, version) is not None:
                planned.append(name)
    return {"model_version": version, "scored": scored, "planned": planned, "bad_frames": len(state.bad_ids())}
