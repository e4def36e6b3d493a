"""The datastore's trash: list it, put files back, and empty old folders.

    polypal-trash list STUDIES                      # what is kept, newest first
    polypal-trash restore STUDIES FOLDER [FOLDER..] # put a folder's files back where they were
    polypal-trash purge STUDIES --older-than DAYS   # what would go; add --yes to delete it

Deleting or replacing a frame and overwriting or deleting a label move the old files into
``STUDIES/.polypal/trash/<time>-<id>/`` with a ``manifest.json`` (polypal.serving.framestore).
``restore`` works while the server runs: each file is linked back (never over an existing file),
then the store is reconciled, so the frame or label is listed again at once. It refuses, naming
the file, a frame whose id is taken again and a label whose frame is gone or whose place is taken.
A restored label comes back without its info (annotator, time): that lived in the database row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from polypal.serving.framestore import FrameStore
from polypal.vocab import plain_name, split_name


def trash_dir(studies: str | os.PathLike) -> Path:
    return Path(os.path.realpath(str(studies))) / ".polypal" / "trash"


def _manifest(folder: Path) -> dict:
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {"reason": "(no readable manifest)", "time": folder.stat().st_mtime, "files": {}}
    m.setdefault("files", {})
    m.setdefault("time", folder.stat().st_mtime)
    return m


def list_trash(studies) -> list[dict]:
    """One entry per trash folder, newest first: name, time, reason, files (trash name -> original path),
    bytes."""
    base = trash_dir(studies)
    out = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if not d.is_dir():
            continue
        m = _manifest(d)
        size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        out.append({"name": d.name, "time": float(m["time"]), "reason": m.get("reason", ""), "files": m["files"],
                    "bytes": size})
    return sorted(out, key=lambda e: e["time"], reverse=True)


def _folder(studies, name: str) -> Path:
    base = trash_dir(studies)
    if not plain_name(name) or not (base / name).is_dir():
        raise ValueError(f"no trash folder {name!r} in {base}")
    return base / name


def _kind(rel: str):
    """('frame', id) for a file at the top of the studies folder, ('label', id, tag) under labels/<tag>/."""
    parts = Path(rel).parts
    if len(parts) == 1:
        return ("frame", split_name(parts[0])[0])
    if len(parts) == 3 and parts[0] == "labels":
        return ("label", split_name(parts[2])[0], parts[1])
    return None


def restore(studies, name: str) -> dict:
    """Put one trash folder's files back. Returns {"restored": [paths], "refused": {path: why}}; the folder
    keeps what was refused (its manifest rewritten) and is removed once empty."""
    root = Path(os.path.realpath(str(studies)))
    folder = _folder(studies, name)
    m = _manifest(folder)
    store = FrameStore(root, read_only=True)
    items = []
    for trash_name, rel in m["files"].items():
        kind = _kind(rel)
        src = folder / trash_name
        if kind is None or not plain_name(trash_name) or any(not plain_name(p) for p in Path(rel).parts):
            items.append((trash_name, rel, None, "not a frame or label path"))
        elif not src.is_file():
            items.append((trash_name, rel, None, "missing from the trash folder"))
        else:
            items.append((trash_name, rel, kind, None))
    frames_back = {k[1] for _, _, k, why in items if k and k[0] == "frame" and why is None}
    restored, refused = [], {}
    # frames first: a label is only restored beside its frame
    for trash_name, rel, kind, why in sorted(items, key=lambda x: (x[2] or ("z",))[0] != "frame"):
        dest = root / rel
        if why is None and kind[0] == "frame" and store.image_ext(kind[1]) is not None:
            why = f"frame id {kind[1]!r} is in the datastore again"
        if why is None and kind[0] == "label" and store.image_ext(kind[1]) is None and kind[1] not in frames_back:
            why = f"its frame {kind[1]!r} is not in the datastore"
        if why is None and kind[0] == "label" and store.label_path(kind[1], kind[2]):
            why = f"frame {kind[1]!r} has a {kind[2]!r} label again"
        if why is None:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(folder / trash_name, dest)  # never over an existing file, whoever wrote it meanwhile
            except FileExistsError:
                why = "a file is in its place"
            except OSError as e:
                why = f"could not be linked back: {e.strerror}"
        if why is not None:
            refused[rel] = why
            if kind and kind[0] == "frame":
                frames_back.discard(kind[1])
            continue
        os.unlink(folder / trash_name)
        restored.append(rel)
    if restored:
        FrameStore(root)  # opening reconciles: the files' rows come back (the server sees them at once)
    left = {t: r for t, r in m["files"].items() if r in refused}
    if left:
        m["files"] = left
        (folder / "manifest.json").write_text(json.dumps(m, indent=1))
    else:
        shutil.rmtree(folder)
    return {"restored": restored, "refused": refused}


def purge(studies, older_than_days: float, dry_run: bool = True) -> list[dict]:
    """Trash folders older than the given age (by their manifest's time); deleted unless ``dry_run``."""
    cutoff = time.time() - older_than_days * 86400
    old = [e for e in list_trash(studies) if e["time"] < cutoff]
    if not dry_run:
        for e in old:
            shutil.rmtree(trash_dir(studies) / e["name"])
    return old


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
            for rel in r["restored"]:
                print(f"restored {rel}")
            for rel, why in r["refused"].items():
                print(f"not restored {rel}: {why} (kept in the trash)", file=sys.stderr)
                code = 1
        return code
    old = purge(a.studies, a.older_than, dry_run=not a.yes)
    verb = "deleted" if a.yes else "would delete"
    for e in old:
        print(f"{verb} {e['name']} ({e['reason']}, {_size(e['bytes'])})")
    print(f"{verb} {len(old)} trash folders, {_size(sum(e['bytes'] for e in old))}"
          + ("" if a.yes or not old else "; add --yes to delete them"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
