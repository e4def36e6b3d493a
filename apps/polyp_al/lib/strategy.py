"""Active-learning strategies as served: thin wrappers over polypal.serving.state."""

from __future__ import annotations

import logging

from monailabel.interfaces.tasks.strategy import Strategy

from polypal.serving import model_version
from polypal.sampler import server_strategies

logger = logging.getLogger(__name__)


class PlannedStrategy(Strategy):
    """Serves the next frame of this strategy's planned batch, leased to the asking client."""

    def __init__(self, name: str, cfg, state):
        spec = server_strategies()[name]
        super().__init__(spec.description)
        self.name, self.cfg, self.state = name, cfg, state

    def info(self):
        spec = server_strategies()[self.name]
        return {"description": self.description, "batch_size": self.cfg.batch_size,
                "gamma": self.cfg.gamma if spec.uses_gamma else None, "library_name": spec.name,
                "needs": list(spec.needs), "fallback": spec.fallback, "lease_timeout_s": self.cfg.lease_seconds}

    def __call__(self, request, datastore):
        labeled = set(datastore.get_labeled_images())
        # the full image list is only read when a batch has to be (re)planned
        # a cheap "is it still there" for our own datastore (a DICOMweb lookup per row would be a download)
        store = getattr(datastore, "store", None)
        exists = (lambda i: store.image_ext(i) is not None) if store is not None else None
        served = self.state.next_frame(self.name, request.get("client_id") or "anonymous", datastore.list_images,
                                       labeled, model_version(self.cfg.model_path), exists=exists)
        if served is None:
            logger.info(f"{self.name}: no unlabeled frame left to serve")
            return {}
        return served.to_dict()
