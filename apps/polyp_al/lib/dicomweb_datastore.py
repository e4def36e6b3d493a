"""MONAI Label's DICOMweb datastore, with frame-shaped labels, checked uploads and a server that may be down.

A client saves a label as for the local datastore (PNG/JPG mask, or a
single-slice NIfTI/NRRD as 3D Slicer writes): it is checked against the
frame's size with the library's reader, written as a NIfTI in the frame's own
geometry (the (W, H, 1) grid of MONAI Label's converted frame), converted to
DICOM SEG (dcmqi) and stored in the DICOMweb server. The store is verified by
asking the server for the new series: Orthanc's STOW answers "stored" even when
its own filters drop an instance. If the store fails, the label stays on disk
in ``<state>/pending-labels/``, the client gets HTTP 502 saying where, and the
label is sent again after the next successful save, before training, and at
start-up.

When the DICOMweb server is unreachable, requests fail fast (short timeouts,
one retry) with HTTP 503 naming the server; /info still answers and reports
it. Predictions can be stored as SEG too (``store_prediction``), with a series
description that keeps them out of the training labels.

MONAI Label's cache index (``datastore_v2.json``) is written at most every
``POLYPAL_CACHE_INDEX_EVERY`` seconds while frames are added, and its file
watcher reconciles once per burst of files, not once per file: both were
per frame, each over the whole cache (quadratic in the pool).

Size (over ~250 lines): MONAI Label's DICOMweb datastore class and its client are extended
here in one place because the pending-label queue, the SEG conversion and the verified store
share state and must be read together.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time

import nibabel as nib
import numpy as np
import monailabel.datastore.dicom
import requests
from fastapi import HTTPException
from monailabel.config import settings
from pydicom.dataset import Dataset
from monailabel.datastore.dicom import DICOMWebDatastore, DICOMwebClientX
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.datastore.utils.convert import nifti_to_dicom_seg
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.datastore import _consumed, check_client, checked_mask, note_save
from polypal.serving.fileops import copy_fsynced, create_new, fsync_dir
from polypal.serving.framestore import InfoTooLarge, check_info_size
from polypal.data import images, read_mask

logger = logging.getLogger(__name__)

LABEL_DESCRIPTION = "polyp-al label"
PREDICTION_DESCRIPTION = "polyp-al prediction"
TIMEOUT = (5, 120)  # seconds: connect, read
# MONAI Label rewrote its whole cache index for each frame it added (3000 frames: 60 ms a frame by the end,
# 122 s in all; quadratic in the pool): written at most this often while frames are added, and at exit
INDEX_EVERY = float(os.environ.get("POLYPAL_CACHE_INDEX_EVERY", 5))
# the frames in the DICOMweb server are listed again after this many seconds (MONAI Label: 2 h)
LIST_EVERY = float(os.environ.get("POLYPAL_DICOMWEB_LIST_EVERY", 120))
REFRESH_AFTER = 2.0  # seconds: the file watcher reconciles once per burst of files, this long after its first
_DEFERRED = threading.local()  # set while a frame's record is added: its index write may wait


@contextlib.contextmanager
def _deferring():
    _DEFERRED.active = True
    try:
        yield
    finally:
        _DEFERRED.active = False


class PolypDICOMwebClient(DICOMwebClientX):
    """DICOMweb client that fails fast, and lists our prediction SEGs apart from labels."""

    def __init__(self, *args, timeout=TIMEOUT, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=250)
        self._session.request = functools.partial(self._session.request, timeout=timeout)

    def search_for_series(self, *args, include_predictions: bool = False, **kwargs):
        found = super().search_for_series(*args, **kwargs)
        filters = kwargs.get("search_filters") or {}
        if filters.get("Modality") == "SEG" and not include_predictions:
            found = [s for s in found if not _description(s).startswith(PREDICTION_DESCRIPTION)]
        return found


def _segment(predicted: bool) -> dict:
    """dcmqi segment attributes: SNOMED CT "polyp of colon". Colours that stand out on red mucosa:
    green for labels, cyan for predictions."""
    return {
        "labelID": 1, "SegmentLabel": "polyp", "SegmentDescription": "polyp-al " + ("prediction" if predicted else "label"),
        "SegmentAlgorithmType": "AUTOMATIC" if predicted else "MANUAL",
        **({"SegmentAlgorithmName": "polyp-al U-Net"} if predicted else {}),
        "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": "Morphologically Altered Structure"},
        "SegmentedPropertyTypeCodeSequence": {"CodeValue": "68496003", "CodingSchemeDesignator": "SCT",
                                              "CodeMeaning": "Polyp of colon"},
        "recommendedDisplayRGBValue": [0, 200, 255] if predicted else [40, 230, 60],
    }


def _description(series_json: dict) -> str:
    v = series_json.get("0008103E", {}).get("Value") or [""]
    return str(v[0])


def _scrubbed(url: str, text: str) -> str:
    """``text`` without the user:password part of ``url`` (``--studies http://user:secret@host/dicom-web``),
    wherever it appears, the address itself or an error that quotes it: it goes to every client in 503s and
    in /info."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(url))
    if parts.password:
        text = text.replace(parts.password, "***")
    if parts.username:
        text = text.replace(f"{parts.username}:***@", "").replace(f"{parts.username}@", "")
    return text


def _unreachable(url: str, e: Exception) -> HTTPException:
    status = getattr(getattr(e, "response", None), "status_code", None)
    where = _without_credentials(url)
    if status in (401, 403):  # a password PACS: say what to fix, not "unreachable"
        msg = (f"DICOMweb server {where} refused polyp-al's credentials ({status}): set MONAI_LABEL_DICOMWEB_USERNAME "
               f"and MONAI_LABEL_DICOMWEB_PASSWORD to an account of that server and restart")
    else:
        msg = f"DICOMweb server {where} is unreachable or failing ({type(e).__name__}: {_scrubbed(url, str(e))})"
    logger.error(msg)
    return HTTPException(status_code=503, detail=msg)


def _online(fn):
    """Turn network failures of a datastore call into HTTP 503 naming the server."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except requests.RequestException as e:
            raise _unreachable(self._client.base_url, e) from None

    return wrapper


_LISTING = threading.local()  # set while datalist() downloads the labels (per thread)

# A DICOM UID: digits in dot-separated components, at most 64 characters. Series ids come from the DICOMweb
# server (anyone who can store there chooses them) and become folder names in the cache: nothing else is listed,
# served or downloaded.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def is_uid(value) -> bool:
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def _stamp(seg_file: str) -> None:
    """The SEG's series and content time to the microsecond (dcmqi writes whole seconds): the newest of a
    frame's SEGs is its label, and two saves of one frame fall within a second."""
    import datetime

    import pydicom

    now = datetime.datetime.now()
    d = pydicom.dcmread(seg_file)
    d.SeriesDate = d.ContentDate = now.strftime("%Y%m%d")
    d.SeriesTime = d.ContentTime = now.strftime("%H%M%S.%f")
    d.save_as(seg_file)


def _instead_of_temp(uri: str, kept: str) -> str:
    """``kept`` (the cache's copy) in place of ``uri`` when ``uri`` is a file in the temp folder, deleted."""
    if uri and kept and uri != kept and os.path.exists(kept) and \
            os.path.dirname(os.path.realpath(uri)) == os.path.realpath(tempfile.gettempdir()):
        _consumed(uri)
        return kept
    return uri


class _Frames(list):
    """The frames' series ids, with a set behind ``in`` (MONAI Label asks it once per SEG)."""

    def __init__(self, ids):
        super().__init__(ids)
        self._set = frozenset(self)

    def __contains__(self, x):
        return x in self._set


def download_series(study_id, series_id, save_dir, client, frame_fetch=False):
    """MONAI Label's ``dicom_web_download_series`` without its two hazards: each instance is saved as
    ``<index>.dcm``, never under its SOPInstanceUID (a value the DICOM file chooses: "/tmp/x" or "../../x"
    wrote outside the cache), and a series the server does not have is a 404, not an IndexError."""
    if not is_uid(series_id):
        raise HTTPException(status_code=404, detail=f"unknown image id {str(series_id)[:80]!r}")
    if not study_id:
        found = [s for s in client.search_for_series(search_filters={"SeriesInstanceUID": series_id})
                 if (s.get("0020000E") or {}).get("Value") == [series_id]]
        study = ((found[0].get("0020000D") or {}).get("Value") or [None])[0] if found else None
        if not is_uid(study):
            raise HTTPException(status_code=404, detail=f"series {series_id} not found in the DICOMweb server")
        study_id = study
    def check(d) -> None:
        if not is_uid(str(d.get("SOPInstanceUID", ""))):  # dcmqi could not reference it in a SEG either
            raise HTTPException(status_code=422, detail=f"series {series_id} has an instance whose SOPInstanceUID "
                                                        f"is not a DICOM UID: not served as a frame")
        try:  # declared size, before anything converts it (a small file may declare a huge image)
            pixels = int(d.get("Rows", 0) or 0) * int(d.get("Columns", 0) or 0) * int(d.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            pixels = -1
        if not 0 <= pixels <= images.MAX_PIXELS:
            raise HTTPException(status_code=413 if pixels > 0 else 422,
                                detail=f"series {series_id} declares {pixels} pixels per instance; frames are "
                                       f"capped at {images.MAX_PIXELS} (--conf max_pixels)")

    if not frame_fetch:
        instances = client.retrieve_series(study_id, series_id)
        for instance in instances:
            check(instance)
        os.makedirs(save_dir, exist_ok=True)
        for k, instance in enumerate(instances):
            instance.save_as(os.path.join(save_dir, f"{k:06d}.dcm"))
        return
    metas = [Dataset.from_json(m) for m in client.retrieve_series_metadata(study_id, series_id)]
    for d in metas:
        check(d)
    os.makedirs(save_dir, exist_ok=True)
    for k, d in enumerate(metas):
        sop = str(d["SOPInstanceUID"].value)
        d.is_little_endian, d.is_implicit_VR = True, True
        d.PixelData = client.retrieve_instance_frames(study_instance_uid=study_id, series_instance_uid=series_id,
                                                      sop_instance_uid=sop, frame_numbers=[1])[0]
        d.save_as(os.path.join(save_dir, f"{k:06d}.dcm"))


monailabel.datastore.dicom.dicom_web_download_series = download_series  # what its datastore calls


def _unreadable_series(series_id: str, e: Exception) -> HTTPException:
    logger.error(f"series {series_id} cannot be read as a frame: {type(e).__name__}: {e}")
    return HTTPException(status_code=422, detail=f"series {series_id} cannot be read as a frame "
                                                 f"({type(e).__name__}: {str(e)[:200]})")


def _without_credentials(url: str) -> str:
    """``url`` without a user:password part (``--studies http://user:secret@host/dicom-web``): it goes to
    every client in next-sample answers."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class PolypDICOMWebDatastore(DICOMWebDatastore):
    pending_dir: str = ""
    unreadable_labels: dict = {}  # frame id -> why its SEG was left out of the last datalist()
    _retry_lock = threading.Lock()
    _reconcile_guard = threading.RLock()  # class-level: MONAI Label's __init__ reconciles before ours runs

    def _reconcile_datastore(self):
        """MONAI Label's reconcile of its cache folder, one at a time: its file watcher's thread and a refresh
        in another thread iterated and changed the same dict at once (a "dictionary changed size during
        iteration" traceback in the scoring process's log)."""
        with self._reconcile_guard:
            return super()._reconcile_datastore()

    # --- the cache's index (datastore_v2.json) and its file watcher -------------------------------
    _index_lock = threading.Lock()  # (brief: the timers' bookkeeping)
    _index_timer = None
    _index_written = 0.0
    _refresh_timer = None

    _index_dirty = False
    _flushing = threading.Lock()  # one deferred write at a time (the timer's, the exit's)

    def _update_datastore_file(self, lock=True):
        """MONAI Label's rewrite of the whole index; while frames are added (``_deferring``: MONAI Label's
        ``get_image_uri`` calls LocalDatastore's ``add_image`` past this class), at most every INDEX_EVERY seconds
        (a timer writes what was deferred, and so does the process's exit). A record not yet written survives
        another process's write (``_init_from_datastore_file``); one lost with a killed process comes back
        from its file at the next reconcile, and its DICOM tags at the next ``get_image_info``."""
        if getattr(_DEFERRED, "active", False):
            with self._index_lock:
                if time.monotonic() - self._index_written < INDEX_EVERY:
                    self._index_dirty = True
                    if self._index_timer is None:
                        self._arm_exit()
                        self._index_timer = threading.Timer(INDEX_EVERY, self._flush_index)
                        self._index_timer.daemon = True
                        self._index_timer.start()
                    return
        super()._update_datastore_file(lock)
        self._index_written = time.monotonic()

    def _flush_index(self) -> None:
        """Write the index if a write is waiting (the timer, and the process's exit: it waits for a write the
        timer is making, which a daemon thread would leave cut off at exit)."""
        with self._flushing:
            with self._index_lock:
                timer, self._index_timer = self._index_timer, None
                dirty, self._index_dirty = self._index_dirty, False
            if timer is not None:
                timer.cancel()
            if not dirty:
                return
            try:
                with self._reconcile_guard:  # (records are added under it: none changes while the index is dumped)
                    super()._update_datastore_file(lock=True)
                    self._index_written = time.monotonic()
            except Exception:  # noqa: BLE001 - a timer thread: say it, the records are rebuilt at the next reconcile
                logger.exception("writing MONAI Label's cache index failed")

    def _init_from_datastore_file(self, throw_exception=False):
        """MONAI Label's reload of the index another process wrote, which replaced every record with the file's:
        a record this process had not written yet (deferred above), or one the other process's older copy of
        the index lacked, was gone, and a label save on that frame failed ("Image ... not found"). Records whose
        files are in the cache are kept (the files are the truth: MONAI Label's reconcile makes records from
        them), and a label record too. Under the reconcile guard: during the reload the records' base path is
        briefly unset, and a frame added then was written into the working directory (a review). An index cut
        short (a process killed while writing it) is set aside and the records made again from the files,
        where MONAI Label refused to start."""
        with self._reconcile_guard:
            model = self._datastore
            before = dict(model.objects)
            try:
                LocalDatastore._init_from_datastore_file(self, throw_exception=True)
            except (ValueError, OSError) as e:  # (OSError: set aside by another process meanwhile)
                if self._set_aside_if_cut(e) and not throw_exception:
                    super()._update_datastore_file(lock=True)  # (a live process: the others get an index again)
                return
            if self._datastore is model or not before:  # (not reloaded: the file had not changed)
                return
            merged = dict(self._datastore.objects)  # (assigned whole: other threads iterate the records unguarded)
            for image_id, old in before.items():
                new = merged.get(image_id)
                if new is None:
                    if os.path.exists(os.path.join(self._datastore.image_path(), self._filename(image_id, old.image.ext))):
                        merged[image_id] = old
                    continue
                for key, value in old.image.info.items():  # (a record another process rebuilt bare from the file
                    new.image.info.setdefault(key, value)  # keeps the DICOM tags this one had)
                for tag, label in old.labels.items():
                    if tag not in new.labels and os.path.exists(
                            os.path.join(self._datastore.label_path(tag), self._filename(image_id, label.ext))):
                        new.labels[tag] = label
            self._datastore.objects = merged

    def _set_aside_if_cut(self, e: Exception) -> bool:
        """The index set aside when it cannot be read (cut short by a process killed while writing it: MONAI
        Label then refused to start, and a live process's file watcher died on it); checked again under the
        cache's lock, so that an index another process has set aside or rewritten meanwhile is left alone.
        True when it was set aside here."""
        from filelock import FileLock
        from monailabel.datastore.local import LocalDatastoreModel

        path = self._datastore_config_path
        with FileLock(self._lock_file):
            try:
                with open(path) as f:
                    LocalDatastoreModel.model_validate_json(f.read())
                return False  # (rewritten meanwhile: its own change event reloads it)
            except FileNotFoundError:
                return False  # (set aside by another process)
            except (ValueError, OSError):
                pass
            bad = f"{path}.unreadable-{time.time_ns()}"
            try:
                os.replace(path, bad)
            except OSError:
                return False
        logger.warning(f"MONAI Label's cache index {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); set "
                       f"aside as {bad}, its records are made again from the cached files")
        return True

    def _registered(self, path: str) -> bool:
        """A file in the cache that already has its record (a frame or label this process just added)."""
        folder, name = os.path.split(os.path.realpath(path))
        image_id = self._to_id(name)[0]
        with self._reconcile_guard:  # (an add holds it from the file's copy to its record)
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                return False
            if folder == os.path.realpath(self._datastore.image_path()):
                return True
            return any(folder == os.path.realpath(self._datastore.label_path(tag)) for tag in obj.labels)

    def _on_any_event(self, event):
        """MONAI Label reconciled the whole cache (every record's file checked, the folder listed, the index
        written) at each file created or deleted in it: per frame a scoring run adds, in each process watching.
        A file this process has just recorded needs nothing; other changes are reconciled once, REFRESH_AFTER
        seconds after the first of a burst."""
        if getattr(event, "event_type", "") == "created" and self._registered(str(event.src_path)):
            return
        with self._index_lock:
            if self._refresh_timer is not None:
                return
            self._arm_exit()
            self._refresh_timer = threading.Timer(REFRESH_AFTER, self._timed_refresh)
            self._refresh_timer.daemon = True
            self._refresh_timer.start()

    def _timed_refresh(self) -> None:
        with self._flushing:  # (the exit waits for it: a daemon thread stopped mid-write left the index cut)
            with self._index_lock:
                if self._refresh_timer is None:  # (cancelled by the exit)
                    return
                self._refresh_timer = None
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a timer thread: say it; the next change reconciles again
                logger.exception("reconciling MONAI Label's cache failed")

    def _at_exit(self) -> None:
        """At the process's exit: no reconcile starts any more, one under way is waited for, and the index
        is written if a write is waiting."""
        with self._index_lock:
            timer, self._refresh_timer = self._refresh_timer, None
        if timer is not None:
            timer.cancel()
        self._flush_index()

    def _arm_exit(self) -> None:
        if not self.__dict__.get("_exit_armed"):
            import atexit

            atexit.register(self._at_exit)
            self._exit_armed = True

    # --- reads: 503 when the server is down ------------------------------------------------------
    _frames_memo = None  # (when, the frames listed)
    _labeled_memo = None  # (when, the labeled frames): until a label is stored or the cache time passes
    _labeled_gen = 0  # labels stored by this process: a listing begun before one is not kept

    _listing = threading.Lock()  # one listing asked of the DICOMweb server at a time

    @_online
    def list_images(self):
        """The frames' series ids (valid UIDs only), asked of the DICOMweb server again after LIST_EVERY
        seconds. MONAI Label kept its listing ``MONAI_LABEL_DICOMWEB_CACHE_EXPIRY`` (2 h by default): frames
        loaded into the PACS meanwhile were not served, and deleted ones still were, for up to 2 h. The list
        is a set too: MONAI Label's label listing asks ``frame in self.list_images()`` once per SEG."""
        memo = self._frames_memo
        ttl = min(LIST_EVERY, settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY)
        if memo is not None and time.monotonic() - memo[0] < ttl:
            return memo[1]
        if not self._listing.acquire(blocking=memo is None):  # another thread is asking: the last list meanwhile
            return memo[1]
        try:
            ids = DICOMWebDatastore.list_images.__wrapped__(self)  # (MONAI Label's, past its 2 h cache)
        finally:
            self._listing.release()
        bad = [i for i in ids if not is_uid(i)]
        if bad:
            logger.warning(f"{len(bad)} series with an invalid SeriesInstanceUID left out (e.g. {bad[0][:80]!r})")
        frames = _Frames(i for i in ids if is_uid(i))
        self._frames_memo = (time.monotonic(), frames)
        return frames

    @_online
    def get_labeled_images(self, label_tag=None, labels=None):
        """The frames that have a label SEG. MONAI Label read every SEG's metadata at every listing, and its
        listing is made again after every label saved: thousands of requests at the next /info or next
        sample. A SEG's frame is read once (it never changes) and the list kept as MONAI Label kept its own
        (``MONAI_LABEL_DICOMWEB_CACHE_EXPIRY``, or until a label is stored)."""
        now = time.monotonic()
        memo = self._labeled_memo
        if memo is not None and now - memo[0] < settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY:
            return list(memo[1])
        gen = self._labeled_gen
        out = list(self._newest_segs())  # (a frame labeled again has a SEG per save: listed once)
        if gen == self._labeled_gen:  # (a label stored meanwhile: this list may lack it, not kept)
            self._labeled_memo = (now, out)
        return list(out)

    def _newest_segs(self) -> dict:
        """Frame series -> its newest label SEG series, for the frames listed. Each SEG's metadata (its frame,
        its time) is read once: a SEG never changes."""
        refs = self.__dict__.setdefault("_seg_refs", {})  # SEG series -> (its frame series or "", its time)
        frames = self.list_images()
        newest: dict = {}
        for seg in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            series = ((seg.get("0020000E") or {}).get("Value") or [""])[0]
            study = ((seg.get("0020000D") or {}).get("Value") or [""])[0]
            if not (is_uid(series) and is_uid(study)):
                continue
            if series not in refs:
                meta = self._client.retrieve_series_metadata(study, series)
                if not meta:  # (no instance yet: asked again at the next listing)
                    continue
                d = Dataset.from_json(meta[0])
                rs = d.get("ReferencedSeriesSequence")
                ref = str(rs[0].get("SeriesInstanceUID", "") or "") if rs else ""
                refs[series] = (ref, (str(d.get("SeriesDate", "") or ""), str(d.get("SeriesTime", "") or "")))
                if ref not in frames:
                    why = f"references {ref}, not a frame listed" if ref else "references no series"
                    logger.warning(f"label SEG {series} ignored: it {why}")
            ref, when = refs[series]
            if ref in frames and (ref not in newest or when >= newest[ref][1]):
                newest[ref] = (series, when)
        return {ref: series for ref, (series, _) in newest.items()}

    def _download_labeled_data(self):
        """MONAI Label's download of every frame's label into the cache (before a training), from the newest
        SEG of each frame: it took the first one listed, so a cache made again (another cache folder, a
        wiped one) trained on a frame's oldest label. Local labels of frames with no SEG left are removed."""
        newest = self._newest_segs()
        for e in set(LocalDatastore.get_labeled_images(self)) - set(newest):
            label_uri = LocalDatastore.get_label_uri(self, e, DefaultLabelTag.FINAL)
            if label_uri and os.path.exists(label_uri) and is_uid(e):
                logger.info(f"label of {e} is no longer in the DICOMweb server: its local copy is removed")
                with self._reconcile_guard:  # its record with it (left to the next reconcile, the training
                    # just after skipped the frame: "label: file not found")
                    shutil.rmtree(os.path.join(os.path.dirname(label_uri), e), ignore_errors=True)
                    os.unlink(label_uri)
                    obj = self._datastore.objects.get(e)
                    if obj is not None and obj.labels.pop(DefaultLabelTag.FINAL.value, None) is not None:
                        with _deferring():
                            self._update_datastore_file()
        for image_id, seg in newest.items():
            self.get_image_uri(image_id=image_id)
            self.get_label_uri(label_id=seg, label_tag=DefaultLabelTag.FINAL, image_id=image_id)

    def labeled_set(self) -> frozenset:
        return frozenset(self.get_labeled_images())

    def _retrieve_url(self, study: str, series: str) -> str:
        """The series' WADO-RS address on the server we read from. The DICOMweb server computes the one in its
        answers from the request's Host header, which dicomweb_client sends without the port."""
        try:
            from dicomweb_client.web import _Transaction

            url = self._client._get_series_url(_Transaction.RETRIEVE, study, series)
        except (ImportError, AttributeError, TypeError, ValueError):
            url = f"{self._client.base_url.rstrip('/')}/studies/{study}/series/{series}"
        return _without_credentials(url)

    def _dicom_info(self, series_id):
        info = super()._dicom_info(series_id)
        if "RetrieveURL" in info and is_uid(info.get("StudyInstanceUID") or ""):
            info["RetrieveURL"] = self._retrieve_url(info["StudyInstanceUID"], series_id)
        return info

    def get_image_info(self, image_id: str):
        """The frame's info (series tags, served-at), its RetrieveURL as ``_dicom_info`` now writes it (frames
        cached by an earlier version kept the server's, without its port)."""
        info = super().get_image_info(image_id)
        if isinstance(info, dict) and "StudyInstanceUID" not in info and is_uid(image_id):
            info = self._whole_record(image_id) or info
        if isinstance(info, dict) and "RetrieveURL" in info and is_uid(info.get("StudyInstanceUID") or "") \
                and is_uid(image_id):
            info["RetrieveURL"] = self._retrieve_url(info["StudyInstanceUID"], image_id)
        return info

    def _whole_record(self, image_id: str) -> dict | None:
        """The record of a cached frame made whole, and its info; None when there is no cached file or the
        DICOMweb server cannot say. A record can lack its DICOM tags (rebuilt from the file at a reconcile:
        its deferred index write lost with a killed process) or be missing (this process reloaded the index
        another process wrote before it had the frame; a label save then failed: "Image ... not found")."""
        if not os.path.exists(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz")):
            return None
        try:
            tags = self._dicom_info(image_id)
        except (requests.RequestException, HTTPException, IndexError, KeyError):  # (down, or no longer listed)
            return None
        with self._reconcile_guard:
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                info = {"ts": int(time.time()), "name": f"{image_id}.nii.gz"}
                obj = self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=".nii.gz"))
            obj.image.info.update(tags)
            with _deferring():
                self._update_datastore_file()
        return LocalDatastore.get_image_info(self, image_id)

    @_online
    def get_unlabeled_images(self, label_tag=None, labels=None):
        return super().get_unlabeled_images(label_tag, labels)

    @_online
    def get_image_uri(self, image_id: str) -> str:
        """The frame's NIfTI in the cache. Only a series the search filter lists is a frame (a SEG, or any
        other series, is a 404 and never takes a label); one that does not convert is a 422 naming it."""
        if not is_uid(image_id):
            raise HTTPException(status_code=404, detail=f"unknown image id {str(image_id)[:80]!r}")
        cache = os.path.join(self._datastore.image_path(), image_id)
        if not (os.path.exists(cache + ".nii.gz") or (os.path.isdir(cache) and os.listdir(cache))):
            if not self._in_server(image_id):
                raise HTTPException(status_code=404, detail=f"unknown image id {image_id!r}")
        elif self._gone(image_id):  # deleted in the DICOMweb server: its cached copy went on being served
            self._drop_cached(image_id)
            raise HTTPException(status_code=404, detail=f"frame {image_id} is no longer in the DICOMweb server")
        try:
            if os.path.exists(cache + ".nii.gz"):
                uri = super().get_image_uri(image_id)
            else:  # its conversion adds the frame's record: not while MONAI Label's file watcher reconciles the
                with self._reconcile_guard, _deferring():  # records (a "dictionary changed size during iteration"
                    uri = super().get_image_uri(image_id)  # killed it); the index written after a burst
        except (requests.RequestException, HTTPException):
            raise
        except Exception as e:  # noqa: BLE001 - a series whose instances do not convert (pydicom, dicom2nifti)
            raise _unreadable_series(image_id, e) from None
        if image_id not in self._datastore.objects:  # (see _whole_record)
            self._whole_record(image_id)
        return self._cached_not_temp(uri, image_id)

    def _gone(self, image_id: str) -> bool:
        """A cached frame the DICOMweb server no longer lists (asked again when the listing lacks it: it may be
        older than the frame). With the server not answering, no: the cached copy is served, as before."""
        try:
            if image_id in self.list_images():
                return False
        except (requests.RequestException, HTTPException):
            return False
        return not self._listed_or_down(image_id)

    def _drop_cached(self, image_id: str) -> None:
        """The cached copy of a frame deleted in the DICOMweb server, and its record (its label files stay:
        a label SEG left in the server is the server's to delete)."""
        logger.info(f"frame {image_id} is no longer in the DICOMweb server: its cached copy is removed")
        with self._reconcile_guard:
            folder = os.path.join(self._datastore.image_path(), image_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder + ".nii.gz")
            shutil.rmtree(folder, ignore_errors=True)
            if self._datastore.objects.pop(image_id, None) is not None:
                with _deferring():
                    self._update_datastore_file()

    def _in_server(self, image_id: str) -> bool:
        """The DICOMweb server lists this series as a frame (the search filter's, not a SEG)."""
        frames = self._client.search_for_series(search_filters={**self._search_filter, "SeriesInstanceUID": image_id})
        return any((f.get("0020000E") or {}).get("Value") == [image_id] for f in frames)

    def _listed_or_down(self, image_id: str) -> bool:
        """``_in_server``, or True when the DICOMweb server does not answer: the label is then kept and sent
        when it is back (checked again then), not refused."""
        try:
            return self._in_server(image_id)
        except requests.RequestException:
            return True

    def _cached_not_temp(self, uri: str, image_id: str) -> str:
        """The frame's NIfTI in the cache, not the temp file it was converted to: MONAI Label's first
        ``get_image_uri`` of a frame copies its conversion into the cache and returns the temp file, left
        in the temp folder (one per frame: a scoring run of the pool left the pool there, under the disk
        floor's watch)."""
        return _instead_of_temp(uri, os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz")))

    @_online
    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        if not (is_uid(label_id) and is_uid(image_id or label_id)):
            if getattr(_LISTING, "active", False):
                self.unreadable_labels[str(image_id or label_id)[:80]] = "invalid series UID: left out"
                return ""
            raise HTTPException(status_code=404, detail=f"unknown label {str(label_id)[:80]!r}")
        if not image_id and str(getattr(label_tag, "value", label_tag)) == DefaultLabelTag.FINAL:
            # a frame's label by the frame's id (GET /datastore/label): the copy this server keeps of the SEG it
            # stored. MONAI Label downloaded the frame's own series as if it were the SEG, into the label cache,
            # and answered 500 ("not a DICOM-SEG storage")
            return self.saved_label_uri(label_id)
        try:
            with self._reconcile_guard:  # (it may add a label record: see get_image_uri)
                uri = super().get_label_uri(label_id, label_tag, image_id)
            # MONAI Label's first conversion of a SEG is copied into the cache and its temp file returned, left in
            # the temp folder (one per label at a training after the cache is made again)
            return _instead_of_temp(uri, self.saved_label_uri(image_id)) if image_id else uri
        except (requests.RequestException, HTTPException):
            raise
        except Exception as e:  # noqa: BLE001 - e.g. pydicom_seg: "not a DICOM-SEG storage"
            if not getattr(_LISTING, "active", False):
                raise
            # while listing the training set, one SEG that does not convert (stored by another tool, straight
            # into the DICOMweb server) is left out with its reason, instead of failing every training
            why = f"label series {label_id} of frame {image_id} is not a readable DICOM SEG ({type(e).__name__}: {e})"
            logger.error(f"{why}: left out of training")
            self.unreadable_labels[image_id or label_id] = why
            return ""

    @_online
    def datalist(self, full_path=True):
        self.retry_pending()
        self.unreadable_labels = {}
        _LISTING.active = True
        try:
            return super().datalist(full_path)
        finally:
            _LISTING.active = False

    def status(self):
        """Counts for /info; never raises, so that the server starts and answers with the DICOMweb server down."""
        pending = len(self.pending_labels())
        try:
            out = super().status()
        except (requests.RequestException, HTTPException) as e:
            detail = e.detail if isinstance(e, HTTPException) else str(_unreachable(self._client.base_url, e).detail)
            out = {"total": None, "completed": None, "label_tags": {}, "error": detail}
        out["pending_labels"] = pending
        if pending:
            out["pending_dir"] = self.pending_dir
        return out

    # --- writes ----------------------------------------------------------------------------------
    def _frame_nifti(self, image_id: str, mask_file: str, for_seg: bool = True) -> tuple[str, str]:
        """(frame's DICOM folder, temp NIfTI of the checked mask in the frame's (W, H, 1) grid)."""
        image_uri = self.get_image_uri(image_id)
        mask = checked_mask(image_id, image_uri, mask_file)
        if for_seg and not mask.any():
            logger.warning(f"label for {image_id} is empty: not stored (DICOM SEG cannot hold an empty segment)")
            raise HTTPException(status_code=422, detail=f"mask for {image_id} has no polyp pixels: DICOM SEG cannot "
                                                        f"hold an empty segment, so it is not stored in the DICOMweb "
                                                        f"server (frames without a polyp need the local datastore)")
        fd, nii = tempfile.mkstemp(suffix=".nii.gz")
        os.close(fd)
        nib.save(nib.Nifti1Image(mask.T[:, :, None].astype(np.uint8), nib.load(image_uri).affine), nii)
        return os.path.realpath(os.path.join(self._datastore.image_path(), image_id)), nii

    def _store_seg(self, image_dir: str, nii: str, description: str) -> str:
        """Convert to DICOM SEG, upload, and check that the server really has it; returns its series UID."""
        predicted = description.startswith(PREDICTION_DESCRIPTION)
        seg = nifti_to_dicom_seg(image_dir, nii, [{"name": "polyp", "idx": 1, "model_name": description,
                                                   "segmentAttribute": _segment(predicted)}])
        if not seg:
            raise RuntimeError("dcmqi produced no DICOM SEG")
        _stamp(seg)
        try:
            series = dicom_web_upload_dcm(seg, self._client)
        finally:
            os.unlink(seg)
        if not series or not self._client.search_for_series(search_filters={"SeriesInstanceUID": series},
                                                            include_predictions=True):
            raise RuntimeError(f"the server answered the upload but does not have SEG series {series or '?'} "
                               f"(rejected by its filters or storage)")
        DICOMWebDatastore.get_labeled_images.cache_clear()  # MONAI Label caches the label list for minutes
        self._labeled_gen += 1
        self._labeled_memo = None  # (and so does this class)
        return series

    _frame_locks = [threading.Lock() for _ in range(64)]  # a frame's is always the same one (a fixed pool:
    # a lock per id a client sends would stay for the life of the process)

    def _frame_lock(self, image_id: str) -> threading.Lock:
        import zlib

        return self._frame_locks[zlib.crc32(image_id.encode("utf-8", "replace")) % len(self._frame_locks)]

    def save_label(self, image_id, label_filename, label_tag, label_info, label_id=""):
        """One save of a frame's label at a time: two at once, the older failing to store after the newer
        was stored (and answered 200), kept the older to be sent again, over the newer."""
        try:
            with self._frame_lock(str(image_id)):
                label_id = self._save_label(image_id, label_filename, label_tag, label_info)
        except BaseException:
            _consumed(label_filename)  # MONAI Label's endpoint deletes its upload only on success
            raise
        if str(getattr(label_tag, "value", label_tag)) == DefaultLabelTag.FINAL:
            self.retry_pending()
        return label_id

    def _save_label(self, image_id, label_filename, label_tag, label_info):
        label_tag = str(getattr(label_tag, "value", label_tag))  # "final", never "DefaultLabelTag.FINAL" in names
        try:  # the client's params, capped as on a folder of frames, before anything is converted or sent
            check_info_size(label_info)
        except InfoTooLarge as e:
            raise HTTPException(status_code=413, detail=f"label for {image_id} rejected: {e}") from None
        check_client(image_id, label_info)
        try:
            # a frame deleted from the DICOMweb server is still in the cache: its SEG would reference no frame
            # listed, and the label, answered 200, would never be trained on
            if label_tag == DefaultLabelTag.FINAL and is_uid(image_id) and not self._listed_or_down(image_id):
                raise HTTPException(status_code=404, detail=f"{image_id} is not a frame in the DICOMweb server (not "
                                                            f"one, or deleted there): its label is not stored")
            image_dir, nii = self._frame_nifti(image_id, label_filename, for_seg=label_tag == DefaultLabelTag.FINAL)
        except requests.RequestException as e:
            raise _unreachable(self._client.base_url, e) from None
        info = {k: v for k, v in dict(label_info or {}).items() if k != "label_info"}
        try:
            if label_tag == DefaultLabelTag.FINAL:
                self._drop_pending(image_id, label_tag)
                try:
                    series = self._store_seg(image_dir, nii, LABEL_DESCRIPTION)
                except Exception as e:  # noqa: BLE001 - keep the label, tell the client
                    keep = self._keep(image_id, label_tag, nii, info)
                    why = _scrubbed(self._client.base_url, f"{type(e).__name__}: {e}")
                    logger.error(f"label for {image_id} was not stored in the DICOMweb server "
                                 f"{_without_credentials(self._client.base_url)} ({why}); kept at {keep}, will retry")
                    raise HTTPException(status_code=502, detail=f"the DICOMweb server did not store the label "
                                                                f"({why}); it is kept on the polyp-al "
                                                                f"server (pending labels, /info) and will be sent "
                                                                f"again") from None
                info["SeriesInstanceUID"] = series
            with self._reconcile_guard:  # (a record added while the file watcher reconciles: see get_image_uri)
                label_id = LocalDatastore.save_label(self, image_id, nii, label_tag, info)
        finally:
            os.unlink(nii)
        note_save(label_tag, label_info)
        return label_id

    def saved_label_uri(self, image_id: str) -> str:
        """The final label this server stored as a SEG, as it keeps it in its cache: the mask in the frame's
        NIfTI grid (MONAI Label's local record, the file its training reads); "" when it has none."""
        return LocalDatastore.get_label_uri(self, image_id, DefaultLabelTag.FINAL)

    def store_prediction(self, image_id: str, mask_file: str, description: str = PREDICTION_DESCRIPTION) -> str:
        """Store a predicted mask as a DICOM SEG on its frame (viewable in OHIF); not a training label.

        Returns the SEG's series UID, or "" when the prediction has no polyp pixels (nothing to store)."""
        if not read_mask(mask_file).any():
            return ""
        try:
            image_dir, nii = self._frame_nifti(image_id, mask_file)
            try:
                return self._store_seg(image_dir, nii, description)
            finally:
                os.unlink(nii)
        except requests.RequestException as e:
            raise _unreachable(self._client.base_url, e) from None
        except RuntimeError as e:
            raise HTTPException(status_code=502, detail=f"prediction SEG not stored: {e}") from None

    # --- labels that failed to store -------------------------------------------------------------
    def _keep(self, image_id, tag, nii, info) -> str:
        """A label the DICOMweb server did not store, kept to be sent again: its info first, then the label
        (a label is pending from the moment its .nii.gz is there), each written whole (renamed into place) and
        fsynced. Before, the info was written in place after the label: a kill or a full disk left it cut, and
        every retry of that label then failed for ever. (Not under the pending folder's lock: a retry holds it
        while it sends every kept label, minutes with the DICOMweb server stalled, and the 502 waited.)"""
        os.makedirs(self.pending_dir, exist_ok=True)
        keep = os.path.join(self.pending_dir, f"{image_id}.{tag}.nii.gz")
        fd, tmp = create_new(self.pending_dir)  # its own temporary name: two saves of one frame may fail at once
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, keep[: -len(".nii.gz")] + ".json")
        tmp = copy_fsynced(nii, self.pending_dir)
        os.replace(tmp, keep)
        fsync_dir(self.pending_dir)
        return keep

    @contextlib.contextmanager
    def _pending_lock(self):
        """The pending folder's lock, waited for: this process's threads and the other processes (a retry)."""
        with self._retry_lock:
            fd = os.open(os.path.join(self.pending_dir, ".retry.lock"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def has_pending_label(self, image_id: str, tag: str = DefaultLabelTag.FINAL.value) -> bool:
        """A label of this frame is kept here after a failed store (it is labeled: not to be served again)."""
        return bool(self.pending_dir) and is_uid(image_id) and os.path.exists(
            os.path.join(self.pending_dir, f"{image_id}.{tag}.nii.gz"))

    def _drop_pending(self, image_id: str, tag: str) -> None:
        """A new label of the frame supersedes one kept after a failed store: the older must never be sent
        after it (its SEG would be the frame's latest, its mask the record training reads). A retry under way
        (this process's or another's: the pending folder's lock) is waited for, so that it cannot send the
        older label after this one either."""
        tag = str(getattr(tag, "value", tag))
        if not self.has_pending_label(image_id, tag):
            return
        with self._pending_lock():
            for suffix in (".nii.gz", ".json"):
                try:
                    os.unlink(os.path.join(self.pending_dir, f"{image_id}.{tag}{suffix}"))
                except FileNotFoundError:
                    pass
        logger.info(f"the label of {image_id} kept after a failed store is superseded by a new one: dropped")

    def pending_labels(self) -> list[str]:
        if not self.pending_dir or not os.path.isdir(self.pending_dir):
            return []
        return sorted(f for f in os.listdir(self.pending_dir) if f.endswith(".nii.gz"))

    def retry_pending(self) -> dict:
        """Send labels kept after a failed store; each one that arrives is removed from the pending folder.

        One sender at a time across threads and processes (the server and its training/scoring
        subprocesses all retry): a thread lock plus an flock on the pending folder, both non-blocking, so
        a kept label is never sent twice (two SEGs for one label)."""
        done, failed = [], {}
        if not self.pending_labels() or not self._retry_lock.acquire(blocking=False):
            return {"sent": done, "failed": failed}
        lock_fd = None
        try:
            lock_fd = os.open(os.path.join(self.pending_dir, ".retry.lock"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another process is sending them now
                return {"sent": done, "failed": failed}
            for name in self.pending_labels():
                image_id, tag = name[: -len(".nii.gz")].rsplit(".", 1)
                path = os.path.join(self.pending_dir, name)
                meta = path[: -len(".nii.gz")] + ".json"
                try:
                    info = _kept_info(meta)
                    if not self._in_server(image_id):  # deleted there since: stays pending, said in /info
                        raise LookupError(f"frame {image_id} is no longer in the DICOMweb server")
                    image_dir, nii = self._frame_nifti(image_id, path)
                    try:
                        info["SeriesInstanceUID"] = self._store_seg(image_dir, nii, LABEL_DESCRIPTION)
                        with self._reconcile_guard:
                            LocalDatastore.save_label(self, image_id, nii, tag, info)
                    finally:
                        os.unlink(nii)
                except Exception as e:  # noqa: BLE001 - stays pending
                    failed[name] = f"{type(e).__name__}: {getattr(e, 'detail', e)}"
                    continue
                os.unlink(path)
                if os.path.exists(meta):
                    os.unlink(meta)
                done.append(image_id)
                logger.info(f"pending label for {image_id} stored in the DICOMweb server")
            if failed:
                logger.warning(f"{len(failed)} label(s) still pending in {self.pending_dir}: {failed}")
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # releases the flock
            self._retry_lock.release()
        return {"sent": done, "failed": failed}


def _kept_info(meta: str) -> dict:
    """A kept label's info; {} when it is missing or unreadable (one cut by a kill before 2026-12-07): the
    label is still sent, without it, rather than failing every retry for ever."""
    try:
        with open(meta) as f:
            info = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        logger.warning(f"{meta}: unreadable ({e}); its label is sent without its info")
        return {}
    return info if isinstance(info, dict) else {}
