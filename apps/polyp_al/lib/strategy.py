"""Active-learning strategies as served: thin wrappers over polypal.serving.state."""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.tasks.strategy import Strategy

from polypal.data import DataError, read_rgb
from polypal.serving import model_version
from polypal.sampler import server_strategies

logger = logging.getLogger(__name__)


class PlannedStrategy(Strategy):
    """Serves the next frame of this strategy's planned batch, leased to the asking client."""

    def __init__(self, name: str, cfg, state):
        spec = server_strategies()[name]
        super().__init__(spec.description)
        self.name, self.cfg, self.state = name, cfg, state
        self._readable: set[tuple] = set()  # (id, path, mtime) of frames known to decode

    def _servable(self, store):
        """``exists`` for next_frame: the frame is still in the datastore and can be decoded. Frames with a
        thumbnail decoded once already; the others (a random fallback before the first scoring) are decoded
        here, once per process, and an unreadable one is recorded as bad (as scoring would) and skipped."""
        features = self.state.features
        bad = features.bad_ids()

        def ok(image_id: str) -> bool:
            if store.image_ext(image_id) is None or image_id in bad:
                return False
            path = store.image_path(image_id)
            try:
                key = (image_id, path, os.stat(path).st_mtime_ns)  # a replaced frame is checked again
            except OSError:
                return False
            if key in self._readable:
                return True
            if not features.has_thumb(image_id):
                try:
                    read_rgb(path)
                except DataError as e:  # recorded after the lease's transaction (see __call__)
                    logger.warning(f"not serving {image_id}: {e.problem}")
                    bad.add(image_id)
                    ok.newly_bad[image_id] = e.problem
                    return False
            self._readable.add(key)
            return True

        ok.newly_bad = {}
        return ok

    def info(self):
        spec = server_strategies()[self.name]
        return {"description": self.description, "batch_size": self.cfg.batch_size,
                "gamma": self.cfg.gamma if spec.uses_gamma else None, "library_name": spec.name,
                "needs": list(spec.needs), "fallback": spec.fallback, "lease_timeout_s": self.cfg.lease_seconds}

    def __call__(self, request, datastore):
        labeled = set(datastore.get_labeled_images())
        # the full image list is only read when a batch has to be (re)planned
        store = getattr(datastore, "store", None)
        exists = self._servable(store) if store is not None else None  # (DICOMweb: a check would be a download)
        served = self.state.next_frame(self.name, request.get("client_id") or "anonymous", datastore.list_images,
                                       labeled, model_version(self.cfg.model_path), exists=exists)
        for image_id, problem in (getattr(exists, "newly_bad", None) or {}).items():
            self.state.features.mark_bad(image_id, problem)
        if served is None:
            logger.info(f"{self.name}: no unlabeled frame left to serve")
            return {}
        return served.to_dict()
