"""Honest dataset splits for the paper's two benchmarks, written next to the results.

- Kvasir-SEG: test = the 196 "sessile" frames (removed from pool and
  validation, fixing the original code's leakage); 100 validation frames drawn
  from the rest; the remainder is the pool.
- CVC-ClinicDB: by video sequence (frames of one sequence are near-duplicates):
  whole sequences go to test (~112 frames) and validation (~100 frames); the
  rest is the pool. ``mode="frame"`` gives the paper's plain random split
  (112 test, 100 val), which inflates results.
- An ingested video folder (``polypal-sim --dataset folder``): by video
  (``video_split``), whole videos to test, validation and pool.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np


def read_names(path) -> list[str]:
    return [line.strip().rsplit(".", 1)[0] if "." in line.strip() else line.strip()
            for line in Path(path).read_text().splitlines() if line.strip()]


def kvasir_split(names: list[str], sessile: list[str], n_val: int = 100, seed: int = 0) -> dict:
    sess = set(sessile)
    test = sorted(n for n in names if n in sess)
    rest = sorted(n for n in names if n not in sess)
    rng = np.random.default_rng(seed)
    val = sorted(rng.choice(rest, size=min(n_val, len(rest) // 2), replace=False).tolist())
    vs = set(val)
    pool = [n for n in rest if n not in vs]
    return {"test": test, "val": val, "pool": pool}


def read_sequences(csv_path) -> dict[str, int]:
    """CVC-ClinicDB frame name -> sequence id, from splits/cvc_clinicdb_sequences.csv."""
    out = {}
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]]
    fi = next(i for i, h in enumerate(header) if "frame" in h or "image" in h or "name" in h)
    si = next(i for i, h in enumerate(header) if "seq" in h or "video" in h)
    for r in rows[1:]:
        if len(r) > max(fi, si) and r[fi].strip():
            name = r[fi].strip().rsplit(".", 1)[0]
            out[name] = int(r[si])
    return out


def sequence_of(name: str, sequences: dict[str, int]) -> int:
    """The CVC-ClinicDB sequence of a frame name ("0012" finds that of "12"); -1 for a frame the list does
    not name (such frames share that id: one group)."""
    return sequences.get(name, sequences.get(name.lstrip("0"), -1))


def cvc_split(names: list[str], sequences: dict[str, int] | None, n_test: int = 112, n_val: int = 100,
              seed: int = 0, mode: str = "sequence") -> dict:
    rng = np.random.default_rng(seed)
    names = sorted(names)
    if mode == "frame" or sequences is None:
        perm = rng.permutation(len(names))
        test = sorted(names[i] for i in perm[:n_test])
        val = sorted(names[i] for i in perm[n_test : n_test + n_val])
        chosen = set(test) | set(val)
        return {"test": test, "val": val, "pool": [n for n in names if n not in chosen], "mode": "frame"}

    def seq_of(n: str) -> int:
        return sequence_of(n, sequences)

    by_seq: dict[int, list[str]] = {}
    for n in names:
        by_seq.setdefault(seq_of(n), []).append(n)
    seqs = sorted(by_seq)
    order = [seqs[i] for i in rng.permutation(len(seqs))]
    test, val, pool = [], [], []
    for s in order:
        frames = by_seq[s]
        if len(test) < n_test:
            test += frames
        elif len(val) < n_val:
            val += frames
        else:
            pool += frames
    return {"test": sorted(test), "val": sorted(val), "pool": sorted(pool), "mode": "sequence",
            "sequences": {"test": sorted({seq_of(n) for n in test}), "val": sorted({seq_of(n) for n in val})}}


def video_split(names: list[str], video_of: dict[str, str], n_test: int, n_val: int, seed: int = 0) -> dict:
    """By video (frames of an ingested folder): whole videos go to test until it holds ``n_test``
    frames, then to validation until ``n_val``, the rest to the pool, in a seeded random order of the
    videos; a frame of no video (a still) is its own unit. Frames of one video are never on two sides.
    Needs at least three videos (or stills); a side may overshoot its size by up to one video."""
    names = sorted(names)
    by: dict[str, list[str]] = {}
    for n in names:
        by.setdefault(video_of.get(n, "\0still:" + n), []).append(n)  # a still's key sorts apart from videos
    units = sorted(by)
    if len(units) < 3:
        raise ValueError(f"a split by video needs at least 3 videos, found {len(units)}")
    order = [units[i] for i in np.random.default_rng(seed).permutation(len(units))]
    test, val, pool = [], [], []
    for k, u in enumerate(order):
        rest = len(order) - k - 1  # units after this one: enough must remain for the sides still empty
        if len(test) < n_test and rest >= (not val) + (not pool):
            test += by[u]
        elif len(val) < n_val and rest >= (not pool):
            val += by[u]
        else:
            pool += by[u]
    vids = {s: sorted({video_of[n] for n in part if n in video_of}) for s, part in (("test", test), ("val", val))}
    return {"test": sorted(test), "val": sorted(val), "pool": sorted(pool), "mode": "video", "videos": vids}


def save_split(split: dict, path) -> None:
    """Written whole or not at all (runs started side by side read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(split, indent=1))
    os.replace(tmp, path)
