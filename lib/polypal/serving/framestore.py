"""A frame/label store for annotation servers: SQLite metadata over MONAI Label's folder layout.

Layout on disk is MONAI Label's own: images at the top of the studies folder,
labels in ``labels/<tag>/<image id><ext>``. Metadata lives in
``.polypal/datastore.sqlite`` (WAL mode), so:

- every update touches one row (no whole-file rewrite), and readers never
  block writers;
- several processes (the server, its scoring and training subprocesses) see
  each other's writes: nothing is cached in memory, so no update is lost;
- a label is stored crash-safely: the upload is written to a temporary file in
  the label folder, fsynced, renamed over the destination, the folder fsynced,
  then its row is committed. A label acknowledged to a client is on disk, and
  a label file without a row (a crash between the two steps) is picked up
  again by ``reconcile`` at the next start;
- ``reconcile`` also imports an existing ``datastore_v2.json`` (MONAI Label's
  LocalDatastore) once, keeping every image and label info; the JSON file is
  left untouched.

A label stays with the picture it was drawn on: the frame file's SHA-256 is recorded with each label, and
``reconcile`` keeps the labels of a missing frame aside until the same picture comes back, and moves to the
trash a label whose frame file now holds another picture.

Ids and tags are checked by ``check_name``: no separators, no '..', no NUL, at most
MAX_NAME characters.

Nothing a client does loses a frame or a label for good: deleting a frame or a
label, replacing a frame (``replace=True``; otherwise an existing id is refused
with ``Exists``) and overwriting a label move the old files into a new folder
``.polypal/trash/<YYYYmmdd-HHMMSS>-<random>/`` (``tempfile.mkdtemp`` with the local time as
prefix; the frame id is not in the name) with a ``manifest.json`` saying why and where they were.
``polypal-trash restore`` (polypal.serving.trash) puts one back while the server
runs: it links the files back, never over a file, and reconciles.

Size (over ~250 lines): one class whose crash-safety rests on invariants shared by every
method (reconcile at open, temp file + fsync + rename, trash before delete); kept together so
they are read together.
"""

from __future__ import annotations

import contextlib
import filecmp
import fnmatch
import json
import logging
import os
import shutil
import tempfile
import threading
import time

from polypal.serving import label_frames
from polypal.serving.fileops import copy_fsynced as _copy_fsynced
from polypal.serving.fileops import file_signature
from polypal.serving.fileops import fsync_dir as _fsync_dir
from polypal.serving.fileops import label_trash_name as _label_trash_name
from polypal.serving.fileops import same_entry as _same_entry
from polypal.serving.fileops import write_fsynced as _write_fsynced
from polypal.serving.sqlite_db import SQLiteDB, counted
from polypal.vocab import FRAME_EXTENSIONS, LABEL_EXTENSIONS, check_alias, check_name, patterns, plain_name, split_name

logger = logging.getLogger(__name__)

