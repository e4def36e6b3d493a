"""polyp-al: a MONAI Label app for task-aware active learning in polyp segmentation.

    monailabel start_server --app apps/polyp_al --studies <folder of frames> \
        --conf profile cpu-lite --conf batch_size 100 --conf gamma 0.5

The classes here only wire MONAI Label to the polypal library (lib/ at the
repository root): infer, train, scoring and every strategy call into it.

Size (over ~250 lines): every method is a hook MONAI Label calls on its app class (init_*,
info, next_sample, infer, on_save_label, async_scoring); the work is in lib/ and polypal.
"""

import datetime
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Dict

from fastapi import HTTPException
from lib.auth import current_saver
from lib.auth import enabled as auth_enabled
from lib.config import AppConfig, ConfError, warn_unused_model
from lib.datastore import PolypDatastore, labeled_set, take_saved_client, take_saved_tag, take_saved_unchanged
from lib.infer import PolypSegInfer, clean_stale_result_dirs, written_results
from lib.quality import LabelQuality
from lib.scoring import PolypScoring
from lib.strategy import PlannedStrategy
from lib.train import PolypSegTrain, scoring_stands_aside

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from polypal.serving import ActiveLearningState, model_version, refresh_due
from polypal.sampler import resolve, server_strategies
from polypal.data import DataError, TooLarge
from polypal.vocab import IMAGE_EXTENSIONS, InvalidName, check_name, client_name, patterns

logger = logging.getLogger(__name__)
LABELS = {"polyp": 1}


def _is_upload(path: str) -> bool:
    """A file MONAI Label's infer endpoint wrote from this request's upload (tempfile in the temp dir).
    The endpoint refuses a client-given path before it gets here (lib.security)."""
    return os.path.isabs(path) and os.path.dirname(path) == tempfile.gettempdir() \
        and os.path.basename(path).startswith("tmp") and os.path.isfile(path)



def _starting(st: dict) -> dict:
    """A training that MONAI Label has accepted but whose process has not yet written RUNNING (it is loading
    the labeled frames) reads STARTING, not the last training's DONE: a client that waits while the status
    is STARTING or RUNNING no longer stops at once."""
    from lib.train import served_labels
    from monailabel.utils.async_tasks.utils import tasks

    try:
        last = (tasks("train") or [None])[-1]
    except Exception:  # noqa: BLE001 - MONAI Label's bookkeeping: /info still answers
        return st
    if not isinstance(last, dict) or last.get("status") not in ("SUBMITTED", "RUNNING"):
        return st
    if st.get("status") == "RUNNING":
        return st
    try:  # a record this task's process wrote already (e.g. DONE, then it scores the pool before it exits)
        asked = time.mktime(time.strptime(str(last.get("start_ts")), "%Y-%m-%d %H:%M:%S"))
        when = st.get("started_at") or st.get("failed_at")
        if when and datetime.datetime.strptime(when, "%Y-%m-%dT%H:%M:%S%z").timestamp() >= asked:
            # RUNNING until the process has exited: a client that trains again as soon as the status leaves
            # STARTING/RUNNING got 429 (MONAI Label's task was still running)
            done = st.get("status") == "DONE"
            return {**st, "status": "RUNNING", "result": st.get("status"),
                    "finishing": ("model written and served; its training process is scoring the pool with it "
                                  "before it exits" if done else f"training {str(st.get('status')).lower()}; its "
                                  f"process is ending") + " (a new training can start then)"}
    except (TypeError, ValueError, OverflowError):
        pass
    return {"status": "STARTING", "model_number": st.get("model_number"), "served_labeled": served_labels(st),
            "requested_at": last.get("start_ts"), "note": "the training process is starting (reading the labeled "
            "frames); the previous model, if any, is served meanwhile", "previous": st}


_SCORING_SUBMIT = threading.Lock()


SUBMITTED_STALE_S = 30  # a task still SUBMITTED after this never started (its process failed to spawn)


_TRAIN_SUBMIT = threading.Lock()

TASK_HISTORY = 100  # finished tasks of each kind MONAI Label keeps listed (GET /scoring/?all=true, /train/)
INFO_MODELS = 50  # /info lists the quality of the newest that many models (one entry each: ~140 bytes)


