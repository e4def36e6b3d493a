"""A label stays with the picture it was drawn on.

The frame file's SHA-256 is recorded with each label (``label_frames``). At each start, ``reconcile`` keeps
the labels of a frame missing from the studies folder aside (``detached_labels``: a file deleted by hand, a
share not mounted), with that digest and the label file's [mtime_ns, size]; they go back, with their info,
only onto the same picture, and to the trash when another picture comes under that id. A labeled frame
whose file now holds another picture (overwritten by hand while no server ran) loses its labels to the
trash. Before, such labels were attached to whatever frame next had that id.

Functions of a ``FrameStore`` (``store``); those taking ``c`` run in reconcile's transaction.
"""

from __future__ import annotations

import json
import logging
import os
import time

from polypal.serving.fileops import file_signature, frame_digest, label_trash_name

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS label_frames (image_id TEXT NOT NULL, tag TEXT NOT NULL, sha256 TEXT NOT NULL,
                                         sig TEXT NOT NULL, PRIMARY KEY (image_id, tag));
CREATE TABLE IF NOT EXISTS detached_labels (image_id TEXT NOT NULL, tag TEXT NOT NULL, ext TEXT NOT NULL,
                                            info TEXT NOT NULL, sha256 TEXT, label_sig TEXT NOT NULL,
                                            since REAL NOT NULL, PRIMARY KEY (image_id, tag));
