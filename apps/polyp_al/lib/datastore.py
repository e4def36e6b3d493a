"""The app's datastore: MONAI Label's Datastore interface over polypal.serving.framestore.

Same on-disk layout as MONAI Label's LocalDatastore (images at the top,
``labels/final``, ``labels/original``), so its endpoints and clients work
unchanged; metadata in SQLite instead of one rewritten JSON file (see
polypal.serving.framestore). On top of that:

- image ids and label tags that would leave the studies folder get HTTP 400;
- an uploaded label must be a mask (not a photograph) or a single-slice label
  volume of the frame's size, checked with the library's reader before anything
  is stored (422); mask images are stored as lossless 0/1 PNG, so the stored
  label is what the annotator meant (a 0/1 JPEG, a 0/5 map, a red or
  alpha-only drawing all become the same 0/1 mask);
- uploading to an existing image id answers 409 unless params say
  ``{"replace": true}``; deletes and replacements keep the old files in
  ``.polypal/trash`` (polypal.serving.framestore);
- images over the pixel cap answer 413; a refused upload's temporary file is
  deleted.

Size (over ~250 lines): MONAI Label's ``Datastore`` interface has some thirty abstract
methods, each a thin call into ``FrameStore``; splitting them would scatter one interface.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any, Dict, List, Optional

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from polypal.data import VOLUME_EXTENSIONS, DataError, TooLarge, frames_subfolder, read_mask, read_rgb, write_label
from polypal.serving import label_frames
from polypal.serving.framestore import (Exists, FrameChanged, FrameStore, InfoTooLarge, LinkedFolder, NotFound,
                                        check_info_size)
from polypal.vocab import FRAME_EXTENSIONS, LABEL_EXTENSIONS, InvalidName, check_name, client_name, split_name

logger = logging.getLogger(__name__)



def checked_mask(image_id: str, image_uri: str | None, label_file: str, moved=None, seen: dict | None = None):
    """The label file as a bool (H, W) mask, checked against its frame: 404 unknown frame, 422 unreadable
    frame or a mask that is not a mask of that frame's size (logged, naming the frame and the problem).
    ``moved()``: when the frame cannot be read, the answer to give if that is because it was deleted or
    replaced meanwhile (None if it was not). ``seen["pixels"]``: set to the decoded frame's
    ``label_frames.pixels_sha`` (the picture the label is drawn on)."""
    if not image_uri:
        raise HTTPException(status_code=404, detail=f"unknown image id {image_id!r}")
    try:
        rgb = read_rgb(image_uri)
        hw = rgb.shape[:2]
        if seen is not None:
            seen["pixels"] = label_frames.pixels_sha(rgb)
    except TooLarge as e:
        raise HTTPException(status_code=413, detail=f"frame {image_id}: {e.problem}") from None
    except DataError as e:
        answer = moved() if moved is not None else None
        if answer is not None:
            logger.warning(f"label for {image_id} not stored: {answer.detail}")
            raise answer from None
        logger.error(f"frame {image_id} is unusable: {e}")
        raise HTTPException(status_code=422, detail=f"frame {image_id} is unusable: {e.problem}") from None
    try:
        return read_mask(label_file, expected_hw=hw)
    except TooLarge as e:
        raise HTTPException(status_code=413, detail=f"label for {image_id} rejected: {e.problem}") from None
    except DataError as e:
        logger.warning(f"label for {image_id} rejected: {e}")
        raise HTTPException(status_code=422, detail=f"label for {image_id} rejected: {e.problem}") from None

def _consumed(path: str) -> None:
    """Delete a refused upload: MONAI Label's endpoint only deletes its temporary file on success."""
    try:
        if os.path.dirname(os.path.realpath(path)) == os.path.realpath(tempfile.gettempdir()):
            os.unlink(path)
    except OSError:
        pass


def _checked(kind: str, value: str) -> str:
    try:
        return check_name(kind, value)
    except InvalidName as e:
        raise HTTPException(status_code=400, detail=str(e)) from None


# The tag of the label this thread stored last: MONAI Label's PUT /datastore/label calls the app's on_save_label
# (image, label id) right after the datastore's save_label, in the same thread, without the tag.
LAST_SAVE = threading.local()


