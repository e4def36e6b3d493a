"""The app's settings, read once from ``--conf`` (all values arrive as strings)."""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass

from polypal.data import DEFAULT_MAX_PIXELS, set_max_pixels
from polypal.learner import Profile, get_profile


logger = logging.getLogger(__name__)

# every --conf key polyp-al reads (README, "Annotating with the MONAI Label server"), and the one MONAI Label
# itself passes (tests/test_hostile.py checks this list against the keys the app's code reads)
SETTINGS = ("profile", "batch_size", "gamma", "lease_timeout", "aggregation", "min_steps", "train_steps",
            "collapse_retries", "fit_floor", "threads", "seed", "model_dir", "state_dir", "datastore", "video_cap",
            "max_pixels", "min_free_mb", "allow_model_upload", "allowed_origins", "allowed_hosts", "ohif_dir")
FRAMEWORK_KEYS = frozenset({"server_mode"})
KNOWN_KEYS = frozenset(SETTINGS) | FRAMEWORK_KEYS


class ConfError(ValueError):
    """A ``--conf`` value the server cannot start with; its message says which and why."""


def dicomweb_home(url: str) -> str:
    """Where a DICOMweb server's model and AL state live: one folder per server URL under
    ``$XDG_DATA_HOME/polypal/dicomweb`` (``~/.local/share``), named by its host and port and a hash of the URL.
    Until 2026-12 it was ``<app>/model``, shared by every DICOMweb server (any Orthanc) and inside the code."""
    import hashlib
    import re
    from urllib.parse import urlsplit

    url = url.rstrip("/").strip()
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", urlsplit(url).netloc or "server").strip("-.")[:60] or "server"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "polypal", "dicomweb", f"{host}-{hashlib.sha256(url.encode()).hexdigest()[:10]}")


def default_model_dir(app_dir: str, studies: str) -> str:
    """Where the model lives without ``--conf model_dir``: beside the studies folder's AL state
    (``<studies>/.polypal/model``), so that each folder of frames has its own model; a DICOMweb datastore
    has no folder of ours: ``dicomweb_home(url)/model``. Until 2026-12 every folder shared ``<app>/model``: a
    server started on new frames served, and its first training overwrote, another folder's model."""
    if studies.startswith(("http://", "https://")):
        return os.path.join(dicomweb_home(studies), "model")
    return os.path.join(studies, ".polypal", "model")


def warn_unused_model(app_dir: str, studies: str, conf: dict, model_path: str) -> None:
    """At start-up: a model in the old shared place that this server does not use (named, with the fix)."""
    old = os.path.join(app_dir, "model", os.path.basename(model_path))
    if conf.get("model_dir") or os.path.exists(model_path) or not os.path.exists(old) or \
            os.path.realpath(old) == os.path.realpath(model_path):
        return
    if studies.startswith(("http://", "https://")):  # its AL state (pending labels too) lived beside it
        now, what = "each DICOMweb server now keeps its own model and AL state", "it and its state/"
    else:
        now, what = "each studies folder now keeps its own model in <studies>/.polypal/model", "it"
    logger.warning(f"{old} is not served: {now} (here {os.path.dirname(model_path)}); if it is this "
                   f"server's, start with --conf model_dir {os.path.dirname(old)} or move {what} (and its "
                   f".stats.json) into {os.path.dirname(model_path)}")


