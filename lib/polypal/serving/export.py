"""Export the labeled set of a studies folder in the Kvasir-SEG layout, with a manifest.

    polypal-export STUDIES OUT        # OUT/images/, OUT/masks/ (PNG 0/255), OUT/manifest.json, .csv
                                      # + quality.json/.png: the per-model curve, once the folder was served

The layout is what ``polypal.data.load_folder`` and ``polypal-sim --data`` read,
and what most segmentation tools expect. The manifest says, per frame: who
labeled it (the annotator the server credited) and when, and how it was served (strategy, picked_by,
cycle, model version), as recorded by the server.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from polypal.data import DataError, read_mask, read_rgb
from polypal.errors import PolypalError
from polypal.serving import label_frames
from polypal.serving.framestore import FrameStore
from polypal.serving.sqlite_db import DamagedDatabase
from polypal.vocab import InvalidName, check_name, client_name

logger = logging.getLogger(__name__)
FIELDS = ("id", "image", "mask", "polyp_pixels", "labeled_at", "annotator", "served_by_strategy", "picked_by",
          "cycle", "model_version")


def export_labeled(studies: str | os.PathLike, out: str | os.PathLike, tag: str = "final",
                   limit: int | None = None, ids: list[str] | None = None, source: str | None = None) -> list[dict]:
    """Write every frame with a ``tag`` label (or those of ``ids`` that have one; the first ``limit``) and
    its mask (0/255 PNG) to ``out``; returns the manifest rows. Each frame and its label are copied together
    (``FrameStore.copy_labeled``), so a frame replaced or deleted while the export runs is exported as it
    was or left out, never paired with another frame's label; a row whose file is missing or unreadable is
    an error naming the file."""
    store = FrameStore(studies, read_only=True)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    scratch = out / ".labels"
    scratch.mkdir(exist_ok=True)
    rows = []
    credited = _credited(Path(studies) / ".polypal" / "state.sqlite") if tag == "final" else {}
    todo = (store.labeled_ids(tag) if ids is None else list(ids))[:limit]
    off = label_frames.off_their_picture(store, todo, tag)  # frame files changed on disk under their labels
    for i in todo:
        if i in off:  # looked at again now: a replace and its relabel may have landed since (before, such a
            now = label_frames.off_their_picture(store, [i], tag)  # frame was left out, wrongly said "off")
            if i in now:
                off[i] = now[i]
            else:
                del off[i]
        if i in off:
            logger.warning(f"export: {i} left out: {off[i]}")
            print(f"left out {i}: {off[i]}", file=sys.stderr)
            continue
        got = store.copy_labeled(i, tag, str(out / "images"), str(scratch))
        if got is None:  # deleted while the export ran: left out, as if the export had started later
            logger.warning(f"export: {i} has no {tag} label (any more): left out")
            continue
        img, lab = got["image"], got["label"]
        try:
            hw = read_rgb(img).shape[:2]
            mask = read_mask(lab, expected_hw=hw)
        except DataError as e:  # named as the store's file, not the export's copy
            which = store.image_path(i) if e.path == img else store.label_path(i, tag) or e.path
            raise DataError(which, e.problem.replace("<file>", which)) from None
        finally:
            os.unlink(lab)
        dst = Path(img)
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{i}.png")
        info, linfo = got["info"], got["label_info"]
        served = info.get("served") or {}
        strategy = info.get("strategy") or {}
        last = max(strategy.items(), key=lambda kv: (kv[1] or {}).get("ts", 0)) if strategy else (None, {})
        rows.append({
            "id": i, "image": f"images/{dst.name}", "mask": f"masks/{i}.png", "polyp_pixels": int(mask.sum()),
            "labeled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(linfo["ts"])) if linfo.get("ts") else None,
            "annotator": _client(_annotator(credited.get(i), linfo)) or _client(linfo.get("client_id"))
            or _client(served.get("client_id")) or _client((last[1] or {}).get("client_id")),
            "served_by_strategy": served.get("al_strategy") or last[0],
            "picked_by": served.get("picked_by"), "cycle": served.get("cycle"),
            "model_version": served.get("model_version"),
        })
    scratch.rmdir()
    with open(out / "manifest.json", "w") as f:
        # ``source``: what the manifest names as the studies folder (the server's archive gives the folder's
        # name, not where the server keeps it)
        json.dump({"source": source or str(Path(studies).resolve()), "tag": tag, "frames": rows}, f, indent=1)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: _cell(v) for k, v in r.items()} for r in rows)  # ids and annotators come from clients
    _export_quality(Path(studies) / ".polypal" / "state.sqlite", out)
    return rows


def _cell(value):
    """A CSV cell a spreadsheet shows as text: a string (an image id or annotator, both chosen by clients) that
    starts like a formula, after any spaces or line breaks, gets a leading ' (OWASP's advice on CSV
    injection); manifest.json keeps it as sent."""
    if isinstance(value, str) and (value[:1] in ("=", "+", "-", "@", "\t", "\r")
                                   or value.lstrip()[:1] in ("=", "+", "-", "@")):
        return "'" + value
    return value


def _client(value) -> str | None:
    """A client_id from a label's info or a served record, when it is one next-sample and saves take (older
    saves could store a list, a dict or control characters: those credit no one)."""
    try:
        return client_name(value)
    except ValueError:
        return None


def _credited(state_db: Path) -> dict[str, tuple[str, float]]:
    """Who the server credited with each frame's last final label, and when it was saved (its annotation
    log: the signed-in user, or the client it was served to), read only. A label's info is the client's to
    write (``client_id`` in its params, changed by any later info update), so it counts only where the server
    recorded no one, or recorded another save (a label put back from the trash)."""
    import contextlib
    import sqlite3

    if not state_db.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30)) as c:
            rows = c.execute("SELECT image_id, client_id, labeled FROM effort").fetchall()
    except sqlite3.Error as e:  # an older state without the log: the labels' info, as before
        if "no such table" not in str(e):
            logger.warning(f"export: the server's annotation log could not be read ({e}); annotators are taken "
                           f"from the labels' info")
        return {}
    return {i: (who, float(t)) for i, who, t in rows
            if isinstance(who, str) and who and who != "unknown" and isinstance(t, (int, float))}


def _annotator(credited: tuple[str, float] | None, linfo: dict) -> str | None:
    """The server's credit when it is of this label's save (saved within seconds of its info's ``ts``)."""
    ts = linfo.get("ts")
    if credited and (not isinstance(ts, (int, float)) or -2 <= credited[1] - ts <= 600):
        return credited[0]
    return None


def _export_quality(state_db: Path, out: Path) -> None:
    """The server's per-model quality curve (``/info`` polyp_al.quality) as quality.json and quality.png,
    when the studies folder has been served (read only: no schema is created)."""
    if not state_db.exists():
        return
    from polypal.serving.annotations import AnnotationLog
    from polypal.serving.quality import plot_quality
    from polypal.serving.sqlite_db import SQLiteDB

    try:
        q = AnnotationLog(SQLiteDB(state_db)).quality()
    except Exception:  # noqa: BLE001 - an older state without the quality table: nothing to export
        return
    (out / "quality.json").write_text(json.dumps(q, indent=1))
    plot_quality(q["by_model"], out / "quality.png", q["stopping"])


def _host() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _remove_stale_partials(out: Path) -> None:
    """Copies that an export into ``out`` killed half-way (kill -9, a power cut) left beside it: removed
    when the process that wrote each, on this machine, is gone (before, each stayed, hidden, holding a copy
    of the frames). Another machine's (a shared folder) are left alone."""
    prefix = f".{out.name}.partial-{_host()}-"
    try:
        names = [n for n in os.listdir(out.parent) if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        pid = n[len(prefix):]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (another export into the same place)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue
        p = out.parent / n
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="polypal-export", description=__doc__.splitlines()[0])
    ap.add_argument("studies", help="the studies folder the server serves")
    ap.add_argument("out", help="output folder (created)")
    ap.add_argument("--tag", default="final", help="the label tag to export (default: final, the annotators' "
                                                    "labels)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if not Path(a.studies).is_dir():
        print(f"polypal-export: {a.studies}: no such studies folder", file=sys.stderr)
        return 2
    db = Path(a.studies) / ".polypal" / "datastore.sqlite"
    if not db.is_file() or db.stat().st_size == 0:  # never create a datastore in someone's folder
        hint = " (it has images/: a dataset folder, already in the export layout)" \
            if (Path(a.studies) / "images").is_dir() else ""
        labels = Path(a.studies) / "labels" / "final"
        if db.is_file() and labels.is_dir() and any(labels.iterdir()):
            print(f"polypal-export: {db} is empty while {labels} holds labels: start the server on the folder once "
                  f"(it registers them again from their files), or put the database back from a backup; nothing "
                  f"was exported", file=sys.stderr)
            return 1
        print(f"polypal-export: {a.studies} is not a studies folder a polyp-al server has used (no "
              f".polypal/datastore.sqlite){hint}; nothing to export", file=sys.stderr)
        return 2
    try:
        check_name("label tag", a.tag)
        tags = FrameStore(a.studies, read_only=True).counts()["label_tags"]
    except InvalidName as e:
        print(f"polypal-export: {e}", file=sys.stderr)
        return 2
    except (PolypalError, OSError, sqlite3.Error) as e:
        print(f"polypal-export: error: {e}"
              + (f" ({db} is damaged: put it back from a backup)" if isinstance(e, sqlite3.DatabaseError)
                 and not isinstance(e, (sqlite3.OperationalError, DamagedDatabase)) else "")
              + "; nothing was exported", file=sys.stderr)
        return 1
    if a.tag != "final" and not tags.get(a.tag):
        known = ", ".join(f"{t} ({n})" for t, n in sorted(tags.items())) or "none"
        print(f"polypal-export: no label has the tag {a.tag!r}; tags in {a.studies}: {known}", file=sys.stderr)
        return 2
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"polypal-export: {a.out} is {'a file' if not out.is_dir() else 'not empty'}; choose a new folder",
              file=sys.stderr)
        return 2
    # written beside OUT, renamed into place when complete: a failure leaves no half export to be refused later
    _remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{_host()}-{os.getpid()}"
    try:
        rows = export_labeled(a.studies, tmp, a.tag)
        if out.exists():
            out.rmdir()  # the empty folder checked above
        os.replace(tmp, out)
    except (PolypalError, OSError, sqlite3.Error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"polypal-export: error: {e}; nothing was exported", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the copy goes, and no traceback
        shutil.rmtree(tmp, ignore_errors=True)
        print("polypal-export: interrupted; nothing was exported", file=sys.stderr)
        return 130
    extra = ", quality.json, quality.png" if (out / "quality.json").exists() else ""
    print(f"exported {len(rows)} labeled frames to {a.out} (images/, masks/, manifest.json, manifest.csv{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
