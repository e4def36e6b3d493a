"""Scoring method ``polyp_al``: bring the active-learning state up to date.

Runs in MONAI Label's scoring subprocess (at start-up, after each next-sample
and after training); the work itself is ``polypal.serving.refresh``.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from monailabel.interfaces.tasks.scoring import ScoringMethod

from polypal.serving import model_version, refresh

logger = logging.getLogger(__name__)


class PolypScoring(ScoringMethod):
    def __init__(self, cfg, state):
        super().__init__("BvSB score + latent per unlabeled frame for the current model; plans AL batches")
        self.cfg, self.state = cfg, state

    def __call__(self, request, datastore):
        from lib.train import Busy, exclusive, training_running

        if training_running(self.cfg, wait=0.5):  # never compete with training: it scores its model when it
            # publishes (the wait: the server's probe of the lock, before it starts a scoring run, is no training)
            logger.info("polyp_al scoring skipped: a training is running")
            return {"skipped": "a training is running; its model is scored when published"}
        try:
            with exclusive(self.cfg.model_path + ".score.lock", wait=0.5):  # (the server's probe holds it for
                # microseconds: that must not make a training's scoring of its new model stand aside)
                return self._score(datastore)
        except Busy:
            logger.info("polyp_al scoring skipped: another scoring run is going")
            return {"skipped": "another scoring run is going; it scores the newest model before it ends"}

    def _score(self, datastore):
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
        res = refresh(self.state, datastore, self.cfg.model_path, self.cfg.profile, self.cfg.aggregation)
        logger.info(f"polyp_al scoring: {res}")
        return res
