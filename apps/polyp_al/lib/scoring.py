"""Scoring method ``polyp_al``: bring the active-learning state up to date.

Runs in MONAI Label's scoring subprocess (at start-up, after each next-sample
and after training). Work is incremental: thumbnails only for new frames,
scores only for frames the current model has not scored, plans only when
stale. Undecodable frames are recorded with their error and never served.
"""

from __future__ import annotations

import logging

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.scoring import ScoringMethod

from polypal.active import THUMB, model_version
from polypal.data import DataError, read_rgb, resize_rgb
from polypal.learner import predict
from polypal.model import CheckpointError, load_checkpoint
from polypal.strategies import server_strategies

logger = logging.getLogger(__name__)
CHUNK = 256  # frames decoded per step: bounded memory at any pool size


class PolypScoring(ScoringMethod):
    def __init__(self, cfg, state):
        super().__init__("BvSB score + latent per unlabeled frame for the current model; plans AL batches")
        self.cfg, self.state = cfg, state

    def _decode(self, ids, datastore, size):
        ok, arrays = [], []
        for i in ids:
            try:
                arrays.append(resize_rgb(read_rgb(datastore.get_image_uri(i)), size))
                ok.append(i)
            except DataError as e:
                logger.warning(f"skipping frame {i} in the pool: {e}")
                self.state.mark_bad(i, str(e))
        return ok, (np.stack(arrays) if arrays else np.empty((0, size, size, 3), np.uint8))

    def __call__(self, request, datastore):
        from lib.train import training_running

        if training_running(self.cfg):  # never compete with training: it scores its model when it publishes
            logger.info("polyp_al scoring skipped: a training is running")
            return {"skipped": "a training is running; its model is scored when published"}
        # a model published while this run was scoring gets scored too: MONAI Label refuses to start a
        # second scoring run while one is going, so the trigger from that training may have been lost
        for _ in range(5):
            try:
                res = self._run_once(datastore)
            except HTTPException as e:  # e.g. the DICOMweb server is down: try again on the next trigger
                logger.error(f"scoring stopped: {e.detail}")
                return {"error": e.detail}
            if model_version(self.cfg.model_path) == res["model_version"]:
                return res
        return res

    def _run_once(self, datastore):
        st = self.state
        all_ids = datastore.list_images()
        labeled = set(datastore.get_labeled_images())
        todo = st.missing_thumbs(all_ids)
        for s in range(0, len(todo), CHUNK):
            ok, th = self._decode(todo[s : s + CHUNK], datastore, THUMB)
            st.add_thumbs(ok, th)
        version = model_version(self.cfg.model_path)
        scored = 0
        model = None
        if version != "none":
            try:
                model, _, _ = load_checkpoint(self.cfg.model_path, expect=self.cfg.profile)
            except CheckpointError as e:  # never score with (or serve) a file that does not load
                logger.error(f"scoring skipped: {e}")
        if model is not None:
            # labeled frames are scored too: their latents are k-center's initial centers
            todo = st.unscored(version, all_ids)
            for s in range(0, len(todo), CHUNK):
                ok, ims = self._decode(todo[s : s + CHUNK], datastore, self.cfg.profile.size)
                if ok:
                    pred = predict(model, ims, aggregations=(self.cfg.aggregation,), keep_probs=False)
                    st.add_scores(version, ok, pred.scores[self.cfg.aggregation], pred.latents)
                    scored += len(ok)
        planned = []
        for name in server_strategies():
            if st.plan_is_stale(name, version, all_ids, labeled):
                if st.plan(name, all_ids, labeled, version) is not None:
                    planned.append(name)
        res = {"model_version": version, "scored": scored, "planned": planned, "bad_frames": len(st.bad_ids())}
        logger.info(f"polyp_al scoring: {res}")
        return res
