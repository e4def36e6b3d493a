"""The datastore's trash: list it, put files back, and empty old folders.

    polypal-trash list STUDIES                      # what is kept, newest first
    polypal-trash restore STUDIES FOLDER [FOLDER..] # put a folder's files back where they were
    polypal-trash purge STUDIES --older-than DAYS   # what would go; add --yes to delete it

Deleting or replacing a frame and overwriting or deleting a label move the old files into
``STUDIES/.polypal/trash/<YYYYmmdd-HHMMSS>-<random>/`` (local time and a random suffix; the frame id
is not in the name) with a ``manifest.json`` giving the reason and the original paths
(polypal.serving.framestore).
``restore`` works while the server runs: each file is linked back (never over an existing file),
then the store is reconciled, so the frame or label is listed again at once. It refuses, naming
the file, a frame whose id is taken again and a label whose frame is gone or whose place is taken.
A restored label comes back with its info (annotator, time) where its manifest kept it (labels removed,
overwritten, deleted with their frame, or moved aside at a start), and a label whose frame file was replaced
goes back when the frame file is again the picture it was drawn on.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sqlite3
import stat
import sys
import time
from pathlib import Path

from polypal.serving import label_frames
from polypal.serving.fileops import write_fsynced
from polypal.serving.framestore import (MAX_INFO_BYTES, REPLACE_JOURNAL, FrameStore, LinkedFolder,
                                        linked_folder)
from polypal.serving.sqlite_db import DamagedDatabase
from polypal.vocab import LABEL_EXTENSIONS, InvalidName, check_name, plain_name, split_name


MIN_AGE_S = 60.0  # a purge leaves younger trash folders alone


def trash_dir(studies: str | os.PathLike) -> Path:
    return Path(os.path.realpath(str(studies))) / ".polypal" / "trash"


def _folders(studies):
    """The trash's folders (real ones: a symlink in the trash is never followed)."""
    base = trash_dir(studies)
    return [d for d in sorted(base.iterdir()) if not d.is_symlink() and d.is_dir()] if base.is_dir() else []


def _manifest(folder: Path) -> dict:
    """The folder's manifest with checked types; an unreadable one lists no files (nothing to restore)."""
    fallback = {"reason": "(no readable manifest)", "time": folder.lstat().st_mtime, "files": {}}
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return fallback
    if not isinstance(m, dict):
        return fallback
    files = m.get("files")
    files = {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str) and k != "manifest.json"} \
        if isinstance(files, dict) else {}  # the manifest itself is never a file to put back
    try:
        when = float(m.get("time", fallback["time"]))
    except (TypeError, ValueError):
        when = fallback["time"]
    if not 0 <= when <= time.time() + 86400 * 366:  # nan, inf, 1e300, negative: a time no clock gave
        when = fallback["time"]
    frame = m.get("frame") if isinstance(m.get("frame"), dict) else None
    labels = m.get("labels") if isinstance(m.get("labels"), dict) else {}
    labels = {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, dict)}
    return {"reason": str(m.get("reason", "")), "time": when, "files": files, "frame": frame, "labels": labels}


def list_trash(studies) -> list[dict]:
    """One entry per trash folder, newest first: name, time, reason, files (trash name -> original path),
    bytes."""
    out = []
    for d in _folders(studies):
        m = _manifest(d)
        size = sum(p.lstat().st_size for p in d.iterdir() if p.is_file() and not p.is_symlink())
        pending = (d / REPLACE_JOURNAL).exists()  # a replace under way, or one a crash interrupted
        out.append({"name": d.name, "time": m["time"], "files": m["files"], "bytes": size, "pending": pending,
                    "reason": m["reason"] + (" (unfinished: the next server start finishes or undoes it)"
                                             if pending else "")})
    return sorted(out, key=lambda e: e["time"], reverse=True)


def _folder(studies, name: str) -> Path:
    base = trash_dir(studies)
    d = base / name if plain_name(name) else None
    if d is None or d.is_symlink() or not d.is_dir():
        raise ValueError(f"no trash folder {name!r} in {base}")
    return d


