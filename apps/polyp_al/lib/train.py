"""Train task ``polyp_seg``: the library's learner on the frames labeled so far.

Runs in MONAI Label's training subprocess. When the profile picks its weights
by validation (smoke), validation frames are chosen by a hash of the image id
(about 1 in 5), so the split does not shift when labels are added; validation
has no augmentation. The EMA profiles (cpu-lite, paper) train on every label.
The cycle's model (the profile's selection rule: for cpu-lite, the EMA of the
weights at the end) is
written atomically to the infer task's path, and the run's stats to a JSON
file shown in /info.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager

import numpy as np
from monailabel.interfaces.tasks.train import TrainTask

from polypal.data import DataError, frame_id, load_frame
from polypal.learner import labels_to_validate, predicts_no_polyp, save_checkpoint, train
from polypal.learner.augment import augment_kind

logger = logging.getLogger(__name__)


def _iso(t: float) -> str:
    """A local time as ISO 8601 with its offset, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _interrupted(st: dict) -> dict:
    """A RUNNING record whose process is gone: INTERRUPTED, numbered by the last model published."""
    n = int(st.get("model_number") or 0)
    return {**st, "status": "INTERRUPTED", "model_number": max(0, n - 1), "attempt": n,
            "note": "the training process ended without finishing (crash or kill); the previous model, if any, "
                    "is still served"}


def served_labels(st: dict):
    """The number of labels the served model was trained on, from a stats record (None: not known).
    Every record carries ``served_labeled``; a DONE record written before that field counted its frames."""
    if st.get("served_labeled") is not None:
        return st["served_labeled"]
    if st.get("status") == "DONE":
        return (int(st.get("train_frames") or 0) + int(st.get("val_frames") or 0)) or None
    return None


class Unreadable(ValueError):
    """Every labeled frame was skipped (unreadable frame or label): nothing to train on."""


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Busy(Exception):
    """Another thread or process holds the lock."""


@contextmanager
def exclusive(path: str, wait: float = 0.0):
    """A cross-process lock on ``path`` (flock): one training, or one scoring run, at a time, whichever way
    it was started (a subprocess task, or ``run_sync`` inside the server). Tries for ``wait`` seconds (a
    probe such as training_running holds it for microseconds), then raises Busy."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise Busy(path) from None
            time.sleep(0.05)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _held(path: str, wait: float = 0.0) -> bool:
    """Whether another open file holds ``path``'s lock (a training or a scoring run), by a shared probe: two
    probes never block each other (an exclusive probe in one request thread made another's look like a
    running training: a 429 for nothing). Opened read-only and never created: a lock file another account
    made, or a read-only model folder, is no error here. ``wait``: longer than a probe holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return False
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return True
                time.sleep(0.05)
    finally:
        os.close(fd)


def training_running(cfg, wait: float = 0.0) -> bool:
    """True while a training holds the train lock: in another process, or in this one (``run_sync``).
    (flock locks belong to an open file, so this process's own training blocks this probe too.) ``wait``:
    longer than another process's probe of the lock holds it (microseconds)."""
    try:
        return _held(cfg.model_path + ".train.lock", wait)
    except OSError as e:  # (e.g. no permission to read it): no training is known to run
        logger.warning(f"train lock not readable: {e}")
        return False


def scoring_stands_aside(cfg) -> str | None:
    """Why a scoring run started now would only say "skipped" (a training or another scoring run holds its
    lock), or None. A probe holds a lock for microseconds; scoring waits longer than that for its lock."""
    if training_running(cfg):
        return "a training is running; its model is scored when published"
    try:
        return "another scoring run is going" if _held(cfg.model_path + ".score.lock") else None
    except OSError as e:  # the scoring run says what is wrong with it
        logger.debug(f"score lock not readable: {e}")
        return None