@dataclass
class AppConfig:
    profile: Profile
    model_path: str
    state_dir: str
    batch_size: int
    gamma: float
    lease_seconds: float
    aggregation: str
    seed: int
    allow_model_upload: bool = False
    allowed_origins: str = ""
    allowed_hosts: str = ""
    max_pixels: int = 0
    threads: int = 1
    video_cap: int | str = "auto"  # --conf video_cap: at most this many frames of one video per batch
    min_free_mb: float = 1024  # --conf min_free_mb: uploads that would leave less free disk than this get 507

    @classmethod
    def from_conf(cls, app_dir: str, studies: str, conf: dict) -> "AppConfig":
        """The settings from ``--conf``; ConfError (one sentence) for a value the server cannot start with, and a
        warning for a key it does not know (a misspelt ``batchsize 10`` was ignored without a word)."""
        for key in sorted(set(conf) - KNOWN_KEYS):
            close = difflib.get_close_matches(str(key), sorted(KNOWN_KEYS - FRAMEWORK_KEYS), n=1)
            logger.warning(f"--conf {key} is not a polyp-al setting and is ignored"
                           + (f": did you mean {close[0]}?" if close else f" (settings: {', '.join(SETTINGS)})"))
        try:
            return cls._from_conf(app_dir, studies, conf)
        except (ValueError, OSError) as e:  # (OSError: the model folder cannot be made)
            raise ConfError(str(e)) from None

    @classmethod
    def _from_conf(cls, app_dir: str, studies: str, conf: dict) -> "AppConfig":
        def num(key, default, kind=float):
            raw = conf.get(key, default)
            try:
                return kind(raw)
            except (TypeError, ValueError):
                raise ValueError(f"--conf {key} must be {'a whole number' if kind is int else 'a number'}, "
                                 f"got {raw!r}") from None

        overrides = {}
        try:
            base = get_profile(conf.get("profile", "cpu-lite"))
        except ValueError as e:
            raise ValueError(f"--conf profile: {e}") from None
        if conf.get("train_steps"):  # a fixed step budget per training run (min = max)
            overrides = {"min_steps": num("train_steps", 0, int), "max_steps": num("train_steps", 0, int)}
        elif conf.get("min_steps"):  # another floor under the profile's growing budget (cpu-lite: 1200, with the
            # endoscopy augmentation; results/calibration/README.md "v3". 600, the v2 floor, is faster; with the
            # augmentation it is unmeasured)
            overrides["min_steps"] = num("min_steps", base.min_steps, int)
            if overrides["min_steps"] < 0:
                raise ValueError("--conf min_steps must be >= 0")
            if base.max_steps is not None and overrides["min_steps"] > base.max_steps:
                overrides["max_steps"] = overrides["min_steps"]
        # a collapsed training (no polyp predicted on any of its own frames) is redone from a fresh network, up to
        # 3 times: it costs nothing unless it fires, and one CVC set needed 3 (results/calibration/collapse-replay.md)
        overrides["collapse_retries"] = num("collapse_retries", 3, int)
        if overrides["collapse_retries"] < 0:
            raise ValueError("--conf collapse_retries must be >= 0")
        # a candidate, off by default: also redo a training whose model fits its own frames poorly (polyp Dice
        # under the floor; 0.55 caught CVC's two large v3 drops and no healthy stage, not Kvasir's drop:
        # results/calibration/collapse-replay.md). Needs collapse_retries > 0 to act.
        overrides["fit_floor"] = num("fit_floor", 0.0)
        if not 0 <= overrides["fit_floor"] < 1:
            raise ValueError(f"--conf fit_floor must be in [0, 1), got {overrides['fit_floor']}")
        profile = get_profile(conf.get("profile", "cpu-lite"), **overrides)
        model_dir = conf.get("model_dir") or default_model_dir(app_dir, studies)
        os.makedirs(model_dir, exist_ok=True)
        gamma = num("gamma", 0.5)
        if not 0 <= gamma <= 1:
            raise ValueError(f"--conf gamma must be in [0, 1], got {gamma}")
        dicomweb = studies.startswith(("http://", "https://"))
        state_dir = conf.get("state_dir") or (os.path.join(model_dir, "state") if dicomweb
                                              else os.path.join(studies, ".polypal"))
        flag = str(conf.get("allow_model_upload", "false")).strip().lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--conf allow_model_upload must be true or false, got {flag!r}")
        max_pixels = num("max_pixels", DEFAULT_MAX_PIXELS, int)
        from polypal.video.select import parse_cap

        try:
            video_cap = parse_cap(conf.get("video_cap", "auto"))
        except ValueError as e:
            raise ValueError(f"--conf video_cap: {e}") from None
        min_free_mb = num("min_free_mb", 1024)
        if not 0 <= min_free_mb < float("inf"):
            raise ValueError(f"--conf min_free_mb must be >= 0 (0 turns the check off), got {min_free_mb}")
        lease_seconds = num("lease_timeout", 3600)
        if not 0 < lease_seconds < float("inf"):  # negative: every lease expired at once; nan: none ever did
            raise ValueError(f"--conf lease_timeout must be a number of seconds > 0, got {lease_seconds}")
        from polypal.sampler import AGGREGATIONS

        aggregation = str(conf.get("aggregation", "mean")).strip()
        if aggregation not in AGGREGATIONS:  # else scoring failed after every training, in the log only, and
            # every model-based strategy served PCA-Coreset's frames saying there was no model
            raise ValueError(f"--conf aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        set_max_pixels(max_pixels)  # every reader of this process (server, training, scoring) obeys it
        return cls(
            profile=profile,
            model_path=os.path.join(model_dir, f"polyp_seg-{profile.name}.pt"),
            state_dir=state_dir,
            batch_size=max(1, num("batch_size", 100, int)),
            gamma=gamma,
            lease_seconds=lease_seconds,
            aggregation=aggregation,
            seed=num("seed", 0, int),
            allow_model_upload=flag in ("true", "1", "yes"),
            allowed_origins=str(conf.get("allowed_origins", "")),
            allowed_hosts=str(conf.get("allowed_hosts", "")),
            max_pixels=max_pixels,
            video_cap=video_cap,
            min_free_mb=min_free_mb,
            # half the cores: measured on 2 cores beside other CPU work, 1 thread trained 7x faster than 2
            # (results/benchmarks/training-contention.txt); alone, more threads help less than that
            threads=max(1, num("threads", max(1, (os.cpu_count() or 2) // 2), int)),
        )
