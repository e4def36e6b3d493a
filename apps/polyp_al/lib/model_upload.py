"""``PUT/DELETE /model/polyp_seg`` when the operator turned them on (``--conf allow_model_upload true``).

An upload is written next to the served model, loaded with ``weights_only=True``
and checked against this server's profile (same U-Net); only then is it
renamed over the served model (atomic). The model it replaces, and a deleted
model, are kept beside it as ``<model>.<time>.replaced`` / ``.deleted``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

from fastapi import FastAPI, File, HTTPException, UploadFile

from polypal.learner import CheckpointError, load_checkpoint
from polypal.serving.fileops import create_new, fsync_dir

logger = logging.getLogger(__name__)
MAX_MODEL_BYTES = 1 << 30



def _kept_name(dest: str, why: str) -> str:
    """``<model>.<time>.<why>``, with -2, -3... when that name is taken (two in one second kept both)."""
    base, k = f"{dest}.{time.strftime('%Y%m%d-%H%M%S')}", 1
    while os.path.lexists(name := f"{base}{'' if k == 1 else f'-{k}'}.{why}"):
        k += 1
    return name


def _keep(dest: str, why: str, move: bool = False) -> str:
    """The model at ``dest`` kept under a new name, reserved first (an empty file made with O_EXCL: two uploads
    at once picked one name, and the second copy replaced the first). ``move``: the model itself goes there
    (one rename: a training publishing meanwhile is never lost between two steps); else a hard link, or a
    copy where the file system has none, renamed over the reservation."""
    while True:
        name = _kept_name(dest, why)
        try:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:  # taken since the check: the next name
            continue
    part = name + ".part"
    try:
        if move:
            os.replace(dest, name)
            return name
        try:
            os.link(dest, part)
        except OSError:  # no hard links on this file system: a copy
            shutil.copy2(dest, part)
            with open(part, "rb") as f:
                os.fsync(f.fileno())
        os.replace(part, name)
        return name
    except BaseException:
        for p, only_if_empty in ((part, False), (name, True)):  # (the reservation, when nothing went there)
            try:
                if not only_if_empty or os.path.getsize(p) == 0:
                    os.unlink(p)
            except OSError:
                pass
        raise


_WRITES = threading.Lock()  # one upload or delete at a time: each keeps the model it found

def _check_model_name(app, model: str) -> None:
    if model not in app._infers:
        raise HTTPException(status_code=404, detail=f"no model {model[:80]!r}; this app serves {sorted(app._infers)}")


def model_api(app):
    """A small FastAPI app answering PUT/DELETE /model/{model} (the Gate sends those requests here)."""
    api = FastAPI()

    @api.put("/model/{model}")
    def update_model(model: str, file: UploadFile = File(...)):
        _check_model_name(app, model)
        dest = app.cfg.model_path
        fd, tmp = create_new(os.path.dirname(dest), suffix=".pt")  # its mode as a trained model's (not 0600)
        try:
            with os.fdopen(fd, "wb") as out:
                n = 0
                while True:
                    buf = file.file.read(1 << 20)
                    if not buf:
                        break
                    n += len(buf)
                    if n > MAX_MODEL_BYTES:
                        raise HTTPException(status_code=413, detail=f"model file larger than {MAX_MODEL_BYTES} bytes")
                    out.write(buf)
                out.flush()
                os.fsync(out.fileno())
            try:
                _, profile, _ = load_checkpoint(tmp, device="cpu", expect=app.cfg.profile)
            except CheckpointError as e:
                raise HTTPException(status_code=422, detail=f"model refused: {e.problem}") from None
            with _WRITES:
                if os.path.exists(dest):
                    _keep(dest, "replaced")
                st = os.stat(tmp)  # (the file that becomes the model: a delete just after made a stat of dest a 500)
                os.replace(tmp, dest)
                fsync_dir(os.path.dirname(dest))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        logger.info(f"model {model} replaced by an upload ({n} bytes, profile {profile.name})")
        return {"modified_time": int(st.st_mtime), "size": st.st_size}

    @api.delete("/model/{model}")
    def delete_model(model: str):
        _check_model_name(app, model)
        dest = app.cfg.model_path
        with _WRITES:
            if not os.path.exists(dest):
                raise HTTPException(status_code=404, detail=f"no trained model for {model}")
            _keep(dest, "deleted", move=True)
            fsync_dir(os.path.dirname(dest))
        return {}

    return api
