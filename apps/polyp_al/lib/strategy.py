"""Active-learning strategies as served: thin wrappers over polypal.active."""

from __future__ import annotations

import logging

from monailabel.interfaces.tasks.strategy import Strategy

from polypal.active import SERVER_STRATEGIES, model_version

logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    "random": "Random frames (without replacement)",
    "bvsb": "Most uncertain frames by Best-vs-Second-Best (paper eqn 4)",
    "ta_coreset": "Task-aware coreset: k-center greedy on the U-Net bottleneck latents",
    "pca_coreset": "k-center greedy on PCA features of the raw frames",
    "bvsb_ta_coreset": "The paper's method: gamma*B by BvSB, the rest by task-aware coreset",
}


class PlannedStrategy(Strategy):
    """Serves the next frame of this strategy's planned batch, leased to the asking client."""

    def __init__(self, name: str, cfg, state):
        assert name in SERVER_STRATEGIES
        super().__init__(DESCRIPTIONS[name])
        self.name, self.cfg, self.state = name, cfg, state

    def info(self):
        return {"description": self.description, "batch_size": self.cfg.batch_size,
                "gamma": self.cfg.gamma if self.name == "bvsb_ta_coreset" else None,
                "lease_timeout_s": self.cfg.lease_seconds}

    def __call__(self, request, datastore):
        labeled = set(datastore.get_labeled_images())
        # the full image list is only read when a batch has to be (re)planned
        served = self.state.next_frame(self.name, request.get("client_id") or "anonymous", datastore.list_images,
                                       labeled, model_version(self.cfg.model_path))
        if served is None:
            logger.info(f"{self.name}: no unlabeled frame left to serve")
            return {}
        return served.to_dict()
