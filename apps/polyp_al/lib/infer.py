"""Infer task ``polyp_seg``: a frame of any size in, a lossless polyp label at that size out."""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
import uuid
from typing import Any, Dict, Tuple

import numpy as np
import torch
from fastapi import HTTPException
from monai.inferers import Inferer
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from polypal.data import normalize, read_rgb, resize_prob, resize_rgb, write_label
from polypal.learner import CheckpointError, PolypUNet, load_checkpoint
from polypal.vocab import WRITE_EXTENSIONS

logger = logging.getLogger(__name__)
_written: dict[str, list] = {}  # request token -> result files its inference wrote (deleted if it then fails)
_written_lock = threading.Lock()
TOKEN = "_polypal_request"  # set by the server on each infer request (a client's value is overwritten)


class written_results:
    """``with written_results(request) as files:`` collects the result files the writer makes for this
    request, so that a request which fails after the writer ran can delete them instead of leaving them
    in TMPDIR. Keyed by a token in the request (it travels with the request's data into the writer), so it
    also holds when MONAI Label runs inferences in a thread pool (MONAI_LABEL_INFER_CONCURRENCY > 0)."""

    def __init__(self, request: dict):
        self.token = uuid.uuid4().hex
        request[TOKEN] = self.token

    def __enter__(self) -> list:
        files: list = []
        with _written_lock:
            _written[self.token] = files
        return files

    def __exit__(self, *exc):
        with _written_lock:
            _written.pop(self.token, None)
        return False


_results_dir: str | None = None


def _result_dir() -> str:
    """This process's own folder for result files, made on first use and removed at exit.

    Not TMPDIR itself: MONAILabelClient saves the answer as ``<its tmpdir>/<the server's file name>``,
    by default TMPDIR too, so on one machine the client's copy was the server's path, and the server's
    deletion of its result after answering sometimes deleted the client's copy. The folder is locked
    (flock) for as long as this process lives, which tells a later start that it is in use."""
    global _results_dir, _results_lock
    with _written_lock:
        if _results_dir is None or not os.path.isdir(_results_dir):
            made = tempfile.mkdtemp(prefix=".polypal-results-new-")  # locked before it gets its name
            fd = os.open(made, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            fcntl.flock(fd, fcntl.LOCK_EX)
            final = made.replace(".polypal-results-new-", RESULTS_PREFIX, 1)
            os.rename(made, final)
            if _results_lock is not None:
                os.close(_results_lock)
            _results_dir, _results_lock = final, fd
            atexit.register(shutil.rmtree, final, True)
        return _results_dir


RESULTS_PREFIX = "polypal-res-"
_results_lock: int | None = None
_LEGACY_PREFIX = "polypal-results-"  # before 2026-12-07: no lock


def clean_stale_result_dirs() -> int:
    """Remove the result folders, in the temp dir, of servers that no longer run; returns how many. The exit
    handler above never runs when a server is stopped with SIGTERM (uvicorn re-raises the signal after its
    shutdown), so each stop left an empty folder there. A folder is stale when it is this user's and its
    lock can be taken (a live server holds it; flock works across PID namespaces sharing the folder, where
    a pid check would not). One of an older version (no lock) is removed only when empty."""
    root, n = tempfile.gettempdir(), 0
    try:
        names = [e for e in os.listdir(root) if e.startswith((RESULTS_PREFIX, _LEGACY_PREFIX))]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or path == _results_dir:
            continue
        if name.startswith(_LEGACY_PREFIX):
            try:
                os.rmdir(path)  # only when empty (an older server that is still running makes it again)
                n += 1
            except OSError:
                pass
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its server runs
            os.close(fd)
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            n += not os.path.exists(path)
        finally:
            os.close(fd)
    return n


def _record_written(data: dict, path: str) -> None:
    """Record a result file for its request; a request that has ended already (MONAI Label stopped waiting
    for a thread-pool inference: MONAI_LABEL_INFER_TIMEOUT) gets none: the file is deleted at once."""
    token = data.get(TOKEN)
    with _written_lock:
        files = _written.get(token) if isinstance(token, str) else None
        if files is not None:
            files.append(path)
            return
    if isinstance(token, str):
        os.unlink(path)
        raise TimeoutError("the request ended before its inference finished; result discarded")


class LoadFramed:
    """Decode a frame with the library's reader (RGB, any size), resize and normalise it."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, data):
        d = dict(data)
        rgb = read_rgb(d["image"])
        d["original_hw"] = rgb.shape[:2]
        d["image"] = torch.from_numpy(normalize(resize_rgb(rgb, self.size)[None])[0])
        return d


class ToOriginalLabeld:
    """Sigmoid, back to the frame's original size, threshold 0.5: uint8 (H, W), polyp = 1."""

    def __call__(self, data):
        d = dict(data)
        prob = torch.sigmoid(d["pred"]).detach().cpu().numpy().reshape(d["image"].shape[-2:])
        d["pred"] = (resize_prob(prob, d["original_hw"]) > 0.5).astype(np.uint8)
        return d


class LogitsInferer(Inferer):
    """Our network returns (logits, latent); inference needs the logits."""

    def __call__(self, inputs, network, *args, **kwargs):
        return network(inputs)[0]


class PolypSegInfer(BasicInferTask):
    def __init__(self, model_path: str, profile, labels: dict):
        self.profile = profile
        super().__init__(
            path=model_path,
            network=PolypUNet.from_profile(profile),
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description=f"Polyp segmentation U-Net ({profile.name} profile, {profile.size}x{profile.size})",
            model_state_dict="state_dict",
            config={"result_extension": ".png"},
        )
        self.profile = profile

    def is_valid(self) -> bool:  # listed in /info even before the first model is trained
        return True

    def _get_network(self, device, data):
        """The served model, loaded with weights_only=True and checked against this profile (cached by
        the file's mtime). A file that fails to load is never served: 503 naming the problem."""
        path = self.get_path()
        none = HTTPException(status_code=409, detail="no model trained yet: save some final labels and run "
                                                     "POST /train/polyp_seg first")
        try:
            st = os.stat(path) if path else None
        except FileNotFoundError:  # (deleted just now: a DELETE /model/ between a check and this read was a 500)
            st = None
        if st is None:
            raise none
        cached = self._networks.get(device)
        if cached and cached[1] == (st.st_mtime_ns, st.st_size):
            return cached[0]
        try:
            network, _, _ = load_checkpoint(path, device=device, expect=self.profile)
        except FileNotFoundError:
            raise none from None
        except CheckpointError as e:
            logger.error(f"model not served: {e}")
            raise HTTPException(status_code=503, detail=f"the model file cannot be served: {e.problem}") from None
        self._networks[device] = (network, (st.st_mtime_ns, st.st_size))
        return network

    def pre_transforms(self, data=None):
        return [LoadFramed(self.profile.size)]

    def inferer(self, data=None):
        return LogitsInferer()

    def post_transforms(self, data=None):
        return [ToOriginalLabeld()]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Any, Any]:
        ext = (extension or data.get("result_extension") or ".png").lower()
        if not ext.startswith("."):
            ext = "." + ext
        if ext not in WRITE_EXTENSIONS:
            raise ValueError(f"result_extension {ext!r} not supported; use one of {', '.join(WRITE_EXTENSIONS)}")
        fd, path = tempfile.mkstemp(suffix=ext, prefix="polypal-", dir=_result_dir())
        os.close(fd)
        _record_written(data, path)
        write_label(data["pred"], path)
        h, w = data["pred"].shape
        return path, {"label_names": self.labels, "width": w, "height": h,
                      "polyp_pixels": int(data["pred"].sum())}