def _trim_task_history(method: str) -> None:
    """MONAI Label keeps a record of every task it ever ran (its request and last output lines, about 5 KB)
    in the server's memory: one per training and scoring run, for as long as the server runs (tens of MB
    over months, scanned at every trigger). Only the last ``TASK_HISTORY`` finished ones stay, with every
    task not finished (one SUBMITTED an hour ago never started, its spawn having failed: it counts as
    finished). A new list takes the old one's place, so a reader walking the old one (MONAI
    Label's status and stop) is not thrown off. Called under the method's submit lock, where tasks are
    added."""
    from monailabel.utils.async_tasks import utils as async_utils

    try:
        listed = async_utils.background_tasks.get(method) or []
        done = [t for t in listed if isinstance(t, dict) and (t.get("status") not in ("SUBMITTED", "RUNNING")
                                                              or (_submitted_for(t) or 0) >= 3600)]
        if len(done) > TASK_HISTORY:
            drop = {id(t) for t in done[: len(done) - TASK_HISTORY]}
            async_utils.background_tasks[method] = [t for t in listed if id(t) not in drop]
    except Exception as e:  # noqa: BLE001 - MONAI Label's bookkeeping: a longer list is no failure
        logger.debug(f"{method} task history not trimmed: {e}")


def _submitted_for(task: dict) -> float | None:
    """Seconds since a SUBMITTED task was submitted; None for any other task, or a time that does not read."""
    if task.get("status") != "SUBMITTED":
        return None
    try:
        return time.time() - time.mktime(time.strptime(str(task.get("start_ts")), "%Y-%m-%d %H:%M:%S"))
    except (TypeError, ValueError, OverflowError):
        return None


def _task_pending(method: str) -> bool:
    """A task of ``method`` ("scoring" or "train") is submitted or running. MONAI Label's own check
    (``AsyncTask.run``) looks only at running processes: a second run submitted before the first one's process
    started was queued behind it, and such a queued run started its process while the server was shutting down
    and outlived it (writing into the studies folder's state after the server had gone). A task left SUBMITTED
    for long never started (MONAI Label loses a failed spawn's error and never updates it): not pending, or
    scoring would stop for good."""
    from monailabel.utils.async_tasks.utils import tasks

    try:
        for t in tasks(method) or []:
            if not isinstance(t, dict):
                continue
            if t.get("status") == "RUNNING":
                return True
            age = _submitted_for(t)
            if age is not None and age < SUBMITTED_STALE_S:
                return True
        return False
    except Exception:  # noqa: BLE001 - MONAI Label's bookkeeping: then its own check decides
        return False


def _guard_scoring_endpoint() -> None:
    """``POST /scoring/<method>`` checks and submits under the same lock as the app's own triggers (a check in
    the Gate alone let two requests at once, or one racing a trigger, both through: the second was queued)."""
    import monailabel.endpoints.scoring as scoring

    run_method = scoring.run_method

    def checked(method, params=None, run_sync=False):
        if run_sync:  # in this process, under the scoring lock file (lib.scoring): nothing is queued
            return run_method(method, params, run_sync)
        with _SCORING_SUBMIT:
            if _task_pending("scoring"):
                raise HTTPException(status_code=429, detail="a scoring run is starting or running: one at a time "
                                                            "(GET /scoring/ shows it)")
            _trim_task_history("scoring")
            return run_method(method, params, run_sync)

    scoring.run_method = checked


def _guard_train_endpoint() -> None:
    """``POST /train/<model>`` during a training: MONAI Label's own 429 says "++++++++++ Train Task is Already
    Running"; said here as what to do."""
    import monailabel.endpoints.train as train

    run_model = train.run_model

    busy = HTTPException(status_code=429, detail="a training is already running: one at a time (GET /train/ or "
                                                 "/info/ shows it; POST again when it has finished)")

    def said(model, params=None, run_sync=False, enqueue=False):
        try:
            if run_sync:  # in this process, under the model's train lock (lib.train): nothing is queued
                return run_model(model, params, run_sync, enqueue)
            # MONAI Label's own check sees only a started process: a second POST before the first one's process
            # started was queued behind it (a second training, run after the first)
            with _TRAIN_SUBMIT:
                if _task_pending("train"):
                    raise busy
                _trim_task_history("train")
                return run_model(model, params, run_sync, enqueue)
        except HTTPException as e:
            if e.status_code == 429 and "already running" in str(e.detail).lower():
                raise busy from None
            raise

    train.run_model = said


