"""Labels spent on near-duplicates, with and without grouping, on CVC-ClinicDB as a video pool.

Each of the 29 sequences is encoded as an H.264 clip and ingested with
``polypal-ingest`` (every frame); groups are then formed at several dHash
thresholds. Counted, per strategy and seed, over the whole run (initial set and
every batch): a label is "spent on a near-duplicate" when its frame's group
already holds a labeled frame (labeled earlier, or earlier in the same batch).

- "recorded" rows read the picks of finished ``polypal-sim`` runs (no
  grouping), e.g. ``results/cvc-lite/runs/*.jsonl`` (sequence split).
- writes ``cvc_groups.json`` (groups at the default threshold, by CVC frame
  name) for ``polypal-sim run --video-groups``.
- "random" rows re-draw random batches on the same split and initial sets,
  once from the whole unlabeled pool and once from
  ``dedupe_candidates(..., max_tier=0)`` (one clean representative per group
  that holds no label yet): no model is needed for random selection.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_dup_labels.py \
    --data ../shared/datasets --runs results/cvc-lite --out results/video
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from video_thresholds import encode  # noqa: E402

from polypal.experiments.splits import read_sequences  # noqa: E402
from polypal.video import dedupe_candidates  # noqa: E402
from polypal.video import frames as F  # noqa: E402
from polypal.video.ingest import ingest_video  # noqa: E402


def ingest_cvc(data: Path, tmp: Path) -> dict[str, dict]:
    """CVC frame name -> its ingest row (video, frame, dhash, measures), from clips ingested back."""
    cvc = data / "cvc-clinicdb" / "images"
    seqs = read_sequences(data / "splits" / "cvc_clinicdb_sequences.csv")
    by_seq: dict[int, list[Path]] = {}
    for p in sorted(cvc.glob("*.png"), key=lambda p: int(p.stem)):
        by_seq.setdefault(seqs[p.stem], []).append(p)
    studies = tmp / "studies"
    for s, paths in by_seq.items():
        clip = tmp / f"cvc_seq{s:02d}.mp4"
        encode(paths, clip)
        ingest_video(clip, studies, quiet=True)
    con = sqlite3.connect(studies / ".polypal" / "video.sqlite")
    out = {}
    for vid, fr, h, sharp, mean, bright in con.execute(
            "SELECT video, frame, dhash, sharp, mean, bright FROM frames ORDER BY video, frame"):
        name = by_seq[int(vid.removeprefix("cvc_seq"))][fr].stem
        out[name] = {"video": vid, "frame": fr, "dhash": h, "sharp": sharp, "mean": mean, "bright": bright}
    return out


def grouping(rows: dict[str, dict], bits: int):
    """groups (name -> group), flagged names, representatives at a threshold."""
    groups, reps = {}, set()
    by_vid: dict[str, list[str]] = {}
    for n, r in sorted(rows.items(), key=lambda kv: (kv[1]["video"], kv[1]["frame"])):
        by_vid.setdefault(r["video"], []).append(n)
    for names in by_vid.values():
        gi = F.group_consecutive([rows[n]["dhash"] for n in names], bits)
        ms = [rows[n] for n in names]
        for g in set(gi):
            members = [i for i, x in enumerate(gi) if x == g]
            reps.add(names[F.representative(members, ms)])
            for i in members:
                groups[names[i]] = names[members[0]]
    flagged = {n for n, r in rows.items() if F.flags(r)}
    return groups, flagged, reps


def count_dups(batches: list[list[str]], groups: dict[str, str]) -> dict:
    seen, per = set(), []
    for b in batches:
        k = 0
        for n in b:
            g = groups.get(n, n)
            k += g in seen
            seen.add(g)
        per.append(k)
    return {"initial": per[0], "selected": int(sum(per[1:])), "per_batch": per,
            "labels": int(sum(map(len, batches)))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/datasets")
    ap.add_argument("--runs", default="results/cvc-lite")
    ap.add_argument("--out", default="results/video")
    ap.add_argument("--bits", default="24,40,56")
    ap.add_argument("--strategies", default="random,unc_ta_coreset@g0.5,uncertainty,ta_coreset")
    a = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rows = ingest_cvc(Path(a.data), Path(tmp))
    runs = Path(a.runs)
    pool = json.loads((runs / "split.json").read_text())["pool"]
    res = {"pool": len(pool), "runs": str(runs), "thresholds": {}}
    g, fl, rp = grouping(rows, F.DUP_BITS)  # for polypal-sim run --video-groups
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "cvc_groups.json").write_text(json.dumps(
        {"dup_bits": F.DUP_BITS, "groups": g, "flagged": sorted(fl), "representatives": sorted(rp)}))
    for bits in map(int, a.bits.split(",")):
        groups, flagged, reps = grouping(rows, bits)
        pool_groups = {groups[n] for n in pool}
        t = {"groups_in_pool": len(pool_groups), "flagged_in_pool": sum(n in flagged for n in pool),
             "recorded": {}, "random_drawn": {}}
        for strat in a.strategies.split(","):
            for f in sorted((runs / "runs").glob(f"{strat}-seed*.jsonl")):
                recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
                batches = [recs[0]["labeled"]] + [r["selected"] for r in recs if r["selected"]]
                t["recorded"].setdefault(strat, {})[f.stem.rsplit("-seed", 1)[1]] = count_dups(batches, groups)
        for f in sorted((runs / "runs").glob("random-seed*.jsonl")):
            seed = int(f.stem.rsplit("-seed", 1)[1])
            recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            init, budget, cycles = recs[0]["labeled"], len(recs[0]["selected"]), len(recs) - 1
            for arm in ("without_grouping", "with_grouping"):
                labeled, batches = list(init), [list(init)]
                for stage in range(cycles):
                    cand = [n for n in pool if n not in set(labeled)]
                    if arm == "with_grouping":
                        cand = dedupe_candidates(cand, groups, flagged, reps, labeled=labeled, max_tier=0) or cand
                    rng = np.random.default_rng(seed * 1000 + stage)
                    pick = [cand[i] for i in rng.choice(len(cand), size=min(budget, len(cand)), replace=False)]
                    batches.append(pick)
                    labeled += pick
                t["random_drawn"].setdefault(arm, {})[str(seed)] = count_dups(batches, groups)
        res["thresholds"][str(bits)] = t
    res["seconds"] = round(time.time() - t0, 1)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "dup_labels.json").write_text(json.dumps(res, indent=1))
    for bits, t in res["thresholds"].items():
        print(f"dup_bits {bits}: {t['groups_in_pool']} groups in the pool of {len(pool)}, "
              f"{t['flagged_in_pool']} flagged")
        for kind in ("recorded", "random_drawn"):
            for s, by_seed in t[kind].items():
                sel = [v["selected"] for v in by_seed.values()]
                ini = [v["initial"] for v in by_seed.values()]
                print(f"  {kind:12s} {s:28s} near-duplicate labels among the selected: {sel} "
                      f"(initial set: {ini}; of {next(iter(by_seed.values()))['labels']} labels)")
    print(f"{res['seconds']} s")


if __name__ == "__main__":
    main()
