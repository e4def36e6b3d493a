"""Serving: the live AL cycle behind an annotation server, and the datastore it reads (the Oracle's side).

- ``state.ActiveLearningState``: ties the parts below together for the MONAI Label app;
- ``features``: scores, latents, thumbnails per frame; ``planner``: a pure ``plan_batch``;
- ``plans``: the plan book (atomic swap) and the lease book; ``annotations``: effort and quality log;
- ``cycle.refresh``: thumbnails -> scores -> re-plans, incrementally;
- ``framestore``: the crash-safe studies folder; ``quality``: the stopping signal;
- ``export`` (``polypal-export``) and ``dicomweb`` (``polypal-dicomweb``): data out and in.

Independent of MONAI Label: tests drive it directly.
"""

from polypal.serving.cycle import refresh, refresh_due
from polypal.serving.features import NO_MODEL, THUMB, FeatureStore, model_version
from polypal.serving.planner import FALLBACK_PCA, FALLBACK_RANDOM, Plan, is_fallback, plan_batch
from polypal.serving.plans import LeaseBook, PlanBook
from polypal.serving.state import ActiveLearningState, Served

__all__ = ["FALLBACK_PCA", "FALLBACK_RANDOM", "NO_MODEL", "THUMB", "ActiveLearningState", "FeatureStore", "LeaseBook",
           "Plan", "PlanBook", "Served", "is_fallback", "model_version", "plan_batch", "refresh", "refresh_due"]
