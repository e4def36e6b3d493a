"""Serving: the live AL cycle behind an annotation server, and the datastore it reads (the Oracle's side).

- ``state.ActiveLearningState``: ties the parts below together for the MONAI Label app;
- ``features``: scores, latents, thumbnails per frame; ``planner``: a pure ``plan_batch``;
- ``plans``: the plan book (atomic swap) and the lease book; ``annotations``: effort and quality log;
- ``cycle.refresh``: thumbnails -> scores -> re-plans, incrementally;
- ``framestore``: the crash-safe studies folder; ``quality``: the stopping signal;
- ``export`` (``polypal-export``) and ``dicomweb`` (``polypal-dicomweb``): data out and in.

Independent of MONAI Label: tests drive it directly.
"""

import importlib

# names resolved on first use (PEP 562): the store and the command-line tools (polypal-export,
# polypal-trash) import ``polypal.serving.framestore`` without loading torch through ``cycle``
_WHERE = {"refresh": "cycle", "refresh_due": "cycle", "NO_MODEL": "features", "THUMB": "features",
          "FeatureStore": "features", "model_version": "features", "FALLBACK_PCA": "planner",
          "FALLBACK_RANDOM": "planner", "Plan": "planner", "is_fallback": "planner", "plan_batch": "planner",
          "LeaseBook": "plans", "PlanBook": "plans", "ActiveLearningState": "state", "Served": "state"}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