IMAGE_PATTERNS = patterns(FRAME_EXTENSIONS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, ext TEXT NOT NULL, info TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS labels (image_id TEXT NOT NULL, tag TEXT NOT NULL, ext TEXT NOT NULL,
                                   info TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (image_id, tag));
CREATE INDEX IF NOT EXISTS labels_by_tag ON labels (tag);
-- the labeled set is read from this index alone, already in id order
CREATE INDEX IF NOT EXISTS labels_tag_id ON labels (tag, image_id);
""" + counted("labels", "image_id, tag") + counted("images", "id")


class NotFound(KeyError):
    pass


REPLACE_JOURNAL = "replace.json"  # in a trash folder: a frame replace under way (FrameStore._replace)
_REPLACE_KEY = "replace:"  # meta key of a committed replace, by its trash folder's name

MAX_INFO_BYTES = 256 << 10  # one image's or label's info, as stored (JSON), after merges


class InfoTooLarge(ValueError):
    """Merged info past MAX_INFO_BYTES: each update was capped, their sum was not (60 updates of 900 KB
    made every listing 55 MB)."""


def check_info_size(info: dict | None) -> None:
    """An upload's or a save's info, before anything is stored: at most MAX_INFO_BYTES, as merges are (a
    frame uploaded with 900 KB of params made every listing carry it, and left no room for any update)."""
    n = len(json.dumps(info or {}, default=str))
    if n > MAX_INFO_BYTES:
        raise InfoTooLarge(f"info of {n} bytes, more than {MAX_INFO_BYTES}: not stored")


def _merged_info(cur: dict, info: dict, limit: int | None = MAX_INFO_BYTES) -> str:
    cur.update(info)
    text = json.dumps(cur)
    if limit is not None and len(text) > limit:
        raise InfoTooLarge(f"info would be {len(text)} bytes, more than {MAX_INFO_BYTES}: not stored")
    return text


def _link_back(src: str, path: str) -> bool:
    """``src`` (a file in the trash) moved back to ``path``, never over a file there; whether it went."""
    if not _link_copy(src, path):
        return False
    os.unlink(src)
    return True


def _put_back(copy: str | None, path: str, placed: int | None) -> bool:
    """Undo a write over ``path`` when the file there is still the one it placed (inode ``placed``): its
    earlier file back from its ``copy`` in the trash, or, without one (the write made the file), the file
    gone. False: not done (another write's file is there, or the copy could not be made)."""
    try:
        if placed is None or os.lstat(path).st_ino != placed:
            return False
    except FileNotFoundError:
        return copy is not None and _link_copy(copy, path)
    if copy is None:
        os.unlink(path)
        return True
    tmp = f"{path}.undo-{os.getpid()}"
    try:
        os.link(copy, tmp, follow_symlinks=False)  # a symlink goes back as the link, never as what it names
    except OSError:
        try:
            shutil.copy2(copy, tmp, follow_symlinks=False)
        except OSError:
            return False
    os.replace(tmp, path)
    return True


def _link_copy(copy: str, path: str) -> bool:
    """A copy of ``copy`` (it stays in the trash) at ``path``, never over a file there (a symlink is copied
    as the link)."""
    try:
        os.link(copy, path, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            if os.path.islink(copy):
                os.symlink(os.readlink(copy), path)
                return True
            with open(copy, "rb") as f, open(path, "xb") as g:
                shutil.copyfileobj(f, g)
            return True
        except OSError:
            return False


class Exists(ValueError):
    """An image id that is already in the store (and replacing it was not asked for)."""


class FrameChanged(Exception):
    """The frame a label was checked against was replaced before the label could be stored."""


class LinkedFolder(Exception):
    """``.polypal``, ``.polypal/trash``, ``labels/`` or a ``labels/<tag>`` folder is a symbolic link: no file is
    written, moved or deleted through it."""


# the folders whose files a request or a purge writes, moves or deletes by name (each checked before labels/<tag>)
WRITTEN_FOLDERS = (".polypal", os.path.join(".polypal", "trash"), "labels")


def linked_folder(root: str, tags=None) -> str | None:
    """The first of ``.polypal``, ``.polypal/trash``, ``labels`` and ``labels/<tag>`` (relative to ``root``;
    every tag's folder, or those of ``tags``) that is a symbolic link, or None.
    A request names the label file (its image id and tag): through a link, a save would write it, and a
    delete move it away, in any folder the server may write, outside the studies folder (a probe: a local
    user's ``labels/ext -> /elsewhere``, then a remote save of tag ``ext`` replaced a file there). Every delete
    moves files into the trash, and ``polypal-trash purge`` deletes its old folders: through a linked trash,
    frames and labels would leave the studies folder and a purge delete folders elsewhere. A few lstat calls:
    run before every write that touches these folders."""
    linked = next((f for f in WRITTEN_FOLDERS[:2] if os.path.islink(os.path.join(root, f))), None)
    if linked:
        return linked
    top = os.path.join(root, "labels")
    if os.path.islink(top):
        return "labels"
    if tags is not None:
        return next((os.path.join("labels", t) for t in tags if os.path.islink(os.path.join(top, t))), None)
    try:
        with os.scandir(top) as it:
            for e in it:
                if e.is_symlink() and plain_name(e.name):  # (other names are no tag: never scanned)
                    return os.path.join("labels", e.name)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return None


def check_folders(root: str, tags=None) -> None:
    """Raise LinkedFolder, naming it, when ``.polypal``, its trash, ``labels`` or the folder of one of
    ``tags`` (None: any tag) under ``root`` is a symbolic link (``linked_folder``). A server does not start on
    such a folder (checked before its databases are opened); one made while it runs refuses the writes that
    would go through it."""
    linked = linked_folder(root, tags)
    if linked:
        raise LinkedFolder(f"{linked} in the studies folder is a symbolic link: labels and trashed files "
                           f"are written, moved and deleted only in real folders inside the studies folder "
                           f"(through the link, a request could name a file anywhere the server may write, "
                           f"or another tag's or a frame's); replace it with a folder (a bind mount is "
                           f"fine), or link or mount the whole studies folder instead")


def _only_leftovers(folder: str) -> bool:
    """A trash folder holding nothing but a cut journal or manifest (a crash before its first file moved)."""
    try:
        return set(os.listdir(folder)) <= {REPLACE_JOURNAL + ".tmp", "manifest.json.tmp", "manifest.json"}
    except OSError:
        return False


def _label_file_exists(root: str, key: tuple[str, str], ext: str) -> bool:
    """True when the label file of a row exists now (saved after the reconcile scan)."""
    return os.path.exists(os.path.join(root, "labels", key[1], key[0] + ext))


def _plain_ext(ext) -> bool:
    """An extension as the store records them: '' or '.' followed by a plain name ('.png', '.nii.gz')."""
    return isinstance(ext, str) and (ext == "" or (ext.startswith(".") and plain_name(ext[1:])))


def _rows_of(c, image_id: str) -> dict:
    """An id's rows as they are: its frame's (extension, info) and each label's (extension, info)."""
    r = c.execute("SELECT ext, info FROM images WHERE id=?", (image_id,)).fetchone()
    return {"image": list(r) if r else None,
            "labels": {t: [e, i] for t, e, i in c.execute("SELECT tag, ext, info FROM labels WHERE image_id=?",
                                                          (image_id,))}}


def _legacy_stale(now: dict, files: dict, frame: str | None) -> bool:
    """A journal without a record of the rows (a version before 2026-12-06 22:20): its process died with the
    id's rows as they were, the old frame's; rows of another frame, or none, were written since."""
    if frame is None or now["image"] is None or split_name(str(files[frame]))[1] != now["image"][0]:
        return True
    tags = {str(rel).split("/")[1] for n, rel in files.items() if n != frame and str(rel).startswith("labels/")
            and str(rel).count("/") == 2}
    return not tags <= set(now["labels"])  # a label of the old frame whose row is gone: deleted since


def _write_manifest(folder: str, intent: dict) -> None:
    """A replace's trash manifest (what polypal-trash lists and restores), from its journal."""
    _write_fsynced(os.path.join(folder, "manifest.json"),
                   {"reason": intent["reason"], "time": intent["time"], "files": intent["files"],
                    "labels": intent.get("labels") or {}})


class FrameStore:
    def __init__(self, root: str | os.PathLike, patterns=IMAGE_PATTERNS, read_only: bool = False):
        self.root = os.path.realpath(str(root))
        self.patterns = tuple(patterns)
        self.recovered: list[str] = []  # frames the last reconcile changed (replace finished/undone, labels trashed)
        self._local = threading.local()  # the undo list of this thread's write (``_undoable``)
        self.db_path = os.path.join(self.root, ".polypal", "datastore.sqlite")
        if not read_only:  # before anything is made, read or moved through one (a start refuses): a linked
            self.check_folders()  # .polypal got its database written through the link before the refusal
        os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
        fresh = not os.path.exists(self.db_path) or os.path.getsize(self.db_path) == 0
        self._db = SQLiteDB(self.db_path, _SCHEMA + label_frames.SCHEMA, check=not read_only)
        if linked_folder(self.root, ["final", "original"]) is None:
            for tag in ("final", "original"):
                os.makedirs(self.label_dir(tag), exist_ok=True)
        if not read_only:
            self.reconcile()
            if fresh and self.counts()["label_tags"]:
                logger.warning(
                    f"{self.db_path} was missing or empty, and this folder has labels: its frames and labels "
                    f"were registered again from their files, but what only the database held is gone (each "
                    f"label's info: annotator, time; the pictures labels were drawn on). If it was lost, stop "
                    f"the server and put it back from a backup with its -wal file beside it.")


    # -- plumbing --------------------------------------------------------------------------
    def _conn(self):
        return self._db.conn()

    def _tx(self):
        return self._db.tx()

    @contextlib.contextmanager
    def _undoable(self):
        """A write transaction whose file moves are put back when it fails (a full disk: the rows roll back,
        and the files moved inside it must follow, or an acknowledged label is replaced by one answered 500,
        a refused delete leaves rows without files). ``trash`` and the callers register each move's undo
        (``_on_undo``). A failure inside the transaction is undone under its write lock; a failed COMMIT
        (SQLite has rolled back and let the lock go) under the lock taken again. An undo never overwrites a
        file it did not place (another write may have come in between): what it cannot put back stays in
        the trash, and a trash folder is removed only when everything in it went back."""
        undo: list = []
        outer = getattr(self._local, "undo", None)
        self._local.undo = undo
        try:
            with self._tx() as c:
                try:
                    yield c
                except BaseException:
                    self._run_undo(undo)  # (the lock still held)
                    undo.clear()
                    raise
        except BaseException:
            if undo:  # the COMMIT failed
                try:
                    with self._tx():
                        self._run_undo(undo)
                except Exception as e:  # noqa: BLE001 - the disk still full: without the lock, as safely
                    logger.error(f"a failed write's files are put back without the write lock ({e})")
                    self._run_undo(undo)
            raise
        finally:
            self._local.undo = outer

    @staticmethod
    def _run_undo(undo: list) -> None:
        ok = True  # every undo so far went through: a trash folder may go
        for fn in reversed(undo):
            try:
                ok = fn(ok) is not False and ok
            except Exception as e:  # noqa: BLE001 - the others still go back
                ok = False
                logger.error(f"a file move of a failed write could not be undone: {e}")

    def _on_undo(self, fn) -> None:
        undo = getattr(self._local, "undo", None)
        if undo is not None:
            undo.append(fn)

    def wait_for_writes(self) -> None:
        """Return once no write transaction is under way (a delete or replace moving files commits first)."""
        with self._tx():
            pass

    def frame_signature(self, image_id: str) -> list | None:
        """[inode, mtime_ns, size] of a frame's file now (a replaced frame has another), None without one."""
        path = self.image_path(image_id)
        return file_signature(path) if path else None

    def trash(self, files: dict[str, str], reason: str, keep_source: bool = False,
              frame: str | None = None, labels: dict[str, dict] | None = None) -> str | None:
        """Move (or, with keep_source, hard-link/copy) files into a new trash folder.

        ``files`` maps a name in the trash folder to an existing path. ``frame``: the id of the frame the
        (label) files belong to; its file's signature is recorded, so that a restore can tell a label of
        this frame from one of a frame that replaced it later. ``labels``: per trash name of a label file,
        what a restore needs beside it ({"info": the label's info, "drawn_on": {"sha256", "pixels"} of the
        picture it was drawn on}). The manifest is written before anything moves (a crash half-way leaves
        a folder that says what it holds). Returns the folder, or None when none of the files exists."""
        # lexists: a dangling symlink in a label's place is an entry too, moved (or linked) as the link itself
        # (before, it was dropped as missing: it stayed, and every save of that label then failed)
        files = {k: v for k, v in files.items() if v and os.path.lexists(v)}
        if not files:
            return None
        base = os.path.join(self.root, ".polypal", "trash")
        os.makedirs(base, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base)
        manifest = {"reason": reason, "time": time.time(),
                    "files": {name: os.path.relpath(src, self.root) for name, src in files.items()}}
        if frame is not None:
            manifest["frame"] = {"id": frame, "signature": self.frame_signature(frame)}
        if labels:
            manifest["labels"] = {k: v for k, v in labels.items() if k in files}
        moved = []
        try:
            _write_fsynced(os.path.join(folder, "manifest.json"), manifest)
            for name, src in files.items():
                dest = os.path.join(folder, name)
                if keep_source:
                    try:
                        os.link(src, dest, follow_symlinks=False)
                    except OSError:
                        shutil.copy2(src, dest, follow_symlinks=False)
                else:
                    os.replace(src, dest)
                    moved.append((dest, src))
            _fsync_dir(folder)
        except BaseException:
            # callers trash inside their transaction, which then rolls back: the files go back where the
            # rows say they are (a disk full while moving must not leave rows without files)
            stuck = False
            for dest, src in reversed(moved):
                try:
                    os.replace(dest, src)
                except OSError as e:
                    stuck = True
                    logger.error(f"could not move {dest} back to {src}: {e}")
            if not stuck:  # what is left there are copies/links of files still in place
                shutil.rmtree(folder, ignore_errors=True)
            raise

        def undo(ok: bool) -> bool:  # the write that trashed them failed: the files go back, the folder goes
            back = True
            for dest, src in reversed(moved):
                back = _link_back(dest, src) and back
            if ok and back:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                logger.error(f"{os.path.relpath(folder, self.root)} kept: a failed write's files could not all "
                             f"go back")
            return back

        self._on_undo(undo)
        logger.info(f"kept in {os.path.relpath(folder, self.root)}: {manifest['files']} ({reason})")
        return folder

    def label_dir(self, tag: str) -> str:
        return os.path.join(self.root, "labels", check_name("label tag", tag))

    def check_folders(self, tags=None) -> None:
        """``check_folders`` on this store's folder."""
        check_folders(self.root, tags)

    def _matches(self, name: str) -> bool:
        low = name.lower()
        return any(fnmatch.fnmatch(low, p) for p in self.patterns)

    # -- start-up ----------------------------------------------------------------------------
    def reconcile(self) -> dict:
        """Bring the metadata in line with the files (one directory scan, one transaction).

        A label stays with the picture it was drawn on: labels of a frame missing at a start are kept aside
        and go back only onto the same picture (the trash takes them when another picture comes under that
        id), and labels whose frame file was changed on disk for another picture go to the trash."""
        t0 = time.perf_counter()
        self.check_folders()  # its scan would read, register, delete and move files through a link
        self.recovered, blocked = self._recover_replaces()
        files = {}
        with os.scandir(self.root) as it:
            for e in it:
                if e.name.startswith(".upload-") and e.is_file(follow_symlinks=False) \
                        and time.time() - e.stat(follow_symlinks=False).st_mtime > 3600:
                    os.unlink(e.path)  # a frame upload cut off by a crash (never acknowledged): as for labels
                    continue
                if e.name.startswith(".") or not self._matches(e.name):
                    continue
                if not e.is_file():  # follows symlinks
                    continue
                i, ext = split_name(e.name)
                if plain_name(i):
                    files.setdefault(i, ext)
        label_exts: dict = {}  # (id, tag) -> the extension of each label file there
        empty: list = []  # (id, tag, ext, path) of label files of 0 bytes
        labels_root = os.path.join(self.root, "labels")
        for tag in sorted(os.listdir(labels_root)) if os.path.isdir(labels_root) else []:
            d = os.path.join(labels_root, tag)
            if not os.path.isdir(d) or not plain_name(tag):
                continue
            for name in os.listdir(d):
                if name.startswith("."):
                    p = os.path.join(d, name)
                    # an upload left by a crash was never acknowledged; a fresh one may be in flight
                    if name.startswith(".upload-") and time.time() - os.path.getmtime(p) > 3600:
                        os.unlink(p)
                    continue
                i, ext = split_name(name)
                # a stray .txt is not a label, nor is a folder
                if i in files and ext.lower() in LABEL_EXTENSIONS and os.path.isfile(os.path.join(d, name)):
                    if os.path.getsize(os.path.join(d, name)) == 0:  # emptied outside the server: no label
                        empty.append((i, tag, ext, os.path.join(d, name)))
                        continue
                    label_exts.setdefault((i, tag), []).append(ext)
        label_files, extras = label_frames.one_per_label(self, label_exts)
        migrated = self._migrate_v2_json()
        digests = label_frames.hash_frames(self, files, label_files)
        with self._tx() as c:
            known = dict(c.execute("SELECT id, ext FROM images"))

            def there(i, e):
                return os.path.isfile(os.path.join(self.root, i + e))  # (a folder in its place is not the frame)

            # re-checked under the write lock: another process (the server, while polypal-trash restores) may
            # have added, replaced or deleted files since the scan
            new = [(i, e) for i, e in files.items() if i not in known and there(i, e)]
            gone = [i for i in known if i not in files and not there(i, known[i]) and i not in blocked]
            c.executemany("INSERT INTO images (id, ext) VALUES (?, ?)", new)
            c.executemany("UPDATE images SET ext=? WHERE id=?", [(e, i) for i, e in files.items()
                                                                 if i in known and known[i] != e and there(i, e)
                                                                 and not there(i, known[i]) and i not in blocked])
            kept_aside = label_frames.keep_aside(self, c, gone)
            c.executemany("DELETE FROM images WHERE id=?", [(i,) for i in gone])
            c.executemany("DELETE FROM labels WHERE image_id=?", [(i,) for i in gone])
            lk = {(r[0], r[1]): r[2] for r in c.execute("SELECT image_id, tag, ext FROM labels")}
            moved = []  # ids whose labels went to the trash
            for (i, t), e in label_files.items():  # a label file without its row (or with another extension)
                if lk.get((i, t)) != e and i not in blocked and _label_file_exists(self.root, (i, t), e) \
                        and c.execute("SELECT 1 FROM images WHERE id=?", (i,)).fetchone() \
                        and label_frames.take_back(self, c, i, t, e, digests.get(i)) == "trash":
                    moved.append(i)
            lost = [k for k, e in lk.items() if k not in label_files and k[0] not in blocked
                    and not _label_file_exists(self.root, k, e)]
            c.executemany("DELETE FROM labels WHERE image_id=? AND tag=?", lost)
            for i, t, e, p in empty:  # (served as 0 bytes, and the export failed on it)
                if i in blocked or not os.path.isfile(p) or os.path.getsize(p) != 0:
                    continue
                self.trash({_label_trash_name(t, p): p}, f"empty label file {t}/{os.path.basename(p)} (emptied "
                           f"outside the server)", frame=i)
                c.execute("DELETE FROM labels WHERE image_id=? AND tag=? AND ext=?", (i, t, e))
                lost.append((i, t))
            if lost:  # deleted or emptied by hand (the server moves what it deletes to the trash)
                named = ", ".join(f"{t}/{i}" for i, t in lost[:5]) + (" ..." if len(lost) > 5 else "")
                logger.warning(f"{len(lost)} label file(s) missing from the studies folder or empty (an empty one "
                               f"is in the trash), their records dropped (deleted or emptied by hand?): {named}")
            moved += label_frames.check_frames(self, c, blocked, digests)
            label_frames.drop_extras(self, c, extras, blocked)
            label_frames.drop_stale(self, c)
        self.recovered += [i for i in dict.fromkeys(moved) if i not in self.recovered]
        res = {"images": len(files), "added": len(new), "removed": len(gone), "labels": len(label_files),
               "labels_kept_aside": kept_aside, "labels_to_trash": len(moved), "migrated": migrated,
               "seconds": round(time.perf_counter() - t0, 3)}
        logger.info(f"datastore reconciled: {res}")
        return res

    def _migrate_v2_json(self) -> int:
        path = os.path.join(self.root, "datastore_v2.json")
        c = self._conn()
        if not os.path.exists(path) or c.execute("SELECT 1 FROM meta WHERE key='migrated_v2'").fetchone():
            return 0
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            logger.error(f"{path}: cannot be read ({e}); not migrated, left as it is")
            return 0
        n = 0
        with self._tx() as c:
            for k in ("name", "description"):
                if old.get(k):
                    c.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (k, old[k]))
            for i, obj in (old.get("objects") or {}).items():
                img = obj.get("image", {}) if isinstance(obj, dict) else {}
                if not (plain_name(i) and isinstance(img, dict) and _plain_ext(img.get("ext", ""))):
                    logger.warning(f"{path}: entry {str(i)[:80]!r} is not a plain image id and extension; skipped")
                    continue
                c.execute("INSERT INTO images (id, ext, info) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                          "info=excluded.info", (i, img.get("ext", ""), json.dumps(img.get("info", {}))))
                for tag, lab in (obj.get("labels") or {}).items():
                    if not (plain_name(tag) and isinstance(lab, dict) and _plain_ext(lab.get("ext", ""))):
                        continue
                    c.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)",
                              (i, tag, lab.get("ext", ""), json.dumps(lab.get("info", {}))))
                n += 1
            c.execute("INSERT OR REPLACE INTO meta VALUES ('migrated_v2', ?)", (str(time.time()),))
        logger.info(f"migrated {n} images from {path}")
        return n

    # -- reads -------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str) -> str:
        r = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return r[0] if r else default

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def image_ids(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT id FROM images ORDER BY id")]

    def image_set(self) -> frozenset[str]:
        """The frame ids, read again only after a frame is added or removed (by any process)."""
        return self._db.cached("image_set", "images", lambda: frozenset(
            r[0] for r in self._conn().execute("SELECT id FROM images")))

    def labeled_ids(self, tag: str = "final") -> list[str]:
        return list(self._labeled(tag))

    def labeled_set(self, tag: str = "final") -> frozenset[str]:
        """The ids labeled under ``tag``, read again only after a label is added or removed (by any process):
        next sample asks for it at every request."""
        return self._db.cached(("labeled_set", tag), "labels", lambda: frozenset(self._labeled(tag)))

    def _labeled(self, tag: str) -> tuple[str, ...]:
        return self._db.cached(("labeled", tag), "labels", lambda: tuple(
            r[0] for r in self._conn().execute("SELECT image_id FROM labels WHERE tag=? ORDER BY image_id", (tag,))))

    def unlabeled_ids(self, tag: str = "final") -> list[str]:
        return [r[0] for r in self._conn().execute(
            "SELECT id FROM images WHERE id NOT IN (SELECT image_id FROM labels WHERE tag=?) ORDER BY id", (tag,))]

    def image_ext(self, image_id: str) -> str | None:
        r = self._conn().execute("SELECT ext FROM images WHERE id=?", (image_id,)).fetchone()
        return r[0] if r else None

    def image_path(self, image_id: str) -> str:
        ext = self.image_ext(image_id)
        return os.path.join(self.root, image_id + ext) if ext is not None else ""

    def image_info(self, image_id: str) -> dict:
        r = self._conn().execute("SELECT ext, info FROM images WHERE id=?", (image_id,)).fetchone()
        if not r:
            return {}
        info = json.loads(r[1])
        info.setdefault("name", image_id + r[0])
        return info

    def labels_of(self, image_id: str) -> dict[str, str]:
        """tag -> label file path."""
        return {t: os.path.join(self.root, "labels", t, image_id + e) for t, e in self._conn().execute(
            "SELECT tag, ext FROM labels WHERE image_id=?", (image_id,))}

    def label_path(self, image_id: str, tag: str) -> str:
        r = self._conn().execute("SELECT ext FROM labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
        return os.path.join(self.label_dir(tag), image_id + r[0]) if r else ""

    def label_info(self, image_id: str, tag: str) -> dict:
        r = self._conn().execute("SELECT info FROM labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
        return json.loads(r[0]) if r else {}

    def objects(self) -> dict:
        """Every image with its labels, in LocalDatastore's JSON shape."""
        c = self._conn()
        out = {i: {"image": {"ext": e, "info": json.loads(info)}, "labels": {}}
               for i, e, info in c.execute("SELECT id, ext, info FROM images ORDER BY id")}
        for i, t, e, info in c.execute("SELECT image_id, tag, ext, info FROM labels"):
            if i in out:
                out[i]["labels"][t] = {"ext": e, "info": json.loads(info)}
        return out

    def copy_labeled(self, image_id: str, tag: str, frame_dir: str, label_dir: str) -> dict | None:
        """Copies of a frame (into ``frame_dir``, under its file name) and of its ``tag`` label (into
        ``label_dir``), with both infos, taken together under the write lock, so that a replace or delete
        cannot come between them (an export paired a frame with the label of the frame it replaced). Returns
        {"image", "label": the copies' paths, "info", "label_info"}; None when the frame has no such label now.
        A row whose file is missing raises DataError naming the file."""
        from polypal.errors import DataError

        with self._tx() as c:
            img = c.execute("SELECT ext, info FROM images WHERE id=?", (image_id,)).fetchone()
            lab = c.execute("SELECT ext, info FROM labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
            if img is None or lab is None:
                return None
            out = {"image": os.path.join(frame_dir, image_id + img[0]), "label": os.path.join(label_dir, image_id + lab[0]),
                   "info": json.loads(img[1]), "label_info": json.loads(lab[1])}
            for src, dst in ((os.path.join(self.root, image_id + img[0]), out["image"]),
                             (os.path.join(self.label_dir(tag), image_id + lab[0]), out["label"])):
                try:
                    shutil.copyfile(src, dst)
                except FileNotFoundError:
                    raise DataError(src, "file not found (its row is in the datastore)") from None
        return out

    def counts(self) -> dict:
        c = self._conn()
        return {"total": c.execute("SELECT COUNT(*) FROM images").fetchone()[0],
                "label_tags": dict(c.execute("SELECT tag, COUNT(*) FROM labels GROUP BY tag"))}

    # -- writes ------------------------------------------------------------------------------
    def save_label(self, image_id: str, src_file: str, tag: str, info: dict | None = None,
                   frame_signature: list | None = None, frame_pixels: str | None = None) -> str:
        """Store a label file crash-safely; returns the label id (= the image id).

        ``frame_signature`` (``frame_signature()`` taken when the label was checked against its frame): the
        label is refused (``FrameChanged``) if the frame's file is another one by the time it is stored;
        ``frame_pixels``: the frame's ``label_frames.pixels_sha`` from that check (else decoded again here), for
        the record of the picture the label was drawn on.
        The label it replaces, if any, is kept in the trash (hard link taken before the rename)."""
        check_name("image id", image_id)
        check_info_size(info)
        self._local.unchanged = False
        d = self.label_dir(tag)
        self.check_folders([tag])
        if self.image_ext(image_id) is None:
            raise NotFound(f"image {image_id!r} not found")
        _, ext = split_name(os.path.basename(src_file))
        if ext.lower() not in LABEL_EXTENSIONS:
            raise ValueError(f"label file type {ext or '(no extension)'!r} not accepted; use one of "
                             f"{', '.join(LABEL_EXTENSIONS)}")
        check_alias(image_id, ext)
        os.makedirs(d, exist_ok=True)
        tmp = _copy_fsynced(src_file, d)
        dest = os.path.join(d, image_id + ext)
        # the picture the label is drawn on, read outside the lock (checked again inside)
        drawn_on = label_frames.digest(self.image_path(image_id), frame_pixels if frame_signature else None)
        info = dict(info or {})
        info["ts"] = int(time.time())
        info["name"] = image_id + ext
        try:
            # one save per (image, tag) at a time, across processes: keep, rename, record, clean up
            with self._undoable() as c:
                # the frame again, inside the transaction: a delete of it may have committed since the check
                # above, and a label must never outlive its frame (remove_image reads labels in its own tx)
                row = c.execute("SELECT ext FROM images WHERE id=?", (image_id,)).fetchone()
                if row is None:
                    raise NotFound(f"image {image_id!r} not found (deleted while its label was being saved)")
                frame_path = os.path.join(self.root, image_id + row[0])
                now = file_signature(frame_path)
                if frame_signature is not None and now != list(frame_signature):
                    raise FrameChanged(f"frame {image_id!r} was replaced while its label was being saved; "
                                       f"look at the new frame and label it again")
                if drawn_on is None or drawn_on.sig != label_frames.file_sig(frame_path):
                    drawn_on = label_frames.digest(frame_path)
                old = c.execute("SELECT ext FROM labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
                old_path = os.path.join(d, image_id + old[0]) if old else None
                if old_path == dest and self._same_label(c, image_id, tag, tmp, dest, drawn_on):
                    # the same label on the same picture again (a client saving twice, or another user
                    # uploading the label they downloaded): nothing changes, its info and its credit stay the
                    # first save's (a probe: another annotator's identical re-upload took the credit). Its
                    # records of the picture and of the file are taken again, as any save takes them (a stale
                    # record of the label file hid a later change of the frame)
                    os.unlink(tmp)
                    label_frames.record(c, image_id, tag, drawn_on, dest)
                    self._local.unchanged = True
                    return image_id
                copies = {}  # path -> its copy in the trash: what a failed write puts back
                if old_path and os.path.exists(old_path):
                    name = _label_trash_name(tag, old_path)
                    kept = self.trash({name: old_path}, f"label {tag} of {image_id} replaced", keep_source=True,
                                      frame=image_id, labels=label_frames.for_trash(c, image_id, tag, name))
                    copies[old_path] = os.path.join(kept, name)
                label_frames.supersede_aside(self, c, image_id, tag, dest)  # (one of another extension)
                if dest != old_path and os.path.lexists(dest):  # a label file no row points to: kept, not lost
                    name = _label_trash_name(tag, dest)
                    aside = label_frames.aside_entry(c, image_id, tag, ext, dest)
                    if aside is not None:  # a missing frame's label, waiting for its picture: it keeps that
                        kept = self.trash({name: dest}, f"label {tag} kept aside for an earlier frame {image_id}, "
                                          f"replaced by a save for the frame now under that id", keep_source=True,
                                          labels={name: aside})
                        c.execute("DELETE FROM detached_labels WHERE image_id=? AND tag=?", (image_id, tag))
                    else:
                        kept = self.trash({name: dest}, f"unregistered label file {tag}/{os.path.basename(dest)} "
                                          f"replaced by a save", keep_source=True, frame=image_id)
                    copies[dest] = os.path.join(kept, name)
                os.replace(tmp, dest)
                placed = os.lstat(dest).st_ino
                self._on_undo(lambda ok: _put_back(copies.get(dest), dest, placed))
                _fsync_dir(d)
                c.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)",
                          (image_id, tag, ext, json.dumps(info)))
                label_frames.record(c, image_id, tag, drawn_on, dest)
                if old_path and old_path != dest and os.path.exists(old_path):
                    os.unlink(old_path)  # its copy is in the trash (above)
                    self._on_undo(lambda ok: copies.get(old_path) is not None
                                  and _link_copy(copies[old_path], old_path))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return image_id

    @staticmethod
    def _same_label(c, image_id: str, tag: str, new_file: str, path: str, drawn_on) -> bool:
        """Whether ``new_file`` holds the bytes of the stored label at ``path``, recorded on the picture
        ``drawn_on`` (labels are stored re-encoded, so the same mask gives the same bytes)."""
        rec = c.execute("SELECT sha256 FROM label_frames WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
        if drawn_on is None or rec is None or rec[0] != drawn_on.sha:
            return False
        try:
            return filecmp.cmp(new_file, path, shallow=False)
        except OSError:
            return False

    def last_save_unchanged(self) -> bool:
        """Whether this thread's last ``save_label`` found the same label already stored (nothing written)."""
        return bool(getattr(self._local, "unchanged", False))

    def remove_label(self, image_id: str, tag: str) -> None:
        """Forget a label; its file goes to the trash."""
        check_name("image id", image_id)
        d = self.label_dir(tag)
        self.check_folders([tag])
        # read, trashed and forgotten in one transaction: a save of the same label committed just before
        # is what goes to the trash; one after it finds no row and stores its file afresh (never trashed)
        with self._undoable() as c:
            r = c.execute("SELECT ext FROM labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
            if r is None:
                raise NotFound(f"label {image_id!r} with tag {tag!r} not found")
            p = os.path.join(d, image_id + r[0])
            name = _label_trash_name(tag, p)
            self.trash({name: p}, f"label {tag} of {image_id} removed", frame=image_id,
                       labels=label_frames.for_trash(c, image_id, tag, name))
            c.execute("DELETE FROM labels WHERE image_id=? AND tag=?", (image_id, tag))

    def update_image_info(self, image_id: str, info: dict, limit: int | None = MAX_INFO_BYTES) -> None:
        """Merge ``info`` into one image's info (read and written in one transaction). ``limit``: the
        merged info's most bytes (None for the server's own small records, which clients' info must not
        crowd out)."""
        with self._tx() as c:
            r = c.execute("SELECT info FROM images WHERE id=?", (image_id,)).fetchone()
            if r is None:
                raise NotFound(f"image {image_id!r} not found")
            c.execute("UPDATE images SET info=? WHERE id=?", (_merged_info(json.loads(r[0]), info, limit), image_id))

    def update_label_info(self, image_id: str, tag: str, info: dict) -> None:
        with self._tx() as c:
            r = c.execute("SELECT info FROM labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
            if r is None:
                raise NotFound(f"label {image_id!r} with tag {tag!r} not found")
            c.execute("UPDATE labels SET info=? WHERE image_id=? AND tag=?",
                      (_merged_info(json.loads(r[0]), info), image_id, tag))

    def add_image(self, image_id: str, src_file: str, info: dict | None = None, replace: bool = False) -> str:
        """Add a frame. An id already in the store raises Exists unless ``replace``: then the old
        frame and all its labels go to the trash first (a label of the old frame never stays on the new)."""
        check_name("image id", image_id)
        check_info_size(info)
        _, ext = split_name(os.path.basename(src_file))
        if not self._matches(image_id + ext):
            raise ValueError(f"extension {ext!r} is not an accepted image type "
                             f"({', '.join(p.lstrip('*') for p in self.patterns)})")
        check_alias(image_id, ext)
        if self.image_ext(image_id) is not None and not replace:
            raise Exists(f"image {image_id!r} already exists; to replace it (the old frame and its labels are "
                         f"kept in the datastore's trash) send params {{\"replace\": true}}")
        if replace:
            self.check_folders()  # (the old frame's labels, and label files of its id, go to the trash)
        tmp = _copy_fsynced(src_file, self.root)
        journal, placed, placed_ino = None, None, None
        try:
            # the check, the old frame's trashing, the swap and the new row in one transaction (the store's
            # write lock): a plain upload racing a replace of the same id is refused, never trashes its file
            with self._tx() as c:
                known = c.execute("SELECT ext FROM images WHERE id=?", (image_id,)).fetchone()
                if known is not None and not replace:
                    raise Exists(f"image {image_id!r} already exists; to replace it (the old frame and its "
                                 f"labels are kept in the datastore's trash) send params {{\"replace\": true}}")
                # files of this id on disk without a row (copied into the folder while the server runs, or a
                # second extension of one id): never overwritten unseen; refused, or kept in the trash on replace
                registered = os.path.join(self.root, image_id + known[0]) if known else None
                strays = [p for p in self._unregistered_frame_files(image_id, ext) if not _same_entry(p, registered)]
                if strays and not replace:
                    raise Exists(f"a file {os.path.basename(strays[0])!r} is already in the studies folder but not "
                                 f"yet in the datastore (it is registered at the next start); to replace it (the "
                                 f"file is kept in the datastore's trash) send params {{\"replace\": true}}")
                if known is not None or strays:
                    journal = self._replace(c, image_id, ext, tmp, info or {}, strays)
                else:
                    placed = os.path.join(self.root, image_id + ext)
                    os.replace(tmp, placed)
                    placed_ino = os.lstat(placed).st_ino
                    _fsync_dir(self.root)
                    c.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?)",
                              (image_id, ext, json.dumps(info or {})))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if placed_ino is not None:  # a new frame whose row did not commit (a full disk): not left behind
                _put_back(None, placed, placed_ino)  # unregistered, where a retry would be refused
            if journal:  # moved its files, then failed (its COMMIT, on a full disk): settled now, as a start
                try:     # would: the upload being in place, finished, so the replace did happen
                    _, done = self._recover_one(journal)
                except Exception as e:  # noqa: BLE001 - the next start settles it
                    logger.error(f"the failed replace of {image_id} could not be settled now ({e}); the next "
                                 f"start settles it")
                    raise
                if done and done.startswith("finished"):
                    logger.warning(f"the replace of {image_id} failed at its commit and was finished after it")
                    return image_id
            raise
        if journal:
            self._settle(journal)
        return image_id

    # -- a frame replaced: journaled, so that a crash half-way is finished or undone at the next start ------
    def _replace(self, c, image_id: str, ext: str, tmp: str, info: dict, strays: list[str]) -> str:
        """In the caller's transaction ``c``: the old frame, its labels and ``strays`` go to a new trash
        folder, the upload ``tmp`` becomes the frame, and its row replaces the old one. Several files move, so
        a journal (``REPLACE_JOURNAL`` in that trash folder, written first) says what was meant, and a mark in
        ``meta``, committed with the rows, says it was done; a crash before the commit leaves the journal for
        ``_recover_replaces`` at the next start (before, the frame and its acknowledged labels, gone from
        their places, were dropped from the datastore as missing). Returns the folder."""
        r = c.execute("SELECT ext FROM images WHERE id=?", (image_id,)).fetchone()
        tags = dict(c.execute("SELECT tag, ext FROM labels WHERE image_id=?", (image_id,)).fetchall())
        before = _rows_of(c, image_id)
        files = {}
        if r is not None:
            files[image_id + r[0]] = os.path.join(self.root, image_id + r[0])
        kept = {}
        for t, e in tags.items():
            f = os.path.join(self.root, "labels", t, image_id + e)
            files[_label_trash_name(t, f)] = f
            kept.update(label_frames.for_trash(c, image_id, t, _label_trash_name(t, f)))
        files.update(self._unregistered_label_files(c, image_id, files.values()))
        files.update({os.path.basename(p): p for p in strays})
        files = {k: v for k, v in files.items() if os.path.lexists(v)}
        base = os.path.join(self.root, ".polypal", "trash")
        os.makedirs(base, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base)
        dest = os.path.join(self.root, image_id + ext)
        rel = {k: os.path.relpath(v, self.root) for k, v in files.items()}
        reason = f"image {image_id} replaced by an upload"
        intent = {"id": image_id, "ext": ext, "upload": os.path.basename(tmp), "info": info, "files": rel,
                  "labels": {k: v for k, v in kept.items() if k in files},
                  # the old frame, when its file was there to move (a missing one is not "in place" later)
                  "frame": (image_id + r[0]) if r is not None and (image_id + r[0]) in files else None,
                  "reason": reason, "time": time.time(), "before": before}
        moved = []
        try:
            _write_fsynced(os.path.join(folder, REPLACE_JOURNAL), intent)  # first: the manifest can be redone
            _write_manifest(folder, intent)
            _fsync_dir(folder)
            for name, src in files.items():
                os.replace(src, os.path.join(folder, name))
                moved.append((os.path.join(folder, name), src))
            _fsync_dir(folder)
            os.replace(tmp, dest)
            moved.append((dest, tmp))
            _fsync_dir(self.root)
            c.execute("DELETE FROM labels WHERE image_id=?", (image_id,))
            c.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?)", (image_id, ext, json.dumps(info)))
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_REPLACE_KEY + os.path.basename(folder), "1"))
        except BaseException:
            # the transaction rolls back: the files go back where its rows say they are (the upload first,
            # out of the old frame's place)
            try:
                for d, src in reversed(moved):
                    os.replace(d, src)
            except OSError as e:
                logger.error(f"replace of {image_id} failed and could not be undone ({e}); the next start "
                             f"undoes it from {folder}")
            else:
                os.unlink(os.path.join(folder, REPLACE_JOURNAL))  # first: no half-removed folder is "pending"
                shutil.rmtree(folder, ignore_errors=True)
            raise
        logger.info(f"kept in {os.path.relpath(folder, self.root)}: {rel} ({reason})")
        return folder

    def _settle(self, folder: str) -> None:
        """A committed replace: its journal, then its commit mark, are no longer needed (a crash between the
        two leaves a mark that ``_recover_replaces`` drops)."""
        try:
            os.unlink(os.path.join(folder, REPLACE_JOURNAL))
            with self._tx() as c:
                c.execute("DELETE FROM meta WHERE key=?", (_REPLACE_KEY + os.path.basename(folder),))
        except FileNotFoundError:
            pass  # settled by a recovery meanwhile
        except Exception as e:  # noqa: BLE001 - committed: the answer is a success; the next start cleans up
            logger.warning(f"replace committed; its journal in {folder} not cleared yet ({e})")

    def _recover_replaces(self) -> tuple[list[str], set[str]]:
        """At start-up, for each replace whose journal is still there, under the write lock (so never one
        still under way in another process):

        - it committed (its mark is in ``meta``): the journal goes;
        - the id's rows are no longer those the replace started from (a later write, after a replace that
          failed and could not be undone): the journal goes, its folder stays as ordinary trash;
        - its process died before the commit, and the upload reached the folder (the upload file is there,
          or the new frame is in place: the old frame has left it, or had another name): finished;
        - else: undone, the old frame and then its labels going back (labels only beside their frame).

        Returns the ids whose frame changed, and the ids whose journal could not be settled (their rows are
        kept as they are rather than dropped as missing)."""
        base = os.path.join(self.root, ".polypal", "trash")
        try:
            dirs = [e.path for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            dirs = []
        folders = sorted(d for d in dirs if os.path.isfile(os.path.join(d, REPLACE_JOURNAL)))
        # a crash while a replace wrote its journal, or a trash its manifest, or before a trash moved its
        # first file, leaves a folder holding nothing but those (checked again under the lock below; found
        # before it: every subprocess start listed each of thousands of trash folders under the write lock,
        # which every save and lease waits for, 0.3 s at 10,000)
        cut = [d for d in dirs if d not in folders and _only_leftovers(d)]
        changed, blocked = [], set()
        for folder in folders:
            try:
                image_id, done = self._recover_one(folder)
            except Exception as e:  # noqa: BLE001 - one bad journal must not stop the server from starting
                logger.error(f"could not settle the interrupted replace in {folder}: {e}; its frame's rows are "
                             f"kept as they are until it is")
                try:
                    with open(os.path.join(folder, REPLACE_JOURNAL)) as f:
                        blocked.add(str(json.load(f)["id"]))
                except Exception:  # noqa: BLE001
                    pass
                continue
            if done:
                changed.append(image_id)
                logger.warning(f"a replace of frame {image_id} was interrupted (the server stopped during it); "
                               f"{done}")
        with self._tx() as c:  # under the lock: no replace is writing its journal now
            for d in cut:  # (every trash and replace writes under this lock: none is half-way now)
                if _only_leftovers(d):
                    shutil.rmtree(d, ignore_errors=True)
            # marks whose journal is gone (a crash inside _settle)
            for (key,) in c.execute("SELECT key FROM meta WHERE key LIKE ?", (_REPLACE_KEY + "%",)).fetchall():
                if not os.path.isfile(os.path.join(base, key[len(_REPLACE_KEY):], REPLACE_JOURNAL)):
                    c.execute("DELETE FROM meta WHERE key=?", (key,))
        return changed, blocked

    def _recover_one(self, folder: str) -> tuple[str | None, str | None]:
        journal = os.path.join(folder, REPLACE_JOURNAL)
        key = _REPLACE_KEY + os.path.basename(folder)
        with self._tx() as c:
            try:
                with open(journal) as f:
                    intent = json.load(f)
            except FileNotFoundError:
                return None, None  # settled meanwhile
            image_id, ext = check_name("image id", intent["id"]), str(intent["ext"])
            files, before = dict(intent["files"]), intent.get("before")
            # a journal of a version before 2026-12-06 22:20 has no (or another) record of the rows: it is
            # settled as that version did (finished when the upload is here, else undone), its manifest, written
            # before any file moved, kept as it is
            legacy = not (isinstance(before, dict) and set(before) == {"image", "labels"})
            tmp = os.path.join(self.root, os.path.basename(str(intent["upload"])))
            dest = os.path.join(self.root, image_id + ext)
            if not legacy:
                _write_manifest(folder, intent)  # again: a crash may have cut it or come before it
            if c.execute("SELECT 1 FROM meta WHERE key=?", (key,)).fetchone():
                done = None  # committed
            else:
                now = _rows_of(c, image_id)  # every field: a label saved since has another time
                frame = intent.get("frame")
                if legacy and frame is None:  # that version named the old frame among its files: the one at the top
                    frame = next((n for n, rel in files.items() if "/" not in str(rel) and split_name(
                        str(rel))[0] == image_id), None)
                old_in_place = frame is not None and not os.path.lexists(os.path.join(folder, frame))
                arrived = not os.path.lexists(tmp) and os.path.lexists(dest) and not (
                    old_in_place and dest == os.path.join(self.root, frame)) and not any(
                    os.path.join(self.root, rel) == dest and not os.path.lexists(os.path.join(folder, n))
                    for n, rel in files.items())  # a stray of that name, not moved yet, is not the upload
                if legacy and intent.get("signature") is not None:  # that version's test: the upload's file
                    arrived = not os.path.lexists(tmp) and file_signature(dest) == intent["signature"]
                if not legacy and now != before or legacy and _legacy_stale(now, files, frame):
                    done = None  # written since: the journal is stale
                    logger.warning(f"replace journal {journal} is older than {image_id}'s rows; dropped, its "
                                   f"folder kept as trash")
                elif os.path.lexists(tmp) or arrived:
                    for name, rel in files.items():
                        src, d = os.path.join(self.root, rel), os.path.join(folder, name)
                        if os.path.lexists(src) and not os.path.lexists(d) and not (src == dest and arrived):
                            os.replace(src, d)
                    if not arrived:
                        os.replace(tmp, dest)
                    _fsync_dir(folder)
                    c.execute("DELETE FROM labels WHERE image_id=?", (image_id,))
                    c.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?)",
                              (image_id, ext, json.dumps(intent.get("info") or {})))
                    done = "finished: the uploaded frame is in place, the old one and its labels in the trash"
                else:
                    back = self._undo_moves(folder, files, frame)
                    done = f"undone: {back}"
                _fsync_dir(self.root)
                c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, "1"))
        self._settle(folder)  # after the commit: a crash before it finds the mark next time
        if not any(os.path.lexists(os.path.join(folder, n)) for n in files):
            shutil.rmtree(folder, ignore_errors=True)  # everything went back: no trash folder
        return image_id, done

    def _undo_moves(self, folder: str, files: dict, frame: str | None) -> str:
        """Put a replace's moved files back: the old frame first, and its labels only if it is back in its
        place (a label of the old frame never goes on whatever took that place)."""
        def back(name):
            src, d = os.path.join(self.root, files[name]), os.path.join(folder, name)
            if os.path.lexists(d) and not os.path.lexists(src):
                os.makedirs(os.path.dirname(src), exist_ok=True)
                os.replace(d, src)
            return os.path.lexists(src) and not os.path.lexists(d)

        if frame is not None and frame in files and not back(frame):
            return "the old frame's place is taken, so it and its labels stay in the trash"
        for name in files:
            if name != frame:
                back(name)
        return "the old frame and its labels are back"

    def _unregistered_frame_files(self, image_id: str, ext: str) -> list[str]:
        """Files named like a frame of this id (``ext`` and every accepted image extension), the registered
        one included (the caller leaves it out)."""
        exts = dict.fromkeys([ext] + [e for e in FRAME_EXTENSIONS] + [e.upper() for e in FRAME_EXTENSIONS])
        out, seen = [], set()
        for p in (os.path.join(self.root, image_id + e) for e in exts):
            if split_name(os.path.basename(p))[0] != image_id:  # "x.seg" + ".nrrd" is frame x's file
                continue
            try:
                st = os.lstat(p)  # the entry itself: a dangling link is a file of this id too
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:  # x.jpg and x.JPG are one file on a case-insensitive disk
                seen.add((st.st_dev, st.st_ino))
                out.append(p)
        return out

    def _unregistered_label_files(self, c, image_id: str, known) -> dict[str, str]:
        """Label files of this id on disk that no row points to (put there by hand, or a crash's leftover),
        as trash name -> path: they go with their frame when it is deleted or replaced, never onto the next
        frame of that id. A label kept aside for a missing frame (``label_frames``) stays: it waits for its
        own picture."""
        known = {os.path.normpath(k) for k in known}
        out = {}
        labels_root = os.path.join(self.root, "labels")
        if os.path.islink(labels_root):  # (refused before this: never a file outside the studies folder)
            return out
        for tag in sorted(os.listdir(labels_root)) if os.path.isdir(labels_root) else []:
            d = os.path.join(labels_root, tag)
            if not plain_name(tag) or os.path.islink(d) or not os.path.isdir(d):
                continue
            for name in os.listdir(d):  # as reconcile registers them: any case of a label extension
                i, ext = split_name(name)
                p = os.path.join(d, name)
                if name.startswith(".") or i != image_id or ext.lower() not in LABEL_EXTENSIONS \
                        or os.path.normpath(p) in known or label_frames.aside_entry(c, image_id, tag, ext, p):
                    continue
                out[_label_trash_name(tag, p)] = p
        return out

    def _trash_image(self, c, image_id: str, reason: str) -> None:
        """In the caller's transaction ``c``: the frame's file and labels are read, moved to the trash and
        forgotten. A label saved just before is trashed with its frame, one saved after finds no frame
        (save_label checks in its tx), and a frame of the same id added after is never the file trashed."""
        r = c.execute("SELECT ext FROM images WHERE id=?", (image_id,)).fetchone()
        p = os.path.join(self.root, image_id + r[0]) if r else ""
        labels = {t: os.path.join(self.root, "labels", t, image_id + e) for t, e in c.execute(
            "SELECT tag, ext FROM labels WHERE image_id=?", (image_id,))}
        files = {os.path.basename(p): p} if p else {}
        kept = {}
        for t, f in labels.items():
            files[_label_trash_name(t, f)] = f
            kept.update(label_frames.for_trash(c, image_id, t, _label_trash_name(t, f)))
        files.update(self._unregistered_label_files(c, image_id, files.values()))
        self.trash(files, reason, labels=kept)
        c.execute("DELETE FROM labels WHERE image_id=?", (image_id,))
        c.execute("DELETE FROM images WHERE id=?", (image_id,))

    def _remove_image_files(self, image_id: str, reason: str) -> None:
        self.check_folders()  # (its labels, and any label file of its id in any tag, go to the trash)
        with self._undoable() as c:
            self._trash_image(c, image_id, reason)

    def remove_image(self, image_id: str) -> None:
        """Forget a frame and its labels; the files go to the trash."""
        if self.image_ext(check_name("image id", image_id)) is None:
            raise NotFound(f"image {image_id!r} not found")
        self._remove_image_files(image_id, f"image {image_id} removed")