"""


def label_sig(path) -> list | None:
    """[mtime_ns, size] of a label file (no inode: a share mounted again may number files anew)."""
    sig = file_signature(path)
    return sig[1:] if sig else None


def record(c, image_id: str, tag: str, digest: tuple[str, list] | None) -> None:
    """In transaction ``c``: the frame this label is on now is ``digest`` (None: unknown, hashed at a start)."""
    if digest is None:
        c.execute("DELETE FROM label_frames WHERE image_id=? AND tag=?", (image_id, tag))
    else:
        c.execute("INSERT OR REPLACE INTO label_frames VALUES (?, ?, ?, ?)",
                  (image_id, tag, digest[0], json.dumps(digest[1])))


def digests_needed(store, files: dict, label_files: dict) -> dict:
    """Before reconcile's transaction (hashing is slow; nothing is locked): the digest of each frame whose
    labels need one now: a label file without its row, or a label whose frame file has another signature
    than when it was hashed (or none recorded: labels saved by an older version, hashed once)."""
    c = store._conn()
    lk = {(i, t): e for i, t, e in c.execute("SELECT image_id, tag, ext FROM labels")}
    recs = {(i, t): json.loads(sig) for i, t, sig in c.execute("SELECT image_id, tag, sig FROM label_frames")}
    want = {i for (i, t), e in label_files.items() if lk.get((i, t)) != e}
    sigs: dict = {}
    for i, t in lk:
        if i in files and i not in want:
            if i not in sigs:
                sigs[i] = file_signature(os.path.join(store.root, i + files[i]))
            if sigs[i] is not None and recs.get((i, t)) != sigs[i]:
                want.add(i)
    t0 = time.perf_counter()
    out = {i: d for i in sorted(want) if (d := frame_digest(os.path.join(store.root, i + files[i])))}
    if len(want) > 100:
        logger.info(f"hashed {len(want)} labeled frames in {time.perf_counter() - t0:.1f} s (each label is "
                    f"kept with the picture it was drawn on)")
    return out


def detach(store, c, gone: list[str]) -> int:
    """In reconcile's transaction, before the rows of frames ``gone`` are deleted: their labels' rows are
    kept aside with the digest of the frame they were drawn on. Returns how many."""
    n = 0
    for i in gone:
        for t, e, info in c.execute("SELECT tag, ext, info FROM labels WHERE image_id=?", (i,)).fetchall():
            ls = label_sig(os.path.join(store.root, "labels", t, i + e))
            if ls is None:
                continue
            r = c.execute("SELECT sha256 FROM label_frames WHERE image_id=? AND tag=?", (i, t)).fetchone()
            c.execute("INSERT OR REPLACE INTO detached_labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (i, t, e, info, r[0] if r else None, json.dumps(ls), time.time()))
            n += 1
            logger.warning(f"frame {i} is missing from the studies folder; its {t!r} label stays in "
                           f"labels/{t}/{i + e} and goes back on the frame only if the same picture returns")
    return n


def attach(store, c, image_id: str, tag: str, ext: str, digest) -> str:
    """In reconcile's transaction: a label file without its row. The label kept aside for this id goes
    back only onto the picture it was drawn on ("trash" otherwise, "wait" when the frame changed since it
    was hashed); any other file (put there by hand, or saved just before a crash) is the frame's label.
    Returns "attached", "trash" or "wait"."""
    path = os.path.join(store.root, "labels", tag, image_id + ext)
    fext = c.execute("SELECT ext FROM images WHERE id=?", (image_id,)).fetchone()[0]
    now = file_signature(os.path.join(store.root, image_id + fext))
    digest = digest if digest is not None and digest[1] == now else None
    d = c.execute("SELECT ext, info, sha256, label_sig FROM detached_labels WHERE image_id=? AND tag=?",
                  (image_id, tag)).fetchone()
    info = None
    if d is not None and d[0] == ext and json.loads(d[3]) == label_sig(path):  # the very file kept aside
        if d[2] is not None and digest is None:
            return "wait"
        if d[2] is not None and d[2] != digest[0]:
            store.trash({label_trash_name(tag, path): path},
                       f"label {tag} of an earlier frame {image_id}: the frame now under that id "
                       f"({image_id + fext}) is another picture than the one this label was drawn on",
                       frame=image_id)
            c.execute("DELETE FROM detached_labels WHERE image_id=? AND tag=?", (image_id, tag))
            logger.warning(f"frame {image_id + fext} is another picture than the one its {tag!r} label was "
                           f"drawn on (that frame went missing earlier); the label is kept in the trash")
            return "trash"
        info = d[1]
    c.execute("INSERT OR REPLACE INTO labels (image_id, tag, ext, info) VALUES (?, ?, ?, "
              "COALESCE(?, (SELECT info FROM labels WHERE image_id=? AND tag=?), '{}'))",
              (image_id, tag, ext, info, image_id, tag))
    record(c, image_id, tag, digest)
    c.execute("DELETE FROM detached_labels WHERE image_id=? AND tag=?", (image_id, tag))
    return "attached"


def check(store, c, blocked: set, digests: dict) -> list[str]:
    """In reconcile's transaction: a label whose frame file now holds another picture than the one it was
    drawn on (changed on disk while no server watched, e.g. another file copied over it) goes to the
    trash; a label without a record takes the frame there now. Returns the ids whose labels went."""
    exts = dict(c.execute("SELECT id, ext FROM images"))
    recs = {(i, t): (sha, json.loads(sig))
            for i, t, sha, sig in c.execute("SELECT image_id, tag, sha256, sig FROM label_frames")}
    out = []
    for i, t, e in c.execute("SELECT image_id, tag, ext FROM labels").fetchall():
        if i in blocked or i not in exts:
            continue
        now = file_signature(os.path.join(store.root, i + exts[i]))
        rec = recs.get((i, t))
        dg = digests.get(i)
        if now is None or (rec is not None and rec[1] == now) or dg is None or dg[1] != now:
            continue  # unchanged, or changed since it was hashed (the next start looks again)
        if rec is None or rec[0] == dg[0]:
            record(c, i, t, dg)  # the same bytes (copied back, touched), or a first record
            continue
        path = os.path.join(store.root, "labels", t, i + e)
        store.trash({label_trash_name(t, path): path},
                   f"label {t} of {i}: the frame file {i + exts[i]} was changed on disk after this label "
                   f"was saved (another picture)", frame=i)
        c.execute("DELETE FROM labels WHERE image_id=? AND tag=?", (i, t))
        c.execute("DELETE FROM label_frames WHERE image_id=? AND tag=?", (i, t))
        logger.warning(f"frame file {i + exts[i]} is another picture than the one its {t!r} label was drawn "
                       f"on (changed on disk); the label is kept in the trash (polypal-trash list)")
        out.append(i)
    return out


def purge(store, c) -> None:
    """In reconcile's transaction: records of labels that are gone."""
    c.execute("DELETE FROM label_frames WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE "
              "l.image_id=label_frames.image_id AND l.tag=label_frames.tag)")
    c.execute("DELETE FROM detached_labels WHERE EXISTS (SELECT 1 FROM labels l WHERE "
              "l.image_id=detached_labels.image_id AND l.tag=detached_labels.tag)")
    c.executemany("DELETE FROM detached_labels WHERE image_id=? AND tag=?",
                  [(i, t) for i, t, e in c.execute("SELECT image_id, tag, ext FROM detached_labels").fetchall()
                   if not os.path.lexists(os.path.join(store.root, "labels", t, i + e))])
