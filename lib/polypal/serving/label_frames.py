"""A label stays with the picture it was drawn on.

Each label's row has a record (``label_frames``) of its frame at save time: the SHA-256 of the file's bytes
and of its decoded picture (RGB, upright, as the annotator saw it), and the file's ``file_sig``. At each
start ``FrameStore.reconcile`` looks again, in this order:

1. ``hash_frames`` (before its transaction: no lock held while reading files): digests of the frames whose
   file changed since recorded, or that a label file without a row belongs to.
2. ``keep_aside``: labels of a frame missing from the studies folder (deleted by hand, a share not
   mounted) move to ``detached_labels``, with their info, the record, and their own file's SHA-256.
3. ``take_back``: a label file without a row is that frame's label, unless it is the very file kept
   aside for that id: then it goes back, with its info, only onto the same picture, and to the trash
   when another picture has come under that id.
4. ``check_frames``: a labeled frame whose file now holds another picture (copied over by hand while no
   server ran) loses its labels to the trash. The same picture re-encoded (bytes differ, pixels do not)
   keeps them; a file that does not decode now (still being copied?) is looked at again next start.
5. ``drop_extras``: a second label file of one (id, tag) (``one_per_label`` chose the label: the row's, the
   kept-aside one, else the newest) goes to the trash.
6. ``drop_stale``: records of labels that are gone.

A label that cannot be moved to the trash (a disk error) is kept aside instead, never left on the wrong
picture, and never stops the start. Before this module a label went onto whatever frame next had its
id, and a share outage lost its info.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import NamedTuple

from polypal.serving.fileops import label_trash_name

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS label_frames (image_id TEXT NOT NULL, tag TEXT NOT NULL, sha256 TEXT NOT NULL,
                                         pixels TEXT, sig TEXT NOT NULL, PRIMARY KEY (image_id, tag));
CREATE TABLE IF NOT EXISTS detached_labels (image_id TEXT NOT NULL, tag TEXT NOT NULL, ext TEXT NOT NULL,
                                            info TEXT NOT NULL, sha256 TEXT, pixels TEXT,
                                            label_sha256 TEXT NOT NULL, since REAL NOT NULL,
                                            PRIMARY KEY (image_id, tag));
CREATE TABLE IF NOT EXISTS label_files (image_id TEXT NOT NULL, tag TEXT NOT NULL, sig TEXT NOT NULL,
                                        sha256 TEXT NOT NULL, frame_sha256 TEXT NOT NULL,
                                        PRIMARY KEY (image_id, tag));
"""
# label_files: the label file (its SHA-256, and file_sig to skip reading it while unchanged) when its record
# was taken, and the frame digest of that record. A label file with other bytes (written without a record: by
# a version before 2026-12-07 after a downgrade, or by hand) is not the label the record is of. A row whose
# frame digest is not the record's was left by a later record of a version that does not keep this table:
# it says nothing. (A table of its own: versions that write label_frames by position still can.)


class Digest(NamedTuple):
    """A frame file as read: its bytes' SHA-256, its decoded picture's (None: it does not decode), and its
    ``file_sig``."""
    sha: str
    pixels: str | None
    sig: list


def _label_path(store, image_id: str, tag: str, ext: str) -> str:
    """Where the (image_id, tag) label file with extension ``ext`` lies."""
    return os.path.join(store.root, "labels", tag, image_id + ext)