def take_saved_tag() -> str | None:
    """The tag this thread's last save_label stored (once; None when none since the last call)."""
    tag = getattr(LAST_SAVE, "tag", None)
    LAST_SAVE.tag = None
    return tag


def check_client(image_id: str, label_info) -> None:
    """A save's ``client_id``, when it sends one, as next-sample takes it (``vocab.client_name``), else 400
    before anything is stored (before, a list, a dict or a terminal escape was stored and exported). With
    authentication on, a save is credited to its signed-in user, and its client_id is not looked at."""
    from lib.auth import enabled as auth_enabled

    if auth_enabled():
        return
    try:
        client_name((label_info or {}).get("client_id") if isinstance(label_info, dict) else None)
    except ValueError as e:
        raise HTTPException(status_code=400, detail=f"label for {image_id} rejected: {e}") from None


def note_save(label_tag: str, label_info, unchanged: bool = False) -> None:
    """What ``on_save_label`` reads of this thread's save: its tag, the ``client_id`` it sent (checked
    by ``check_client``), and whether the same label was already stored (its credit stays)."""
    LAST_SAVE.tag = label_tag
    LAST_SAVE.unchanged = unchanged
    try:
        LAST_SAVE.client = client_name(label_info.get("client_id")) if isinstance(label_info, dict) else None
    except ValueError:
        LAST_SAVE.client = None


def take_saved_unchanged() -> bool:
    """Whether this thread's last save found the same label already stored (once)."""
    unchanged = bool(getattr(LAST_SAVE, "unchanged", False))
    LAST_SAVE.unchanged = False
    return unchanged


def take_saved_client() -> str | None:
    """The ``client_id`` this thread's last save sent (once; None when it sent none)."""
    client = getattr(LAST_SAVE, "client", None)
    LAST_SAVE.client = None
    return client


_LOGGED_LINKS: set = set()


def _said(e: Exception) -> str:
    """An error's text, logged once as an error too when it is the server's set-up (a linked label folder)."""
    if isinstance(e, LinkedFolder) and str(e) not in _LOGGED_LINKS and len(_LOGGED_LINKS) < 100:
        _LOGGED_LINKS.add(str(e))
        logger.error(str(e))
    return str(e)


def labeled_set(datastore) -> frozenset:
    """The ids with a final label: kept between requests by our datastores, read whole from any other
    (MONAI Label's LocalDatastore with ``--conf datastore local``)."""
    if hasattr(datastore, "labeled_set"):
        return datastore.labeled_set()
    return frozenset(datastore.get_labeled_images())


def empty_studies_hint(root: str) -> str:
    """What to tell a user whose studies folder has no frame (next-sample then answers {})."""
    exts = ", ".join(e.lstrip(".") for e in FRAME_EXTENSIONS)
    sub = frames_subfolder(root)
    if sub:
        return (f"no frames in {root}: frames go at the top of the studies folder ({exts}), and this one has a "
                f"{sub}/ subfolder (a dataset layout, as polypal-export writes and polypal-sim reads). To "
                f"annotate those frames, start with --studies {os.path.join(root, sub)} (its masks are not read)")
    try:  # what MONAI Label and polyp-al make in it aside (labels/, .polypal/), anything at all?
        other = [n for n in os.listdir(root) if n not in ("labels", ".polypal")]
    except OSError:
        other = []
    typo = ("; the folder is empty: MONAI Label makes a --studies folder that does not exist, so if you meant "
            "a folder of frames, check the path") if not other else ""
    return (f"no frames in {root} ({exts} at the top of the folder): next-sample answers {{}} until frames are "
            f"added (copy them there and restart, polypal-ingest a video, or PUT /datastore/image){typo}")


_EXPORTING = threading.Lock()  # GET /datastore/dataset: one archive made at a time (429 for the others)