class PolypSegTrain(TrainTask):
    def __init__(self, cfg, after_publish=None):
        super().__init__("Train the polyp U-Net on the final labels (BCE + Dice, Adam)")
        self.cfg = cfg
        self.after_publish = after_publish  # e.g. score the pool with the new model, in this process
        self.stats_path = cfg.model_path + ".stats.json"
        self.recover()

    def recover(self) -> None:
        """After a crash during training: /info said RUNNING forever and a partial ``.pt.tmp`` stayed.
        A run whose process is gone is marked INTERRUPTED and its partial file removed."""
        st = self._read_stats()
        running = st.get("status") == "RUNNING"
        if running and _alive(st.get("pid")):
            return
        tmp = self.cfg.model_path + ".tmp"
        if os.path.lexists(tmp):
            try:
                os.unlink(tmp)
                logger.warning(f"removed {tmp}, left by an unfinished save")
            except OSError as e:  # e.g. a folder of that name: the next save fails and says so
                logger.error(f"could not remove {tmp}: {e}")
        if not running:
            return
        if self._published(st) is not None:  # killed after its model was written, before its DONE record
            self._write_stats(self._as_done(st))
            logger.warning(f"training started at {st.get('started')} ended after publishing model "
                           f"{st.get('model_number')}; recorded DONE")
            return
        self._write_stats(_interrupted(st))
        logger.warning(f"training started at {st.get('started')} was interrupted; marked INTERRUPTED")

    def config(self):
        p = self.cfg.profile
        return {"profile": p.name, "size": p.size, "lr": p.lr, "batch_size": p.batch_size,
                "steps": f"{p.min_steps}-{p.max_steps}" if p.max_steps else f"{p.epochs} epochs, at least {p.min_steps}",
                "augment": augment_kind(p), "collapse_retries": p.collapse_retries,
                "fit_floor": p.fit_floor, "seed": self.cfg.seed}

    def _read_stats(self) -> dict:
        try:
            with open(self.stats_path) as f:
                st = json.load(f)
        except (OSError, json.JSONDecodeError):
            return {}
        return st if isinstance(st, dict) else {}

    def stats(self):
        """The last training's record. RUNNING from a process that is gone reads INTERRUPTED (a training killed
        mid-run, e.g. out of memory, never writes its end)."""
        st = self._read_stats()
        if self._published(st) is not None:  # its model is written and served; its DONE record comes a moment
            # later (the model's fsyncs between): /info read that moment as "RUNNING" with the new model served
            # "on ? labels"
            st = self._as_done(st)
        elif st.get("status") == "RUNNING" and not _alive(st.get("pid")):
            st = _interrupted(st)
        return st

    def _as_done(self, st: dict) -> dict:
        """A RUNNING record whose model is already written, as that model's DONE record."""
        return {**st, "status": "DONE", "served_labeled": st.get("labeled"),
                "finished_at": _iso(self._published(st) or time.time())}

    def _published(self, st: dict) -> float | None:
        """The model file's time when a RUNNING training has already written it (newer than its start)."""
        if st.get("status") != "RUNNING" or not isinstance(st.get("started"), (int, float)):
            return None
        try:
            mtime = os.path.getmtime(self.cfg.model_path)
        except OSError:
            return None
        return mtime if mtime >= st["started"] else None

    def _write_stats(self, stats: dict) -> None:
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(tmp, self.stats_path)

    def __call__(self, request, datastore):
        try:
            with exclusive(self.cfg.model_path + ".train.lock", wait=2.0):
                stats = self._train(datastore)
        except Busy:
            from fastapi import HTTPException

            raise HTTPException(status_code=429, detail="a training is already running: one at a time "
                                                        "(GET /info shows its progress)") from None
        except Unreadable as e:
            from fastapi import HTTPException

            raise HTTPException(status_code=422, detail=str(e)) from None
        if self.after_publish is not None:
            # after the lock is released (scoring holds off while a training holds it). MONAI Label's own
            # trigger after training is refused while another scoring run is going, so the new model is
            # scored here, before the training task ends
            try:
                stats["scoring"] = self.after_publish(datastore)
            except Exception as e:  # noqa: BLE001 - the model is published; scoring can rerun later
                logger.error(f"scoring after training failed: {e}")
        return stats

    def _train(self, datastore):
        size = self.cfg.profile.size
        # datalist(): (image, final label) file pairs; the DICOMweb datastore downloads SEGs as NIfTI here
        pairs = sorted((frame_id(d["image"]), d["image"], d["label"]) for d in datastore.datalist())
        # filled in place (a list of arrays stacked after held every label twice at the peak: 5 GB at 10,000
        # labels of the paper profile)
        images = np.empty((len(pairs), size, size, 3), np.uint8)
        masks = np.empty((len(pairs), size, size), bool)
        used, skipped = [], dict(getattr(datastore, "unreadable_labels", None) or {})
        for i, image_path, label_path in pairs:
            try:
                im, m, _ = load_frame(image_path, label_path, size)
            except DataError as e:
                logger.warning(f"training skips {i}: {e}")
                # shown in /info: which file and the problem, not the server's path
                skipped[i] = f"{'label' if e.path == str(label_path) else 'frame'}: {e.problem}"
                continue
            images[len(used)], masks[len(used)] = im, m
            used.append(i)
        images, masks = images[:len(used)], masks[:len(used)]
        if not used:
            if skipped:  # every label there is unreadable: say which and why, in /info too
                why = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5])
                prev = self.stats()
                self._write_stats({"status": "FAILED", "model_number": int(prev.get("model_number") or 0),
                                   "served_labeled": served_labels(prev),
                                   "failed_at": _iso(time.time()), "skipped": skipped,
                                   "error": f"none of the {len(skipped)} labeled frames could be read"})
                raise Unreadable(f"no labeled frame could be read ({len(skipped)} skipped: {why}); the previous "
                                 f"model, if any, is still served")
            raise ValueError("no labeled frames to train on: save at least one final label first")
        # a fifth of the labels (none below 5), stable as labels are added, when the profile picks its
        # weights by validation (smoke); the EMA profiles (cpu-lite, paper) train on every label
        val = labels_to_validate(self.cfg.profile, used)
        t0 = time.time()
        prev = self.stats()
        number = int(prev.get("model_number") or 0) + 1
        served = served_labels(prev)  # the model still served while this one trains
        running = {"status": "RUNNING", "model_number": number, "started": t0, "started_at": _iso(t0), "labeled": len(used),
                   "pid": os.getpid(), "train_frames": int((~val).sum()), "val_frames": int(val.sum()),
                   "served_labeled": served}
        self._write_stats(running)
        last = [0.0]

        def on_step(step, total, loss):
            if step % 20 == 0 or step == total:
                logger.info(f"train step {step}/{total} loss {loss:.4f}")
            now = time.time()
            if now - last[0] >= 2.0 or step == total:  # progress for /info: step, loss, elapsed, time left
                last[0] = now
                elapsed = now - t0
                eta = elapsed / step * (total - step) if step else None
                self._write_stats({**running, "step": step, "total_steps": total, "loss": round(float(loss), 4),
                                   "elapsed_s": round(elapsed, 1), "eta_s": None if eta is None else round(eta, 1),
                                   "eta_at": None if eta is None else _iso(now + eta)})

        kept = {"model_number": number - 1, "served_labeled": served, "attempt": number, "started_at": _iso(t0),
                "skipped": skipped, "train_frames": int((~val).sum()), "val_frames": int(val.sum()),
                "note": "not published: the previous model, if any, is still served"}
        if val.any():
            fit_x, fit_y, val_x, val_y = images[~val], masks[~val], images[val], masks[val]
        else:  # (the EMA profiles: every label trains; images[~val] copied them all again)
            fit_x, fit_y, val_x, val_y = images, masks, images[:0], masks[:0]
        del images, masks
        try:
            res = train(self.cfg.profile, fit_x, fit_y, val_x, val_y, seed=self.cfg.seed, on_step=on_step)
            if predicts_no_polyp(res.model, fit_x, fit_y):  # collapsed after every retry
                stats = {**kept, "status": "COLLAPSED", "retries": res.retries, "steps": res.steps,
                         "finished_at": _iso(time.time()),
                         "error": f"the model predicts no polyp on any of its training frames after "
                                  f"{res.retries} retries"}
                self._write_stats(stats)
                logger.error(f"training collapsed: {stats}")
                return stats
            save_checkpoint(self.cfg.model_path, res.model, self.cfg.profile,
                            extra={"trained_on": used, "best_val": res.best_val, "model_number": number})
        except BaseException as e:
            self._write_stats({**kept, "status": "FAILED", "failed_at": _iso(time.time()),
                               "error": f"{type(e).__name__}: {str(e)[:300]}"})
            raise
        stats = {
            "status": "DONE", "model_number": number, "served_labeled": len(used), "profile": self.cfg.profile.name,
            "train_frames": int((~val).sum()),
            "val_frames": int(val.sum()), "steps": res.steps, "best_step": res.best_step, "retries": res.retries,
            **({"fit_dice": round(res.fit_dice, 4)} if res.fit_dice is not None else {}),
            "best_val": res.best_val, "seconds": round(res.seconds, 1), "finished": time.time(),
            "started_at": _iso(t0), "finished_at": _iso(time.time()),
            "skipped": skipped, "model": os.path.basename(self.cfg.model_path),
        }
        self._write_stats(stats)
        logger.info(f"training done: {stats}")
        return stats