def _kind(store: FrameStore, rel: str):
    """('frame', id, ext) for a frame file at the top of the studies folder, ('label', id, ext, tag) for a
    label file under labels/<tag>/; None for anything else (no other file is ever put back)."""
    parts = Path(rel).parts
    try:
        if len(parts) == 1 and store._matches(parts[0]):
            i, ext = split_name(parts[0])
            return ("frame", check_name("image id", i), ext)
        if len(parts) == 3 and parts[0] == "labels":
            i, ext = split_name(parts[2])
            if ext.lower() in LABEL_EXTENSIONS:
                return ("label", check_name("image id", i), ext, check_name("label tag", parts[1]))
    except InvalidName:
        return None
    return None


def _on_disk(root: Path, store: FrameStore, image_id: str) -> list[str]:
    """Frame files of this id in the studies folder, whether or not the store has their row yet."""
    return [p.name for p in root.glob(f"{glob.escape(image_id)}.*")
            if split_name(p.name)[0] == image_id and store._matches(p.name)]


def _plain_file(p) -> bool:
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except OSError:
        return False


def _put_back_before(dest: Path, src: Path, image_id: str, m: dict) -> bool:
    """Whether an earlier restore of this folder, stopped half-way, put this frame back: its file in place
    is the trash's own (a link not yet removed from the trash), or, the trash's gone, the very picture the
    folder's labels of it were drawn on. (Before, such a frame was refused for ever, "missing from the
    trash folder", and so its labels: "its frame was not restored".)"""
    if not _plain_file(dest):
        return False
    if os.path.lexists(src):  # (a symlink in the trash is no file of it)
        return _plain_file(src) and os.lstat(src).st_ino == os.lstat(dest).st_ino and \
            os.lstat(src).st_dev == os.lstat(dest).st_dev
    drawn = [v.get("drawn_on") for v in (m.get("labels") or {}).values() if isinstance(v, dict)]
    return any(isinstance(d, dict) and d.get("sha256") and label_frames.same_as_drawn_on(str(dest), d)
               for d in drawn)


def _why_not(store: FrameStore, root: Path, kind, src: Path, m: dict, frames_back: set, trashed_frames: set):
    """Why this file cannot be put back now (None: it can)."""
    st = os.lstat(src) if os.path.lexists(src) else None
    if st is None:
        return "missing from the trash folder"
    if not stat.S_ISREG(st.st_mode):
        return "not a plain file in the trash folder"
    if kind[0] == "frame":
        if store.image_ext(kind[1]) is not None or _on_disk(root, store, kind[1]):
            return f"frame id {kind[1]!r} is in the datastore again"
        return None
    _, image_id, _, tag = kind
    if image_id in trashed_frames and image_id not in frames_back:
        return f"its frame {image_id!r} was not restored (a label of the old frame never goes on a new one)"
    if store.image_ext(image_id) is None and image_id not in frames_back:
        return f"its frame {image_id!r} is not in the datastore"
    drawn_on = m["labels"].get(src.name, {}).get("drawn_on")
    if isinstance(drawn_on, dict) and drawn_on.get("sha256"):  # the picture it was drawn on is known: only onto it
        if image_id not in frames_back and not label_frames.same_as_drawn_on(store.image_path(image_id), drawn_on):
            return (f"frame {image_id!r} is another picture than the one this label was drawn on (put that "
                    f"picture back first)")
    else:
        fr = m.get("frame") or {}
        if fr.get("id") == image_id and fr.get("signature") and store.frame_signature(image_id) != fr["signature"]:
            return f"frame {image_id!r} was replaced after this label was kept"
    if store.label_path(image_id, tag):
        return f"frame {image_id!r} has a {tag!r} label again"
    return None


def _restore_info(store: FrameStore, path: Path, inode: int, image_id: str, tag: str, kept: dict) -> None:
    """A restored label's info from its manifest, in one transaction with a check that the label is still the
    file put back (a save landing meanwhile keeps its own info) and that the info is plain JSON."""
    info = kept.get("info")
    if not isinstance(info, dict) or not info:
        return
    try:
        text = json.dumps(info, allow_nan=False)
    except (TypeError, ValueError):
        print(f"{path}: restored without its info (not plain JSON)", file=sys.stderr)
        return
    if len(text) > MAX_INFO_BYTES:
        print(f"{path}: restored without its info (over {MAX_INFO_BYTES} bytes)", file=sys.stderr)
        return
    with store._tx() as c:
        r = c.execute("SELECT ext FROM labels WHERE image_id=? AND tag=?", (image_id, tag)).fetchone()
        p = os.path.join(store.label_dir(tag), image_id + r[0]) if r else None
        try:
            same = p == str(path) and os.lstat(p).st_ino == inode
        except OSError:
            same = False
        if same:
            c.execute("UPDATE labels SET info=? WHERE image_id=? AND tag=?", (text, image_id, tag))


