"""Colonoscopy video in: ``polypal-ingest`` (ingest.py), frame measures (frames.py), the ingest records
(store.py) and one-frame-per-group serving order (select.py)."""

from polypal.video.frames import DUP_BITS, flags, measure
from polypal.video.ingest import VideoError, ingest_video, sanitize
from polypal.video.select import (capped_select, dedupe_candidates, dedupe_tiers, grouped_candidates, parse_cap,
                                  plan_universe, spread_across_videos)
from polypal.video.store import VideoIndex, load_index

__all__ = ["DUP_BITS", "VideoError", "VideoIndex", "capped_select", "dedupe_candidates", "dedupe_tiers", "flags", "ingest_video",
           "grouped_candidates", "load_index", "measure", "parse_cap", "plan_universe", "sanitize", "spread_across_videos"]