def file_sig(path) -> list | None:
    """[mtime_ns, ctime_ns, size]: another file moved or copied into a frame's place has another ctime, even
    with the same size and a preserved mtime (cp -p, archives), which no one can set; no inode (a share
    mounted again may number its files anew). A different value only means "read the bytes again"."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_size]


def file_sha(path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def picture_sha(path) -> str | None:
    """SHA-256 of the decoded picture (shape and RGB bytes, EXIF orientation applied); None when it does
    not decode."""
    from polypal.data.images import read_rgb
    from polypal.errors import PolypalError

    try:
        arr = read_rgb(path)
    except (PolypalError, OSError, ValueError):
        return None
    return pixels_sha(arr)


def pixels_sha(rgb) -> str:
    """SHA-256 of a decoded frame (``read_rgb``'s array): a caller that decoded it already passes this."""
    return hashlib.sha256(repr(rgb.shape).encode() + rgb.tobytes()).hexdigest()


def digest(path, pixels: str | None = None) -> Digest | None:
    """The frame file's Digest; None when it is not there or changed while read. ``pixels``: its picture's
    ``pixels_sha``, when the caller decoded the file already (and checks it is still that file)."""
    sig = file_sig(path)
    sha = file_sha(path) if sig else None
    if sha is None:
        return None
    pixels = pixels or picture_sha(path)
    return Digest(sha, pixels, sig) if file_sig(path) == sig else None


def same_picture(sha: str | None, pixels: str | None, now: Digest) -> bool | None:
    """Whether a label drawn on the picture (sha, pixels) is on the same picture as ``now``: the same bytes,
    or the same decoded pixels (re-encoded losslessly, metadata stripped). None: cannot be told now."""
    if sha is not None and sha == now.sha:
        return True
    if now.pixels is None:
        return None
    return pixels is not None and pixels == now.pixels


def record(c, image_id: str, tag: str, d: Digest | None, label_path=None) -> None:
    """In transaction ``c``: the label (image_id, tag), its file at ``label_path``, is on the picture ``d``
    (None: not known, so hashed at the next start)."""
    sig = file_sig(label_path) if d is not None and label_path else None
    sha = file_sha(label_path) if sig else None
    if d is None:
        c.execute("DELETE FROM label_frames WHERE image_id=? AND tag=?", (image_id, tag))
    else:
        c.execute("INSERT OR REPLACE INTO label_frames VALUES (?, ?, ?, ?, ?)",
                  (image_id, tag, d.sha, d.pixels, json.dumps(d.sig)))
    if sha is None or file_sig(label_path) != sig:
        c.execute("DELETE FROM label_files WHERE image_id=? AND tag=?", (image_id, tag))
    else:
        c.execute("INSERT OR REPLACE INTO label_files VALUES (?, ?, ?, ?, ?)",
                  (image_id, tag, json.dumps(sig), sha, d.sha))



def _frame_file(store, c, image_id: str, found_ext: str | None = None) -> str | None:
    """The frame file whose extension the id's row holds (a second file of the id is not it), else the one
    the scan found (``found_ext``: its row is about to take that extension)."""
    r = c.execute("SELECT ext FROM images WHERE id=?", (image_id,)).fetchone()
    if r is not None and (found_ext is None or os.path.lexists(os.path.join(store.root, image_id + r[0]))):
        return os.path.join(store.root, image_id + r[0])
    return os.path.join(store.root, image_id + found_ext) if found_ext is not None else None


def one_per_label(store, label_exts: dict) -> tuple[dict, list]:
    """Reconcile's scan found these label files per (id, tag): the one that is the label (the row's, else
    the one kept aside for its picture, else the newest) and the others, as ``drop_extras`` takes them
    (a Slicer volume saved beside a PNG kept aside: the older must never take the newer's place)."""
    c = store._conn()
    rows = {(i, t): e for i, t, e in c.execute("SELECT image_id, tag, ext FROM labels")}
    aside = {(i, t): e for i, t, e in c.execute("SELECT image_id, tag, ext FROM detached_labels")}
    chosen, extras = {}, []
    for (i, t), exts in label_exts.items():
        if len(exts) == 1:
            chosen[(i, t)] = exts[0]
            continue
        pick = rows.get((i, t)) if rows.get((i, t)) in exts else aside.get((i, t)) if aside.get((i, t)) in exts \
            else max(exts, key=lambda e: (file_sig(_label_path(store, i, t, e)) or [0])[0])
        chosen[(i, t)] = pick
        extras += [(i, t, e) for e in exts if e != pick]
    return chosen, extras


def drop_extras(store, c, extras: list, blocked: set) -> None:
    """A second label file of one (id, tag) goes to the trash: the one kept aside for an earlier picture
    with its info (a later label of the frame took its place), any other as a second file."""
    for i, t, e in extras:
        path = _label_path(store, i, t, e)
        row = c.execute("SELECT ext FROM labels WHERE image_id=? AND tag=?", (i, t)).fetchone()
        if i in blocked or not os.path.lexists(path) or (row and row[0] == e) or row is None:
            continue  # (no row: the next start decides, once one of them is the label)
        name = label_trash_name(t, path)
        kept = aside_entry(c, i, t, e, path)
        reason = (f"label {t} kept aside for an earlier frame {i}, superseded by a later label of that id "
                  f"(labels/{t}/{i + row[0]})" if kept else
                  f"a second label file of frame {i} (labels/{t}/{i + row[0]} is its {t!r} label)")
        try:
            store.trash({name: path}, reason, labels={name: kept} if kept else None)
        except OSError as err:
            logger.error(f"could not move {path} to the trash ({err}); left where it is")
            continue
        if kept:
            c.execute("DELETE FROM detached_labels WHERE image_id=? AND tag=?", (i, t))
        logger.warning(f"{reason}: moved to the trash")


def supersede_aside(store, c, image_id: str, tag: str, dest: str) -> None:
    """In a label save's transaction: a label kept aside for this id under another extension than the new
    label's (``dest``) goes to the trash with its info and picture (a Slicer volume saved for the frame
    while a PNG of an earlier picture waited beside it); the same extension is the save's own case."""
    r = c.execute("SELECT ext FROM detached_labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
    path = _label_path(store, image_id, tag, r[0]) if r else None
    if path is None or path == dest or not os.path.lexists(path):
        return
    kept = aside_entry(c, image_id, tag, r[0], path)
    if kept is None:
        return  # not the file kept aside any more: reconcile's scan looks at it
    name = label_trash_name(tag, path)
    store.trash({name: path}, f"label {tag} kept aside for an earlier frame {image_id}, superseded by a label "
                f"saved for the frame now under that id", labels={name: kept})
    c.execute("DELETE FROM detached_labels WHERE image_id=? AND tag=?", (image_id, tag))


def hash_frames(store, files: dict, label_files: dict) -> dict[str, Digest]:
    """Before reconcile's transaction: the Digest of each frame some label needs one of: a label file without
    its row (or with another extension), or a label whose frame file's file_sig is not the
    recorded one (no record: saved by an older version; hashed once)."""
    c = store._conn()
    rows = {(i, t): e for i, t, e in c.execute("SELECT image_id, tag, ext FROM labels")}
    sigs, known = {}, {}
    for i, t, sha, pixels, sig in c.execute("SELECT image_id, tag, sha256, pixels, sig FROM label_frames"):
        sigs[(i, t)] = json.loads(sig)
        if pixels:
            known.setdefault(i, {})[sha] = pixels  # bytes already decoded once: not again (a touch, a cp -a)
    want = {i for (i, t), e in label_files.items() if rows.get((i, t)) != e}
    seen: dict = {}
    for i, t in rows:
        if i in files and i not in want:
            if i not in seen:
                seen[i] = file_sig(_frame_file(store, c, i, files[i]))
            if seen[i] is not None and sigs.get((i, t)) != seen[i]:
                want.add(i)
    t0 = time.perf_counter()
    out = {}
    for i in sorted(w for w in want if w in files):
        path = _frame_file(store, c, i, files[i])
        sig = file_sig(path)
        sha = file_sha(path) if sig else None
        if sha is None:
            continue
        pixels = known.get(i, {}).get(sha) or picture_sha(path)
        if file_sig(path) == sig:
            out[i] = Digest(sha, pixels, sig)
    if len(want) > 100:
        logger.info(f"read {len(want)} labeled frames in {time.perf_counter() - t0:.1f} s (each label is kept "
                    f"with the picture it was drawn on)")
    return out


def keep_aside(store, c, gone: list[str]) -> int:
    """Before the rows of frames ``gone`` are deleted: their labels go to ``detached_labels``. Returns how
    many."""
    aside = []
    for i in gone:
        for t, e, info in c.execute("SELECT tag, ext, info FROM labels WHERE image_id=?", (i,)).fetchall():
            if _detach(store, c, i, t, e, info):
                aside.append(f"labels/{t}/{i + e}")
    if aside:  # one line, however many (a share not mounted takes thousands at once)
        logger.warning(f"{len(aside)} label(s) of frames missing from the studies folder kept aside (e.g. "
                       f"{', '.join(aside[:3])}): each goes back on its frame only if the same picture returns")
    return len(aside)


def _detach(store, c, image_id: str, tag: str, ext: str, info: str) -> bool:
    label_sha = file_sha(_label_path(store, image_id, tag, ext))
    if label_sha is None:
        return False  # no file to take back
    r = c.execute("SELECT sha256, pixels FROM label_frames WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
    sha, pixels = r if r else (None, None)
    c.execute("INSERT OR REPLACE INTO detached_labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              (image_id, tag, ext, info, sha, pixels, label_sha, time.time()))
    return True


def _to_trash(store, image_id: str, tag: str, ext: str, reason: str, info: str, sha, pixels) -> bool:
    """The label file to the trash, with its info and the picture it was drawn on (a restore puts it back
    onto that picture, and its info with it). False (logged) when that failed: nothing moved."""
    path = _label_path(store, image_id, tag, ext)
    name = label_trash_name(tag, path)
    try:
        store.trash({name: path}, reason, frame=image_id,
                    labels={name: {"info": json.loads(info), "drawn_on": {"sha256": sha, "pixels": pixels}}})
    except OSError as e:
        logger.error(f"could not move labels/{tag}/{image_id + ext} to the trash ({e}); it is kept aside and "
                     f"looked at again at the next start")
        return False
    return True


def take_back(store, c, image_id: str, tag: str, ext: str, d: Digest | None) -> str:
    """A label file without its row, for a frame that has a row. Returns "attached", "trash" (another picture
    is under the id now) or "wait" (cannot be told now)."""
    frame = _frame_file(store, c, image_id)
    d = d if d is not None and frame and file_sig(frame) == d.sig else None  # changed since hashed: unknown
    kept = c.execute("SELECT ext, info, sha256, pixels, label_sha256 FROM detached_labels WHERE image_id=? AND "
                     "tag=?", (image_id, tag)).fetchone()
    info = None
    if kept is not None and kept[0] == ext and kept[4] == file_sha(_label_path(store, image_id, tag, ext)):
        _, info, sha, pixels, _ = kept  # the very file kept aside
        if sha is not None:  # (a label saved by an older version has no record: it goes back as before)
            same = same_picture(sha, pixels, d) if d is not None else None
            if same is None:
                return "wait"
            if not same:
                if not _to_trash(store, image_id, tag, ext, f"label {tag} of an earlier frame {image_id}: the "
                                 f"frame now under that id ({os.path.basename(frame)}) is another picture than "
                                 f"the one this label was drawn on", info, sha, pixels):
                    return "wait"
                c.execute("DELETE FROM detached_labels WHERE image_id=? AND tag=?", (image_id, tag))
                logger.warning(f"frame {os.path.basename(frame)} is another picture than the one its {tag!r} label "
                               f"was drawn on (that frame went missing earlier); the label is kept in the trash")
                return "trash"
    c.execute("INSERT OR REPLACE INTO labels (image_id, tag, ext, info) VALUES (?, ?, ?, "
              "COALESCE(?, (SELECT info FROM labels WHERE image_id=? AND tag=?), '{}'))",
              (image_id, tag, ext, info, image_id, tag))
    record(c, image_id, tag, d if d is not None and d.pixels is not None else None,  # else: the next start
           _label_path(store, image_id, tag, ext))
    c.execute("DELETE FROM detached_labels WHERE image_id=? AND tag=?", (image_id, tag))
    return "attached"


def check_frames(store, c, blocked: set, digests: dict[str, Digest]) -> list[str]:
    """Labels whose frame file now holds another picture go to the trash (kept aside if that fails); a
    label without a record takes the picture there now. Returns the ids whose labels left."""
    recs = {(i, t): (sha, pixels, json.loads(sig)) for i, t, sha, pixels, sig in
            c.execute("SELECT image_id, tag, sha256, pixels, sig FROM label_frames")}
    out, undecided = [], set()
    for i, t, e, info in c.execute("SELECT image_id, tag, ext, info FROM labels").fetchall():
        d = digests.get(i)
        if d is None or i in blocked:
            continue  # not read this start: unchanged (or gone, or changed while being read)
        frame = _frame_file(store, c, i)
        if frame is None or file_sig(frame) != d.sig:
            continue  # changed since it was read: the next start looks again
        rec = recs.get((i, t))
        if rec is not None and rec[2] == d.sig:
            continue
        if rec is not None and _label_changed(store, c, i, t):
            rec = None  # the label file was written without a record (an older version, by hand): it is not the
            # label that record is of, so it takes the picture there now, as a label without a record does
        same = (True if d.pixels is not None else None) if rec is None else same_picture(rec[0], rec[1], d)
        if same is None:  # (a first record is never taken of a file that does not decode: half copied?)
            undecided.add(i)
            continue
        if same:  # the same picture (touched, copied back, re-encoded), or a first record
            record(c, i, t, d, _label_path(store, i, t, e))
            continue
        reason = (f"label {t} of {i}: the frame file {os.path.basename(frame)} was changed on disk after this "
                  f"label was saved (another picture)")
        if _to_trash(store, i, t, e, reason, info, rec[0], rec[1]):
            logger.warning(f"frame file {os.path.basename(frame)} is another picture than the one its {t!r} label "
                           f"was drawn on (changed on disk); the label is kept in the trash (polypal-trash list)")
        else:
            _detach(store, c, i, t, e, info)
        c.execute("DELETE FROM labels WHERE image_id=? AND tag=?", (i, t))
        c.execute("DELETE FROM label_frames WHERE image_id=? AND tag=?", (i, t))
        c.execute("DELETE FROM label_files WHERE image_id=? AND tag=?", (i, t))
        out.append(i)
    for i in sorted(undecided):
        logger.warning(f"frame {i}'s file changed and does not decode now (still being copied?); its labels are "
                       f"checked again at the next start")
    return out


def drop_stale(store, c) -> None:
    """Records of labels that are gone, and kept-aside rows whose file is gone or whose label is back."""
    for table in ("label_frames", "label_files"):
        c.execute(f"DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE "
                  f"l.image_id={table}.image_id AND l.tag={table}.tag)")
    c.execute("DELETE FROM detached_labels WHERE EXISTS (SELECT 1 FROM labels l WHERE "
              "l.image_id=detached_labels.image_id AND l.tag=detached_labels.tag)")
    c.executemany("DELETE FROM detached_labels WHERE image_id=? AND tag=?",
                  [(i, t) for i, t, e in c.execute("SELECT image_id, tag, ext FROM detached_labels").fetchall()
                   if not os.path.lexists(_label_path(store, i, t, e))])


def same_as_drawn_on(path, drawn_on) -> bool:
    """Whether the frame file at ``path`` is the picture a trashed label was drawn on (its manifest's
    ``drawn_on``): polypal-trash restore puts such a label back even when the frame file was replaced in
    between (the original copied back)."""
    if not isinstance(drawn_on, dict) or not path:
        return False
    d = digest(path)
    sha, pixels = drawn_on.get("sha256"), drawn_on.get("pixels")
    return d is not None and isinstance(sha, (str, type(None))) and isinstance(pixels, (str, type(None))) \
        and same_picture(sha, pixels, d) is True


def for_trash(c, image_id: str, tag: str, name: str) -> dict:
    """``FrameStore.trash``'s ``labels`` entry for a label file going to the trash as ``name``: its row's info
    and the picture it was drawn on, so that a restore brings both back."""
    r = c.execute("SELECT info FROM labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
    f = c.execute("SELECT sha256, pixels FROM label_frames WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
    return {name: {"info": json.loads(r[0]) if r else {},
                   "drawn_on": {"sha256": f[0], "pixels": f[1]} if f else None}}


def aside_entry(c, image_id: str, tag: str, ext: str, path: str) -> dict | None:
    """When the label file at ``path`` is the one kept aside for this id (same extension and content): what
    its trash manifest needs ({"info", "drawn_on"}: ``FrameStore.trash``'s ``labels`` entry); else None."""
    r = c.execute("SELECT ext, info, sha256, pixels, label_sha256 FROM detached_labels WHERE image_id=? AND "
                  "tag=?", (image_id, tag)).fetchone()
    if r is None or r[0] != ext or r[4] != file_sha(path):
        return None
    return {"info": json.loads(r[1]), "drawn_on": {"sha256": r[2], "pixels": r[3]} if r[2] else None}


def off_their_picture(store, ids, tag: str = "final") -> dict[str, str]:
    """Of these labeled frames, those whose file now holds another picture than their ``tag`` label was drawn
    on (changed on disk while the server runs; the next start moves such labels to the trash), with why.
    A training and an export leave them out meanwhile. Reads only frames whose ``file_sig`` changed."""
    c = store._conn()
    recs = {i: (sha, pixels, json.loads(sig)) for i, sha, pixels, sig in
            c.execute("SELECT image_id, sha256, pixels, sig FROM label_frames WHERE tag=?", (tag,))}
    out = {}
    for i in ids:
        why = _off(store.image_path(i), recs.get(i), lambda i=i: _label_changed(store, c, i, tag))
        if why:
            out[i] = why
    return out


def off_picture(store, image_id: str, tag: str) -> str | None:
    """``off_their_picture`` for one label (one indexed lookup and a stat while the frame file is unchanged):
    why the ``tag`` label of ``image_id`` is no longer on its frame's picture, or None."""
    c = store._conn()
    r = c.execute("SELECT sha256, pixels, sig FROM label_frames WHERE image_id=? AND tag=?",
                  (image_id, tag)).fetchone()
    return _off(store.image_path(image_id), r and (r[0], r[1], json.loads(r[2])),
                lambda: _label_changed(store, c, image_id, tag))


def _label_changed(store, c, image_id: str, tag: str) -> bool:
    """The label file has other bytes than the one its record was taken with (``check_frames``: the record is
    not its). A chmod, a touch or a copy keeping the bytes is not a change (its file_sig only says "read it")."""
    r = c.execute("SELECT f.sig, f.sha256, l.ext FROM label_files f JOIN labels l ON l.image_id=f.image_id AND "
                  "l.tag=f.tag JOIN label_frames r ON r.image_id=f.image_id AND r.tag=f.tag AND "
                  "r.sha256=f.frame_sha256 WHERE f.image_id=? AND f.tag=?", (image_id, tag)).fetchone()
    if r is None:
        return False  # no row, or one a later record (a version without this table) made stale: trust the record
    path = _label_path(store, image_id, tag, r[2])
    if file_sig(path) == json.loads(r[0]):
        return False
    sha = file_sha(path)
    return sha is not None and sha != r[1]


def _off(path, rec, label_changed) -> str | None:
    if rec is None or not path or file_sig(path) == rec[2] or label_changed():
        return None
    d = digest(path)
    if d is not None and same_picture(rec[0], rec[1], d) is False:
        return (f"frame file {os.path.basename(path)} was changed on disk after its label was saved "
                f"(another picture); left out, and moved to the trash at the next start")
    return None