class PolypDatastore(Datastore):
    def __init__(self, studies: str, read_only: bool = False, on_change=None):
        """``on_change(image_id)``: called after a frame is added, replaced or deleted (the server drops
        what it knew about the old file: its thumbnail, scores and an "undecodable" mark)."""
        self.store = FrameStore(studies, read_only=read_only)
        self._path = self.store.root
        self._on_change = on_change
        for image_id in self.store.recovered:  # an interrupted replace finished or undone, labels moved to the trash
            self._changed(image_id)
        if not read_only and not self.store.image_ids():
            logger.warning(empty_studies_hint(self._path))

    def _changed(self, image_id: str) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(image_id)
        except Exception as e:  # the frame is stored; stale scores only cost a worse pick until re-scored
            logger.error(f"frame {image_id} changed but its old features could not be dropped: {e}")

    # -- identity ----------------------------------------------------------------------------
    def name(self) -> str:
        return self.store.get_meta("name", "polyp-al studies")

    def set_name(self, name: str):
        self.store.set_meta("name", name)

    def description(self) -> str:
        return self.store.get_meta("description", "Endoscopy frames")

    def set_description(self, description: str):
        self.store.set_meta("description", description)

    # -- reads -------------------------------------------------------------------------------
    def datalist(self, full_path=True) -> List[Dict[str, Any]]:
        """(frame, final label) pairs to train on; a label whose frame file now holds another picture (changed
        on disk while the server runs) is left out, and said why in ``unreadable_labels`` (the training's
        skipped list)."""
        ids = self.store.labeled_ids(DefaultLabelTag.FINAL.value)
        self.unreadable_labels = label_frames.off_their_picture(self.store, ids, DefaultLabelTag.FINAL.value)
        for i, why in self.unreadable_labels.items():
            logger.warning(f"not training on {i}: {why}")
        return [{"image": self.store.image_path(i), "label": self.store.label_path(i, "final")}
                for i in ids if i not in self.unreadable_labels]

    def get_labels_by_image_id(self, image_id: str) -> Dict[str, str]:
        return {tag: image_id for tag in self.store.labels_of(image_id)}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return image_id if self.store.label_path(image_id, tag) else ""

    def get_image(self, image_id: str, params=None) -> Any:
        p = self.get_image_uri(image_id)
        return open(p, "rb") if p else None

    def get_image_uri(self, image_id: str) -> str:
        return self.store.image_path(image_id)

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        p = self.get_label_uri(label_id, label_tag)
        return open(p, "rb") if p else None

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label's file; a 409 when the frame file was changed on disk to another picture after the label
        was drawn (until the next start moves the label to the trash): shown over the new picture, it would
        mislead an annotator into saving it again as that picture's label."""
        try:
            check_name("label tag", label_tag)
        except InvalidName:
            return ""
        path = self.store.label_path(label_id, label_tag)
        why = path and label_frames.off_picture(self.store, label_id, label_tag)
        if why:  # again once a write under way is over: a frame replace puts its new file in place inside its
            # transaction, and a reader of the committed rows saw the label with the new picture (a 409 saying
            # the frame was "changed on disk"; a probe: 63 of 2873 downloads during replaces). The write lock is
            # only passed through (the frame's digest is not computed under it: repeated downloads of a label
            # whose frame really changed on disk would hold up every writer)
            with self.store._tx():
                pass
            path = self.store.label_path(label_id, label_tag)
            why = path and label_frames.off_picture(self.store, label_id, label_tag)
        if why:
            logger.warning(f"not serving label {label_id} ({label_tag}): {why}")
            raise HTTPException(status_code=409, detail=f"label {label_id} ({label_tag}) is not served: {why}; "
                                                        f"save a new label for this frame")
        return path

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        """The frame's info, without keys only the server may set that a client slipped in (next-sample
        answers are merged with this, so a spoofed ``id`` or ``path`` would mislead the annotator)."""
        from lib.security import RESERVED_IMAGE_KEYS

        info = self.store.image_info(image_id)
        for k in RESERVED_IMAGE_KEYS - {"name", "ext", "ts", "user", "strategy", "served"}:  # the server's own
            info.pop(k, None)
        return info

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        return self.store.label_info(label_id, label_tag)

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        return self.store.labeled_ids(label_tag or DefaultLabelTag.FINAL.value)

    def labeled_set(self) -> frozenset:
        """The ids with a final label, kept between requests until a label is added or removed."""
        return self.store.labeled_set(DefaultLabelTag.FINAL.value)

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        return self.store.unlabeled_ids(label_tag or DefaultLabelTag.FINAL.value)

    def list_images(self) -> List[str]:
        return self.store.image_ids()

    def get_dataset_archive(self, limit_cases: Optional[int]) -> str:
        """GET /datastore/dataset: the labeled set as polypal-export writes it (images/, masks/ 0/255,
        manifest.json/.csv), zipped. The zip is deleted once sent (lib.security). One export at a time: each
        copies and zips the whole labeled set (twice its size in the temp dir, every frame decoded), and 200
        requests at once from one client ran 16 in parallel past the disk floor; the others get 429."""
        if not _EXPORTING.acquire(blocking=False):
            raise HTTPException(status_code=429, detail="an export of the labeled set is being made: one at a "
                                                        "time; ask again when it is done")
        try:
            return self._archive(limit_cases)
        finally:
            _EXPORTING.release()

    def _archive(self, limit_cases: Optional[int]) -> str:
        import shutil
        import zipfile

        from lib.infer import _result_dir
        from lib.security import scratch_file
        from polypal.serving.export import export_labeled

        # in the server's own locked folder, which the next start removes once this server is gone: a server
        # killed during an export left the copy and the zip in the temp dir for good
        fd, path = tempfile.mkstemp(suffix=".zip", prefix="export-", dir=_result_dir())
        os.close(fd)
        scratch_file(path)
        tmp = tempfile.mkdtemp(prefix="export-", dir=_result_dir())
        try:
            try:
                export_labeled(self.store.root, tmp, limit=limit_cases or None,
                               source=os.path.basename(self.store.root.rstrip(os.sep)))  # no server path
            except DataError as e:  # a row whose file is missing or unreadable: the store needs a look
                logger.error(f"export failed: {e}")
                raise HTTPException(status_code=500, detail=f"export failed: "
                                                            f"{os.path.relpath(e.path, self.store.root)}: "
                                                            f"{e.problem}; see the server log") from None
            with zipfile.ZipFile(path, "w") as z:
                for root, _, files in os.walk(tmp):
                    for f in sorted(files):
                        full = os.path.join(root, f)
                        z.write(full, os.path.relpath(full, tmp))
        except BaseException:
            os.unlink(path)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def refresh(self) -> None:
        self.store.reconcile()
        for image_id in self.store.recovered:
            self._changed(image_id)

    def status(self) -> Dict[str, Any]:
        c = self.store.counts()
        return {"total": c["total"], "completed": c["label_tags"].get("final", 0), "label_tags": c["label_tags"]}

    def json(self):
        """LocalDatastore's JSON shape (what `GET /datastore/?output=all` returns)."""
        return {"name": self.name(), "description": self.description(), "images_dir": ".", "labels_dir": "labels",
                "objects": self.store.objects()}

    # -- writes ------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        try:
            _checked("image id", image_id)
            info = dict(image_info or {})
            replace = info.pop("replace", False) is True
            try:
                check_info_size(info)
            except InfoTooLarge as e:
                raise HTTPException(status_code=413, detail=f"image {image_id} rejected: {e}") from None
            try:
                read_rgb(image_filename)
            except TooLarge as e:
                raise HTTPException(status_code=413, detail=f"image {image_id} rejected: {e.problem}") from None
            except DataError as e:
                raise HTTPException(status_code=422, detail=f"image {image_id} rejected: {e.problem}") from None
            try:
                out = self.store.add_image(image_id, image_filename, info, replace=replace)
                self._changed(image_id)
                return out
            except (Exists, LinkedFolder) as e:
                raise HTTPException(status_code=409, detail=_said(e)) from None
            except InvalidName as e:
                raise HTTPException(status_code=400, detail=f"image {image_id} rejected: {e}") from None
            except OSError as e:  # e.g. a folder of that name in the studies folder
                logger.error(f"image {image_id} could not be stored: {e}")
                raise HTTPException(status_code=409 if isinstance(e, IsADirectoryError) else 500,
                                    detail=f"image {image_id} could not be stored: {e.strerror}") from None
            except ValueError as e:
                raise HTTPException(status_code=422, detail=f"image {image_id} rejected: {e}") from None
        except BaseException:
            _consumed(image_filename)
            raise

    def remove_image(self, image_id: str) -> None:
        _checked("image id", image_id)
        try:
            self.store.remove_image(image_id)
        except NotFound as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        except LinkedFolder as e:
            raise HTTPException(status_code=409, detail=_said(e)) from None
        self._changed(image_id)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        try:
            _checked("image id", image_id)
            _checked("label tag", label_tag)
            _, ext = split_name(os.path.basename(label_filename))
            if ext.lower() not in LABEL_EXTENSIONS:
                raise HTTPException(status_code=415, detail=f"label for {image_id}: file type "
                                                            f"{ext or '(no extension)'!r} not accepted; send a "
                                                            f"png/jpg/tif mask or a .nii.gz/.nii/.nrrd label map")
            try:
                check_info_size(label_info)
            except InfoTooLarge as e:
                raise HTTPException(status_code=413, detail=f"label for {image_id} rejected: {e}") from None
            check_client(image_id, label_info)
            frame = self.store.frame_signature(image_id)  # the file the mask is checked against

            def moved():
                self.store.wait_for_writes()  # a delete or replace moving the frame's file: its outcome
                if self.store.image_ext(image_id) is None:
                    return HTTPException(status_code=404, detail=f"image {image_id!r} not found (deleted while "
                                                                 f"its label was being checked)")
                if self.store.frame_signature(image_id) != frame:  # another file
                    return HTTPException(status_code=409, detail=f"frame {image_id!r} was replaced while its "
                                                                 f"label was being checked; look at the new frame "
                                                                 f"and label it again")
                return None

            seen: dict = {}
            mask = checked_mask(image_id, self.get_image_uri(image_id), label_filename, moved, seen)
            # stored re-encoded, never as uploaded: mask images as 0/1 PNG, label volumes as a clean volume
            # of the same format (no trailing bytes, detached data or odd headers survive)
            is_volume = any(ext.lower() == v for v in VOLUME_EXTENSIONS)
            from lib.infer import _result_dir

            fd, stored = tempfile.mkstemp(suffix=(".seg.nrrd" if ext.lower() == ".seg.nrrd" else ext.lower())
                                          if is_volume else ".png", dir=_result_dir())  # (gone with it)
            os.close(fd)
            write_label(mask, stored)
            try:
                label_id = self.store.save_label(image_id, stored, label_tag, label_info, frame_signature=frame,
                                                 frame_pixels=seen.get("pixels"))
            except NotFound as e:
                raise HTTPException(status_code=404, detail=str(e)) from None
            except (FrameChanged, LinkedFolder) as e:
                raise HTTPException(status_code=409, detail=_said(e)) from None
            except InvalidName as e:
                raise HTTPException(status_code=400, detail=str(e)) from None
            except ValueError as e:
                raise HTTPException(status_code=415, detail=f"label for {image_id}: {e}") from None
            finally:
                os.unlink(stored)
        except BaseException:
            _consumed(label_filename)
            raise
        unchanged = self.store.last_save_unchanged()
        logger.info(f"label {label_tag} for {image_id} " + ("saved again unchanged: kept as it was" if unchanged
                    else f"stored: {int(mask.sum())} polyp pixels"))
        note_save(label_tag, label_info, unchanged)
        return label_id

    def remove_label(self, label_id: str, label_tag: str) -> None:
        _checked("image id", label_id)
        _checked("label tag", label_tag)
        try:
            self.store.remove_label(label_id, label_tag)
        except NotFound as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        except LinkedFolder as e:
            raise HTTPException(status_code=409, detail=_said(e)) from None

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        try:
            self.store.update_image_info(image_id, info)
        except NotFound as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        except InfoTooLarge as e:
            raise HTTPException(status_code=413, detail=f"image {image_id}: {e}") from None

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        try:
            self.store.update_label_info(label_id, label_tag, info)
        except NotFound as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        except InfoTooLarge as e:
            raise HTTPException(status_code=413, detail=f"label {label_tag} of {label_id}: {e}") from None
