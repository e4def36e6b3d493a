"""Active-learning strategies as served: thin wrappers over polypal.serving.state."""

from __future__ import annotations

import logging
import os
import time

from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.strategy import Strategy

from lib.datastore import labeled_set
from polypal.data import DataError, TooLarge, read_rgb
from polypal.serving import model_version
from polypal.serving.plans import ANONYMOUS
from polypal.sampler import server_strategies

logger = logging.getLogger(__name__)


class PlannedStrategy(Strategy):
    """Serves the next frame of this strategy's planned batch, leased to the asking client."""

    def __init__(self, name: str, cfg, state):
        spec = server_strategies()[name]
        super().__init__(spec.description)
        self.name, self.cfg, self.state = name, cfg, state
        self._readable: set[tuple] = set()  # (id, path, mtime) of frames known to decode

    def _exists(self, store, skip: set, datastore=None):
        """``exists`` for next_frame, run inside the lease's transaction, so only cheap lookups: the frame is
        still in the datastore, not labeled (read now: a label saved since this request read the labeled set
        has released its lease, and the frame was served a second time), not recorded as unreadable, and not
        already refused in this request."""
        bad = self.state.features.bad_ids() | skip
        final = DefaultLabelTag.FINAL.value
        if store is None:  # a DICOMweb datastore: asking the PACS would be a request per frame; this server's
            # own saves are in MONAI Label's local record of it (a dict in memory), or kept here after a failed
            # store (pending: one stat)
            def saved_here(image_id):
                try:
                    pending = getattr(datastore, "has_pending_label", None)
                    return final in (datastore.get_labels_by_image_id(image_id) or {}) or bool(
                        pending and pending(image_id))
                except Exception:  # noqa: BLE001 - e.g. the record changing under the read: not known here
                    return False

            return lambda image_id: image_id not in bad and not (datastore is not None and saved_here(image_id))
        return lambda image_id: (image_id not in bad and store.image_ext(image_id) is not None
                                 and not store.label_path(image_id, final))

    def _decodes(self, store, image_id: str) -> bool:
        """The leased frame decodes (outside any transaction; once per file: frames with a thumbnail
        decoded already). An unreadable file is recorded as bad, as scoring would; a missing file (a
        replace in flight) or one over the pixel cap is skipped for now, not recorded."""
        path = store.image_path(image_id)
        try:
            key = (image_id, path, os.stat(path).st_mtime_ns)
        except OSError:
            return False
        if key in self._readable or self.state.features.has_thumb(image_id):
            return True
        since = time.time()
        try:
            read_rgb(path)
        except TooLarge:
            return False
        except DataError as e:
            try:
                if os.stat(path).st_mtime_ns != key[2]:  # replaced while being read: judge the new file next time
                    return False
            except OSError:
                return False
            logger.warning(f"not serving {image_id}: {e.problem}")
            self.state.features.mark_bad(image_id, e.problem, read_since=since)
            return False
        self._readable.add(key)
        return True

    def info(self):
        spec = server_strategies()[self.name]
        return {"description": self.description, "batch_size": self.cfg.batch_size,
                "gamma": self.cfg.gamma if spec.uses_gamma else None, "library_name": spec.name,
                "needs": list(spec.needs), "fallback": spec.fallback, "lease_timeout_s": self.cfg.lease_seconds}

    def __call__(self, request, datastore):
        labeled = labeled_set(datastore)
        # the full image list is only read when a batch has to be (re)planned
        store = getattr(datastore, "store", None)  # our datastore (for DICOMweb each check would be a download)
        client = request.get("client_id") or ANONYMOUS
        skip: set[str] = set()
        for _ in range(20):  # a frame that fails to decode is skipped (recorded as bad) and the next one leased
            served = self.state.next_frame(self.name, client, datastore.list_images, labeled,
                                           model_version(self.cfg.model_path),
                                           exists=self._exists(store, skip, datastore),
                                           relabel=lambda: labeled_set(datastore))
            if served is None or store is None or self._decodes(store, served.id):
                break
            skip.add(served.id)
            self.state.leases.release(served.id)
        else:
            served = None
        if served is None:
            logger.info(f"{self.name}: no unlabeled frame left to serve")
            return {}
        return served.to_dict()
