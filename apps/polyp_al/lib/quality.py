"""Label-time quality: the current model's Dice on each frame an annotator labels (polypal.serving.quality)."""

from __future__ import annotations

import logging
import threading

from fastapi import HTTPException

from polypal.serving import NO_MODEL, model_version
from polypal.data import DataError, read_mask, read_rgb, resize_mask, resize_rgb
from polypal.learner import CheckpointError, load_checkpoint, predict
from polypal.serving.quality import label_dice

logger = logging.getLogger(__name__)


class LabelQuality:
    def __init__(self, cfg, state):
        self.cfg, self.state = cfg, state
        self._lock = threading.Lock()
        self._model = (None, None, set(), None)  # version, network, frames it trained on, its model number

    def _current(self, version):
        """(version, network, frames it trained on, model number) of the served model. A model published while it loads
        (renamed over the path) would be measured under the older version: the version is read again after
        the load, and the load retried until both reads agree."""
        with self._lock:
            for _ in range(5):
                if self._model[0] == version:
                    break
                model, _, extra = load_checkpoint(self.cfg.model_path, device="cpu", expect=self.cfg.profile)
                after = model_version(self.cfg.model_path)
                if after == version:
                    number = extra.get("model_number")
                    self._model = (version, model, set(extra.get("trained_on") or []),
                                   number if isinstance(number, int) and not isinstance(number, bool) else None)
                    break
                version = after
            else:
                raise CheckpointError(self.cfg.model_path, "the model kept changing while it was loaded")
            return self._model

    def __call__(self, datastore, image_id: str) -> float | None:
        """Dice of the current model on this frame's final label, recorded once per (frame, model);
        None when there is no model, no final label, or the model trained on this frame. A datastore with
        ``saved_label_uri`` (DICOMweb: the label is a SEG on the PACS) gives the mask file it stored."""
        version = model_version(self.cfg.model_path)
        if version == NO_MODEL or self.state.has_quality(image_id, version):
            return None
        own = getattr(datastore, "saved_label_uri", None)
        try:
            label = own(image_id) if own else datastore.get_label_uri(image_id, "final")
            image = datastore.get_image_uri(image_id)
        except HTTPException as e:  # the frame file changed under the label: nothing to measure
            logger.warning(f"label quality for {image_id} not measured: {e.detail}")
            return None
        if not label or not image:
            return None
        try:
            version, model, trained_on, number = self._current(version)
            if image_id in trained_on or version == NO_MODEL or self.state.has_quality(image_id, version):
                return None
            rgb = read_rgb(image)
            mask = read_mask(label, expected_hw=rgb.shape[:2])
        except (CheckpointError, DataError) as e:
            logger.warning(f"label quality for {image_id} not measured: {e}")
            return None
        size = self.cfg.profile.size
        with self._lock:
            prob = predict(model, resize_rgb(rgb, size)[None], scorers=(), keep_probs=True).probs[0]
        dice = label_dice(prob > 0.5, resize_mask(mask, size))
        self.state.add_quality(image_id, version, dice, model_number=number)
        return dice