RESTORING = ".restoring-"  # + pid: a restore under way in the folder, which a purge leaves alone


def _markers(folder: Path) -> tuple[list[Path], list[Path]]:
    """The folder's restore markers (``.restoring-<pid>``): (of live processes, of dead ones)."""
    live, dead = [], []
    for n in os.listdir(folder):
        pid = n[len(RESTORING):]
        if not (n.startswith(RESTORING) and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
            live.append(folder / n)
        except (ProcessLookupError, OverflowError):
            dead.append(folder / n)
        except PermissionError:
            live.append(folder / n)
    return live, dead


def _restoring(folder: Path) -> bool:
    """Whether a live process is restoring this folder."""
    return bool(_markers(folder)[0])


def restore(studies, name: str) -> dict:
    """Put one trash folder's files back. Returns {"restored": [paths], "refused": {path: why}}; the folder
    keeps what was refused (its manifest rewritten) and is removed once empty. A purge leaves the folder
    alone meanwhile (before, one running at the same time deleted it half-way: a traceback, and a frame
    restored but not reported)."""
    folder = _folder(studies, name)
    via = linked_folder(os.path.realpath(str(studies)))
    if via:  # (a restore reconciles the folder, which a link would take outside it)
        raise ValueError(f"{via} in the studies folder is a symbolic link: make it a real folder first (labels "
                         f"are restored only into real folders inside the studies folder)")
    if (folder / REPLACE_JOURNAL).exists():
        raise ValueError(f"trash folder {name!r} holds a frame replace under way, or one that a crash interrupted "
                         f"(the next server start finishes or undoes it); try again after that")
    marker = folder / f"{RESTORING}{os.getpid()}"
    with FrameStore(Path(os.path.realpath(str(studies))), read_only=True)._tx():  # a purge checks under it
        if not folder.is_dir():
            raise ValueError(f"trash folder {name!r} was purged meanwhile")
        marker.touch()
    try:
        res, empty = _restore(studies, folder)
    except FileNotFoundError as e:
        raise ValueError(f"trash folder {name!r} changed while it was restored ({e.filename} is gone); what was "
                         f"restored is in place") from None
    finally:
        marker.unlink(missing_ok=True)
    if empty:
        try:  # (a server start may have removed the folder, left holding only its manifest, meanwhile)
            for stale in _markers(folder)[1]:  # a restore killed before this one (this one finished it)
                stale.unlink(missing_ok=True)
            (folder / "manifest.json").unlink()
            folder.rmdir()
        except OSError:  # files the manifest did not list: left as they are
            pass
    return res


def _restore(studies, folder: Path) -> tuple[dict, bool]:
    """``restore``'s work: (its answer, whether the folder is now empty of listed files)."""
    root = Path(os.path.realpath(str(studies)))
    m = _manifest(folder)
    store = FrameStore(root, read_only=True)
    items = [(t, rel, _kind(store, rel)) for t, rel in m["files"].items()]
    trashed_frames = {k[1] for _, _, k in items if k and k[0] == "frame"}
    frames_back: set[str] = set()
    restored, refused = [], {}
    linked = {}  # rel -> the restored file's inode (its info goes back only onto that file)
    # the trash's own links go last, after the labels' info: a restore stopped before then finds each file
    # still in both places and finishes it (before, a label already unlinked from the trash without its info
    # was refused for ever, "missing from the trash folder", and the folder's purge left it infoless)
    unlink_after: list[Path] = []
    # frames first: a label is only restored beside its frame
    for trash_name, rel, kind in sorted(items, key=lambda x: not (x[2] and x[2][0] == "frame")):
        src = folder / trash_name
        if kind is not None and kind[0] == "frame" and plain_name(trash_name) and \
                _put_back_before(root / rel, src, kind[1], m):
            # a restore stopped half-way (Ctrl-C, a kill) had put this frame back: so are its labels now
            if os.path.lexists(src):
                unlink_after.append(src)
            restored.append(rel)
            frames_back.add(kind[1])
            continue
        if kind is not None and kind[0] == "label" and plain_name(trash_name) and _plain_file(src) and \
                _plain_file(root / rel) and os.lstat(src).st_ino == os.lstat(root / rel).st_ino and \
                os.lstat(src).st_dev == os.lstat(root / rel).st_dev:
            linked[rel] = os.lstat(root / rel).st_ino  # linked back by a restore stopped before it went on
            unlink_after.append(src)
            restored.append(rel)
            continue
        # the check and the link as one step under the datastore's write lock: a server's delete or replace of
        # the frame waits, and then takes the label with it (before, one in between left the label back with
        # no frame, or on the new picture, and a new frame of that id took it at the next start)
        with store._tx():
            why = "not a frame or label of this datastore" if kind is None or not plain_name(trash_name) else \
                _why_not(store, root, kind, src, m, frames_back, trashed_frames)
            via = linked_folder(str(root), [kind[3]]) if why is None and kind[0] == "label" else None
            if via:  # (through the link it would be written outside the studies folder)
                why = f"{via} in the studies folder is a symbolic link: make it a real folder first"
            if why is None:
                dest = root / rel
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.link(src, dest, follow_symlinks=False)  # never over an existing file, whoever wrote it
                except FileExistsError:
                    why = "a file is in its place"
                except OSError as e:
                    why = f"could not be linked back: {e.strerror}"
        if why is not None:
            refused[rel] = why
            continue
        linked[rel] = os.lstat(root / rel).st_ino
        unlink_after.append(src)
        restored.append(rel)
        if kind[0] == "frame":
            frames_back.add(kind[1])
    if restored:
        try:
            store = FrameStore(root)  # opening reconciles: the files' rows come back (the server sees them at once)
        except LinkedFolder as e:  # made during this restore: the files are back; their rows come at the next open
            raise ValueError(f"{len(restored)} file(s) linked back, then: {e}; run the restore again once it "
                             f"is a real folder to finish") from None
        for trash_name, rel, kind in items:  # and a label's info, where the manifest kept it
            if rel in restored and kind[0] == "label":
                _restore_info(store, root / rel, linked[rel], kind[1], kind[3], m["labels"].get(trash_name, {}))
    for src in unlink_after:
        os.unlink(src)
    left = {t: r for t, r in m["files"].items() if r in refused}
    if left:
        m["files"] = left
        write_fsynced(str(folder / "manifest.json"), m)  # whole or not at all: a kill mid-write left it cut,
        # listing no file, and the refused labels were then purged with the folder
    return {"restored": restored, "refused": refused}, not left and bool(restored)


def _linked_trash(studies) -> str | None:
    """``.polypal`` or ``.polypal/trash`` when it is a symbolic link (a purge would delete through it)."""
    via = linked_folder(os.path.realpath(str(studies)), tags=[])
    return via if via in (".polypal", os.path.join(".polypal", "trash")) else None


def purge(studies, older_than_days: float, dry_run: bool = True, kept: dict | None = None) -> list[dict]:
    """Trash folders older than the given age (by their manifest's time); deleted unless ``dry_run``.
    ``kept``, a dict, is filled with how many folders were left and why: "newer" (than the age asked),
    "young" (under MIN_AGE_S old, whatever the age asked), "pending" (a frame replace under way or
    interrupted), "restoring" (a restore under way)."""
    # never a folder under a minute old, whatever --older-than says: a delete or replace whose COMMIT failed
    # moves its files back from it after taking the write lock again, and a purge could come in between
    via = _linked_trash(studies)
    if via:  # its folders would be deleted elsewhere
        raise ValueError(f"{via} in the studies folder is a symbolic link: a purge deletes only folders of the "
                         f"trash inside the studies folder; make it a real folder first")
    now = time.time()
    asked = now - older_than_days * 86400
    cutoff = min(asked, now - MIN_AGE_S)
    why: dict[str, int] = {}
    old = []
    for e in list_trash(studies):
        folder = trash_dir(studies) / e["name"]
        try:
            restoring = e["time"] < cutoff and not e["pending"] and _restoring(folder)
        except OSError:  # gone meanwhile (a restore finished it)
            continue
        reason = "newer" if e["time"] >= asked else "young" if e["time"] >= cutoff else \
            "pending" if e["pending"] else "restoring" if restoring else None  # pending: not trash yet
        if reason:
            why[reason] = why.get(reason, 0) + 1
        else:
            old.append(e)
    if not dry_run and old:
        # each folder goes under the datastore's write lock: a delete or replace moves its files into a
        # trash folder inside its transaction and, when that fails, moves them back. Before, a purge with
        # a short --older-than could delete such a folder in between, and the failed write's files with it.
        store = FrameStore(Path(os.path.realpath(str(studies))), read_only=True)
        done = []
        for e in old:
            folder = trash_dir(studies) / e["name"]
            with store._tx():
                if not folder.is_dir() or folder.is_symlink():
                    continue  # put back by a failed write's undo meanwhile
                if _linked_trash(studies):
                    raise ValueError("the trash was made a symbolic link during the purge; it stopped there")
                reason = "pending" if (folder / REPLACE_JOURNAL).exists() else \
                    "restoring" if _restoring(folder) else None
                if reason:  # now a replace's, or being restored
                    why[reason] = why.get(reason, 0) + 1
                    continue
                shutil.rmtree(folder)  # real folders only (_folders): no link followed
            done.append(e)
        old = done
    if kept is not None:
        kept.update(why)
    return old


_KEPT = {"young": "under a minute old (a purge never takes those, whatever --older-than says: a failed delete "
                  "may still be moving its files back; run it again in a minute)",
         "restoring": "being restored",
         "pending": "holding a frame replace under way or interrupted (the next server start finishes or undoes it)",
         "newer": "newer than --older-than {days:g} days"}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="polypal-trash", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("list", help="what the trash holds, newest first")
    p.add_argument("studies")
    p = sub.add_parser("restore", help="put trash folders' files back (works while the server runs)")
    p.add_argument("studies")
    p.add_argument("folders", nargs="+", help="trash folder names, as `list` shows them")
    p = sub.add_parser("purge", help="delete trash folders older than --older-than days (asks for --yes)")
    p.add_argument("studies")
    p.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    p.add_argument("--yes", action="store_true", help="delete them (without it: only say what would go)")
    a = ap.parse_args(argv)
    if a.cmd == "purge" and not 0 <= a.older_than < float("inf"):
        ap.error(f"--older-than must be a number of days >= 0, got {a.older_than}")
    if not (Path(a.studies) / ".polypal").is_dir():
        print(f"polypal-trash: {a.studies} is not a studies folder a polyp-al server has used (no .polypal/)",
              file=sys.stderr)
        return 2
    if a.cmd == "list":
        entries = list_trash(a.studies)
        for e in entries:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["time"]))
            print(f"{e['name']}  {when}  {_size(e['bytes'])}  {e['reason']}")
            for t, rel in e["files"].items():
                print(f"    {rel}")
        print(f"{len(entries)} trash folders, {_size(sum(e['bytes'] for e in entries))}")
        return 0
    if a.cmd == "restore":
        code = 0
        for name in a.folders:
            try:
                r = restore(a.studies, name)
            except ValueError as e:
                print(f"polypal-trash: {e}", file=sys.stderr)
                code = 2
                continue
            except DamagedDatabase as e:  # its message names the file and says what to do
                print(f"polypal-trash: {name} not restored: {e}", file=sys.stderr)
                return 1
            except sqlite3.Error as e:  # a damaged datastore database: said, not a traceback
                print(f"polypal-trash: {name} not restored: the datastore database cannot be used ({e}); put "
                      f"{Path(a.studies) / '.polypal' / 'datastore.sqlite'} back from a backup first", file=sys.stderr)
                return 1
            for rel in r["restored"]:
                print(f"restored {rel}")
            for rel, why in r["refused"].items():
                print(f"not restored {rel}: {why} (kept in the trash)", file=sys.stderr)
                code = 1
        return code
    kept: dict[str, int] = {}
    try:
        old = purge(a.studies, a.older_than, dry_run=not a.yes, kept=kept)
    except (sqlite3.Error, OSError, ValueError) as e:
        print(f"polypal-trash: purge stopped: {e}", file=sys.stderr)
        return 1
    verb = "deleted" if a.yes else "would delete"
    for e in old:
        print(f"{verb} {e['name']} ({e['reason']}, {_size(e['bytes'])})")
    print(f"{verb} {len(old)} trash folders, {_size(sum(e['bytes'] for e in old))}"
          + ("" if a.yes or not old else "; add --yes to delete them"))
    if kept:
        print(f"{'kept' if a.yes else 'would keep'} {sum(kept.values())} trash folders: "
              + "; ".join(f"{kept[k]} {_KEPT[k].format(days=a.older_than)}" for k in _KEPT if k in kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