def _port_taken() -> str | None:
    """"port P on H is in use" when the address ``monailabel start_server`` is about to listen on is taken,
    tested as asyncio binds (each address of the host, SO_REUSEADDR, IPv6 sockets IPv6-only); None when free
    or when it cannot be told. Not in uvicorn's worker processes (``--workers N``): their parent holds the
    socket, so the port is always taken there."""
    import argparse
    import errno
    import multiprocessing
    import socket

    from monailabel.config import settings

    if multiprocessing.parent_process() is not None:
        return None
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("-i", "--host", default="0.0.0.0")
    ap.add_argument("-p", "--port", type=int, default=settings.MONAI_LABEL_SERVER_PORT)
    ap.add_argument("--workers", type=int, default=None)
    try:
        a, _ = ap.parse_known_args(sys.argv[1:])
        if a.workers and a.workers > 1:  # uvicorn's parent binds before it starts the workers, and says so
            return None
        for family, kind, proto, _, addr in socket.getaddrinfo(a.host or None, a.port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE):
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(addr)
    except OSError as e:
        return f"port {a.port} on {a.host} is in use (another server?)" if e.errno == errno.EADDRINUSE else None
    except (SystemExit, ValueError, IndexError):  # argv not start_server's: nothing to tell
        return None
    return None


STARTUP_FAILED = "polyp-al cannot start: "


class StartupError(RuntimeError):
    """A setting or a file the server cannot start with; its message is the whole story (no traceback)."""


class _OneLineStartupErrors(logging.Filter):
    """uvicorn logs a failed start-up as the whole traceback (90 lines for a misspelt --conf value): for a
    StartupError, only its message is logged."""

    def filter(self, record):
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Traceback") and STARTUP_FAILED in msg:
            record.msg, record.args = msg[msg.rindex(STARTUP_FAILED):].strip(), ()
        return True


logging.getLogger("uvicorn.error").addFilter(_OneLineStartupErrors())


class PolypALApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        from polypal.serving.framestore import LinkedFolder
        from polypal.serving.sqlite_db import DamagedDatabase

        try:
            self._start(app_dir, studies, conf)
        except (ConfError, DamagedDatabase, LinkedFolder) as e:
            raise StartupError(STARTUP_FAILED + str(e)) from None

    def _start(self, app_dir, studies, conf):
        # the venv's tools (dcmqi's itkimage2segimage) even when the server was started without activating it
        bindir = os.path.dirname(sys.executable)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        self.cfg = AppConfig.from_conf(app_dir, studies, conf)
        warn_unused_model(app_dir, studies, conf, self.cfg.model_path)
        if not studies.startswith(("http://", "https://")):  # before the state database is opened in .polypal
            from polypal.serving.framestore import check_folders  # (through a linked one it was made or opened)

            check_folders(os.path.realpath(studies))
        self.state = ActiveLearningState(self.cfg.state_dir, batch_size=self.cfg.batch_size, gamma=self.cfg.gamma,
                                         lease_seconds=self.cfg.lease_seconds, seed=self.cfg.seed, background=True,
                                         video_cap=self.cfg.video_cap,
                                         studies=None if studies.startswith(("http://", "https://")) else studies)
        self.state.leases.shorten_to_timeout()  # leases survive a restart, under this run's lease_timeout
        self.scorer = PolypScoring(self.cfg, self.state)
        self._last_scoring = (None, 0.0)
        self.quality = LabelQuality(self.cfg, self.state)
        import torch

        torch.set_num_threads(self.cfg.threads)  # training and scoring never run at once (lib.scoring)
        logger.info(f"polyp-al: profile {self.cfg.profile.name}, model {self.cfg.model_path}, "
                    f"batch {self.cfg.batch_size}, gamma {self.cfg.gamma}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="polyp-al",
            description="Task-aware active learning for endoscopic polyp segmentation",
            version=monailabel.__version__,
            labels=LABELS,
        )

    def _load_sessions(self, load=False):
        """MONAI Label's sessions are off in this app: it cannot use them (infer takes an image id or a
        file), and their upload unpacks archives without checking member paths."""
        return None

    def on_init_complete(self):
        """Server process only (MONAI Label calls this once the app exists): narrow the HTTP surface."""
        clean_stale_result_dirs()  # of servers stopped before (a SIGTERM leaves them); not in the training and
        # scoring subprocesses, which construct the app too
        taken = _port_taken()
        auto = self._auto_update_scoring
        if taken:  # uvicorn binds after this and will exit: no start-up scoring run re-planning the batches of
            # the server that holds the port (the same studies folder, started twice by mistake)
            logger.error(f"{taken}: start-up scoring skipped; this server will not start")
            self._auto_update_scoring = False
        try:
            super().on_init_complete()
        finally:
            self._auto_update_scoring = auto
        import monailabel.app
        from lib.security import harden

        harden(monailabel.app.app, self, self.cfg.allowed_origins, self.cfg.allowed_hosts)
        _guard_scoring_endpoint()
        _guard_train_endpoint()
        from lib.annotate import mount  # the annotator's page: OHIF under /annotate/ (read-only files)

        mount(monailabel.app.app, self.conf.get("ohif_dir") or None)
        from lib import api_docs  # the API page at /: Swagger UI served here, not from a CDN

        api_docs.mount(monailabel.app.app)

    def bundle_path(self, model):
        """No MONAI bundles here. (MONAI Label puts a request's ``bundle_path`` on a subprocess's PYTHONPATH;
        lib.security refuses that key from clients.)"""
        return None

    def precheck(self, method: str, path: str):
        """(status, sentence) for a request that cannot work, before MONAI Label starts a subprocess for it."""
        if method == "POST" and path.startswith(("/scoring/", "/train/")):
            linked = self._linked_folder()
            if linked:  # its process would not start (it opens the datastore): a traceback in the task's log
                return 409, linked
        if method == "POST" and path.startswith("/scoring/") and path.strip("/") != "scoring":
            name = path[len("/scoring/"):].strip("/")
            if name not in self._scoring_methods:
                return 404, f"no scoring method {name[:80]!r}; this app has {sorted(self._scoring_methods)}"
            if _task_pending("scoring"):  # MONAI Label would queue it behind the one starting (see _task_pending)
                return 429, "a scoring run is starting or running: one at a time (GET /scoring/ shows it)"
        if method == "POST" and (path == "/train/" or path.startswith("/train/")):
            name = path[len("/train/"):].strip("/")
            if name and name not in self._trainers:
                return 404, f"no trainer {name[:80]!r}; this app trains {sorted(self._trainers)}"
            if not self.datastore().get_labeled_images():
                return 409, "nothing to train on yet: save at least one final label (PUT /datastore/label) first"
            from lib.train import training_running

            if training_running(self.cfg):  # before a subprocess is started that would only find the lock held
                return 429, "a training is already running: one at a time (GET /info shows its progress)"
        return None

    def _linked_folder(self) -> str | None:
        """Why no training or scoring process can start now: a label folder of the studies folder made a
        symbolic link while the server runs (``FrameStore.check_folders``); None otherwise."""
        from polypal.serving.framestore import LinkedFolder

        store = getattr(getattr(self, "_datastore", None), "store", None)
        try:
            if store is not None:
                store.check_folders()
        except LinkedFolder as e:
            return str(e)
        return None

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            # endoscopy frames are Modality ES (MONAI Label's default filter is CT)
            from monailabel.config import settings

            if settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER == {"Modality": "CT"}:
                settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER = {"Modality": "ES"}
            return self._dicomweb_datastore(settings)
        if self.conf.get("datastore", "polypal") == "local":  # MONAI Label's own, for comparisons
            from monailabel.datastore.local import LocalDatastore

            return LocalDatastore(self.studies, extensions=list(patterns(IMAGE_EXTENSIONS)))
        return PolypDatastore(self.studies, on_change=self._frame_changed)

    def _dicomweb_datastore(self, settings):
        """MONAI Label's DICOMweb datastore (as its base app builds it), with checked frame labels."""
        from lib.dicomweb_datastore import PolypDICOMwebClient, PolypDICOMWebDatastore

        self.studies = self.studies.rstrip("/").strip()
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            from dicomweb_client.session_utils import create_session_from_user_pass

            session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                    settings.MONAI_LABEL_DICOMWEB_PASSWORD)
        client = PolypDICOMwebClient(url=self.studies, session=session,
                                     qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                     wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                     stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
        self._download_dcmqi_tools()  # a no-op: dcmqi's itkimage2segimage comes from PyPI, in the venv
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        ds = PolypDICOMWebDatastore(client=client, search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
                                    cache_path=cache, fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                                    convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI)
        ds.pending_dir = os.path.join(self.cfg.state_dir, "pending-labels")
        if ds.pending_labels():  # labels kept after a failed store in an earlier run: send them again
            threading.Thread(target=ds.retry_pending, name="polypal-pending-labels", daemon=True).start()
        return ds

    def init_infers(self):
        return {"polyp_seg": PolypSegInfer(self.cfg.model_path, self.cfg.profile, LABELS)}

    def init_trainers(self):
        return {"polyp_seg": PolypSegTrain(self.cfg, after_publish=lambda ds: self.scorer({}, ds))}

    def init_scoring_methods(self):
        return {"polyp_al": self.scorer}

    def init_strategies(self) -> Dict:
        return {name: PlannedStrategy(name, self.cfg, self.state) for name in server_strategies()}

    def model_info(self, model):
        """MONAI Label's, from one open file: its check, stat and checksum each opened the path, and a model
        deleted or replaced in between was a 500 (or a checksum of one file with the time of another)."""
        import hashlib

        file = self.model_file(model)
        if not file:
            return None
        try:
            with open(file, "rb") as f:
                st, h = os.fstat(f.fileno()), hashlib.sha256()
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        info = {"checksum": f"SHA256:{h.hexdigest()}", "modified_time": int(st.st_mtime)}
        task = self._trainers.get(model)
        train_stats = task.stats() if task else None
        if train_stats:
            info["train_stats"] = train_stats
        return info

    def info(self):
        meta = super().info()
        stats = meta.get("train_stats") or {}
        if isinstance(stats.get("polyp_seg"), dict):
            stats["polyp_seg"] = _starting(stats["polyp_seg"])
        try:
            labeled = labeled_set(self.datastore())
        except Exception as e:  # noqa: BLE001 - e.g. the DICOMweb server is down: /info still answers
            logger.debug(f"plan counts not available: {e}")
            labeled = None
        store = getattr(self._datastore, "store", None)
        state = self.state.summary(labeled, store.image_set() if store is not None else None)
        meta["polyp_al"] = {"profile": self.cfg.profile.name, "batch_size": self.cfg.batch_size,
                            "gamma": self.cfg.gamma, "model": self._model_name(),
                            "has_model": os.path.exists(self.cfg.model_path), "state": state,
                            "annotators": self.state.annotators(labeled), "video": self._video_summary(),
                            "quality": {**self.state.quality(last=INFO_MODELS),
                                        "what": "per model: polyp Dice of its prediction on frames labeled while it "
                                                "was current and that it never trained on (harder frames than "
                                                "average when the strategy picks uncertain ones); the newest "
                                                f"{INFO_MODELS} models here, every model in the export's "
                                                "quality.json"}}
        return meta

    def _video_summary(self):
        """Videos, frames, near-duplicate groups and flagged frames of an ingested folder (None otherwise)."""
        if not self.state.studies:
            return None
        from polypal.video import load_index

        vi = load_index(self.state.studies)
        return vi.summary() if vi.video_of or vi.problem else None

    def _model_name(self) -> str:
        """e.g. "model 3, trained 2026-11-28T10:02:11+0000 on 40 labels" (or "no model yet")."""
        if not os.path.exists(self.cfg.model_path):
            return "no model yet"
        st = self._trainers["polyp_seg"].stats() if "polyp_seg" in self._trainers else {}
        n = st.get("model_number") if st.get("status") != "RUNNING" else (st.get("model_number") or 1) - 1
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(os.path.getmtime(self.cfg.model_path)))
        from lib.train import served_labels

        labels = served_labels(st) or "?"  # the served model's, not a running training's
        return f"{'model ' + str(n) + ', ' if n else ''}trained {when} on {labels} labels"

    def on_sign_out(self, client_id: str) -> None:
        """A signed-in annotator signed out (authentication on): the frame they held is served to others now,
        not after the lease timeout."""
        n = self.state.leases.release_client(client_id)
        if n:
            logger.info(f"{client_id} signed out: {n} leased frame(s) back in the pool")

    def on_save_label(self, image_id, label_id):
        """After a label is saved: the current model's Dice on it (a free quality measurement), in the answer."""
        res = super().on_save_label(image_id, label_id) or {}
        sent, unchanged = take_saved_client(), take_saved_unchanged()
        if take_saved_tag() != DefaultLabelTag.FINAL:  # e.g. a prediction saved as "original": not a label
            return res
        if unchanged:  # the same label already stored: its annotator keeps the credit
            res["unchanged"] = True
        try:  # labeled: its lease is done (the leases /info counts are the frames being labeled now)
            self.state.leases.release(image_id)
        except Exception as e:  # noqa: BLE001 - the label is saved; an unreleased lease times out
            logger.warning(f"lease of {image_id} not released: {e}")
        from lib.dicomweb_datastore import PolypDICOMWebDatastore

        if not isinstance(self._datastore, (PolypDatastore, PolypDICOMWebDatastore)):  # MONAI Label's own:
            return res  # no served record to credit
        try:
            served = (self._datastore.get_image_info(image_id) or {}).get("served") or {}
            who, since = str(served.get("client_id") or "unknown"), served.get("ts")
            # authentication on: the signed-in user who saved it, served to them or not; off: the client_id
            # the save sent (before, the client the frame was served to last, who was credited with a label
            # another annotator drew after their lease ran out and the frame went to the other)
            saver = current_saver()
            if saver is None and not auth_enabled():
                saver = sent
            if saver is not None and saver != who:
                who, since = saver, None  # not served to them: no pace
            if not unchanged:
                self.state.add_effort(image_id, who, since, time.time(), model_version(self.cfg.model_path))
        except Exception as e:  # noqa: BLE001 - bookkeeping only
            logger.debug(f"effort not recorded for {image_id}: {e}")
        try:
            dice = self.quality(self._datastore, image_id)
        except Exception as e:  # noqa: BLE001 - the label is saved; quality is a bonus
            logger.warning(f"label quality for {image_id} not measured: {e}")
            dice = None
        if dice is not None:
            res["model_dice"] = round(dice, 4)
        return res

    def next_sample(self, request):
        """MONAI Label's next_sample, without a scoring subprocess after every request.

        Scoring reruns when it can change the answer: when the frame came from a
        fallback (no model scores or thumbnails yet), from a batch planned with an
        older model, or at the end of a batch.
        Training already triggers scoring when it publishes a model.
        """
        name = request.get("strategy") or "random"
        if not isinstance(name, str):
            raise HTTPException(status_code=400, detail="strategy must be a string")
        try:  # an int id is kept as its text: SQLite cannot hold a 128-digit integer
            client = client_name(request.get("client_id"))
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        request = {**request, "client_id": client}  # (a blank one is none: the client's own lease, anonymous)
        task = self._strategies.get(name)
        if task is None:  # the paper's and polypal-sim's names too (unc_ta_coreset, uncertainty): one method each
            try:
                spec = resolve(name)
            except ValueError:
                spec = None
            if spec is not None and spec.server_name in self._strategies:
                name, task = spec.server_name, self._strategies[spec.server_name]
                request = {**request, "strategy": name}
        if task is None:
            also = sorted({a for s in server_strategies().values() for a in (s.name, *s.aliases)} - set(self._strategies))
            raise HTTPException(status_code=404, detail=f"no strategy {name!r}; available: {sorted(self._strategies)}"
                                                        f" (also by their offline names: {', '.join(also)})")
        for _ in range(5):  # a frame the datastore refuses (a DICOM series that is no frame: 4xx) is marked bad
            res = task(request, self.datastore())
            if not res or not res.get("id"):
                # every frame labeled, or the rest leased to other annotators: {} either way, as MONAI Label's
                # clients expect (a 409 for "leased" made Slicer and MONAILabelClient raise at a pool's end)
                return {}
            try:
                res["path"] = self._datastore.get_image_uri(res["id"])
                break
            except HTTPException as e:
                if not 400 <= e.status_code < 500:
                    raise
                logger.warning(f"not serving {res['id']}: {e.detail}")
                self.state.features.mark_bad(res["id"], str(e.detail))
                self.state.leases.release(res["id"])
        else:
            return {}
        try:  # how the frame was served, for the export's manifest
            served = {"served": {
                "al_strategy": name, "picked_by": res.get("picked_by"), "cycle": res.get("cycle"),
                "model_version": res.get("model_version"), "client_id": request.get("client_id") or "anonymous",
                "ts": int(time.time())}}
            if isinstance(self._datastore, PolypDatastore):  # the server's own record: not under the clients' cap
                self._datastore.store.update_image_info(res["id"], served, limit=None)
            else:
                self._datastore.update_image_info(res["id"], served)
        except Exception as e:  # noqa: BLE001 - e.g. a DICOMweb datastore: the answer matters more
            logger.debug(f"served-info not recorded for {res['id']}: {e}")
        stop = self.state.stopping()
        if stop:
            res["note"] = f"{res['note']}; {stop}" if res.get("note") else stop
        if self._auto_update_scoring and refresh_due(res, model_version(self.cfg.model_path)):
            self._score_if_useful()
        return res

    def _frame_changed(self, image_id: str):
        """A frame was added, replaced or deleted: what was known of its old file goes, and the next scoring
        run is not skipped as "nothing changed" (a replace leaves the frame and label counts as they were)."""
        self.state.features.forget(image_id)
        self._frame_changes = getattr(self, "_frame_changes", 0) + 1
        store = getattr(self._datastore, "store", None) if hasattr(self, "_datastore") else None
        if store is not None and store.image_ext(image_id) is None:  # deleted: nobody is labeling it any more
            self.state.leases.release(image_id)

    def _score_if_useful(self):
        """Start one scoring run, unless one is running or the last one saw the same state (model
        version, frames, labels, frame replacements): then it would change nothing."""
        from monailabel.utils.async_tasks.task import AsyncTask

        ds = self.datastore()
        key = (model_version(self.cfg.model_path), len(ds.list_images()), len(ds.get_labeled_images()),
               getattr(self, "_frame_changes", 0))
        now = time.time()
        if key == self._last_scoring[0] and now - self._last_scoring[1] < 300:
            return
        with _SCORING_SUBMIT:
            if _task_pending("scoring"):
                return
            # (a training takes its lock only once its process has imported torch: 10 s here)
            aside = "a training is starting" if _task_pending("train") else \
                self._linked_folder() or scoring_stands_aside(self.cfg)
            if aside:  # its process would import torch and the app (seconds of CPU) to say "skipped": one
                # started per next-sample while a training ran or a long scoring run held the lock
                logger.debug(f"scoring not started: {aside}")
                return
            _trim_task_history("scoring")
            res, why = AsyncTask.run("scoring", request={"method": "polyp_al"}, enqueue=False)
        if res is not None:
            self._last_scoring = (key, now)

    def async_scoring(self, method, params=None):
        """MONAI Label queues a scoring run per trigger (a storm on a busy server): at most one runs."""
        from monailabel.utils.async_tasks.task import AsyncTask

        if not self._server_mode:
            # a training subprocess: MONAI Label's trigger after training asked the server for a scoring run
            # over HTTP, refused while the training's own scoring (after_publish, which scores the new model
            # before the task ends) held it: an ERROR "Failed To Trigger Scoring" after every training
            logger.debug("scoring trigger skipped outside the server: the training scored its model")
            return None
        with _SCORING_SUBMIT:
            if _task_pending("scoring"):
                return None
            _trim_task_history("scoring")
            res, _ = AsyncTask.run("scoring", request={"method": method or "polyp_al"}, params=params, enqueue=False)
        return res

    def infer(self, request, datastore=None):
        """MONAI Label's infer, with: image ids only (a path is "unknown image id" unless it is this
        request's own upload), predictions never saved over a label (tag "original" only), and clear
        4xx errors that name the image, not a server path. An uploaded file is deleted on failure."""
        if request.get("model") not in self._infers:
            raise HTTPException(status_code=404, detail=f"no model {str(request.get('model'))[:80]!r}; "
                                                        f"this app serves {sorted(self._infers)}")
        image = request.get("image")
        upload = None
        if not isinstance(image, str):
            raise HTTPException(status_code=400, detail="image must be an image id of the datastore")
        ds = datastore or self.datastore()
        if _is_upload(image):
            upload = image
        else:
            try:
                check_name("image id", image)
            except InvalidName:
                raise HTTPException(status_code=404, detail=f"unknown image id {image[:80]!r}") from None
            uri = ds.get_image_uri(image)
            if not uri:
                raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")
        if request.get("model") == "polyp_seg" and not os.path.exists(self.cfg.model_path):  # after the id's 404
            raise HTTPException(status_code=409, detail="no model trained yet: save some final labels and run "
                                                        "POST /train/polyp_seg first")
        # MONAI Label reads request["image"] as a file path first when one of that name exists relative to the
        # server's working directory: hand it the frame's absolute path, so an id never reaches a file outside
        # the datastore, and save the prediction (tag "original" only, never over an annotator's label) here
        if request.get("store_seg"):
            self._check_store_seg(request)
        save_as = image if (upload is None and request.get("save_label")) else None
        if upload is None:
            request = {**request, "image": os.path.abspath(uri), "save_label": False}
        name = "the uploaded image" if upload else f"image {image}"
        written: list = []
        try:
            try:
                with written_results(request) as written:
                    res = super().infer(request, datastore)
            except TooLarge as e:
                raise HTTPException(status_code=413, detail=f"{name}: {e.problem}") from None
            except DataError as e:
                raise HTTPException(status_code=422, detail=f"{name}: {e.problem}") from None
            except TimeoutError:  # MONAI_LABEL_INFER_CONCURRENCY > 0: waited MONAI_LABEL_INFER_TIMEOUT seconds
                raise HTTPException(status_code=504, detail=f"{name}: the inference did not finish in time (the "
                                                            f"server is busy); try again") from None
            except (ValueError, TypeError, AttributeError, KeyError) as e:  # bad request parameters
                logger.warning(f"infer refused: {type(e).__name__}: {e}")
                raise HTTPException(status_code=400, detail=f"bad request parameters: "
                                    f"{str(e).replace(tempfile.gettempdir(), '<tmp>')[:200]}") from None
            if save_as and res and res.get("file") and os.path.exists(res["file"]):
                res["label"] = ds.save_label(save_as, res["file"], "original",
                                             {"model": request.get("model"), "params": res.get("params")})
            if request.get("store_seg") and res and res.get("file"):
                self._store_prediction_seg({**request, "image": image}, res)
        except BaseException:
            for f in ([upload] if upload else []) + written:
                if os.path.exists(f):
                    os.unlink(f)
            raise
        return res

    def _check_store_seg(self, request):
        from lib.dicomweb_datastore import PolypDICOMWebDatastore

        if not isinstance(self.datastore(), PolypDICOMWebDatastore):
            raise HTTPException(status_code=400, detail="store_seg needs a DICOMweb datastore (--studies http://...)")
        image = request.get("image")
        if not isinstance(image, str) or os.path.exists(image):
            raise HTTPException(status_code=400, detail="store_seg needs the image's id in the datastore")

    def _store_prediction_seg(self, request, res):
        """params {"store_seg": true}: the prediction also goes to the DICOMweb server as a DICOM SEG
        (series "polyp-al prediction (model <date>)"), to view over the frame in OHIF. Not a training label."""
        from lib.dicomweb_datastore import PREDICTION_DESCRIPTION

        ds, image = self.datastore(), request["image"]
        trained = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(self.cfg.model_path)))
        series = ds.store_prediction(image, res["file"], f"{PREDICTION_DESCRIPTION} (model {trained})")
        res.setdefault("params", {})["seg_series"] = series
        if not series:
            res["params"]["seg_note"] = "no polyp predicted: nothing to show, no SEG stored"
        logger.info(f"prediction for {image} stored as DICOM SEG series {series}")
