"""Would averaging two trainings per stage cut the training noise? Measure it before building it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ensemble_noise.py train results/cvc-v3 random 0 1 \
        --train-seeds 1,11,21,31 --data ../shared/datasets/cvc-clinicdb --out build/ensemble-noise
    .venv/bin/python benchmarks/ensemble_noise.py analyse build/ensemble-noise --data ../shared/datasets/cvc-clinicdb

``train`` retrains one recorded stage's labeled set (read from the results folder, with its profile and
split, as ``replay_stage.py``) once per training seed and keeps each model's test-set probabilities
(float16, ``<run>-seed<S>-stage<K>-t<T>.npz``) with its exact metrics; a file already there is skipped,
so a stopped job resumes. The recorded training seed (seed*1000+stage) among the seeds is a replay of the
run and is checked against its record.

``analyse`` reads every file in the folder and, per labeled set, compares single trainings with the
two-model ensembles of disjoint pairs (mean of the two probability maps, thresholded at 0.5): the
training-only std of each (pooled over labeled sets), and the ensemble minus the mean of its two members
(paired). Issue 11's drop target needs the per-training noise about 30% lower than it is at small CVC
sizes (``results/calibration/drop-noise.md``); an independent pair would give 1/sqrt(2) = 0.71 of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import chi2
from scipy.stats import t as t_dist

from polypal.experiments.simulate import read_records
from polypal.learner import Profile, evaluate, predict, train
from replay_stage import profile_changes, split_sets  # benchmarks/ is on the path when this script runs


def _profile(folder: Path) -> Profile:
    return Profile(**json.loads((folder / "run.json").read_text())["profile"])


def cmd_train(a) -> int:
    torch.set_num_threads(1)
    folder, out = Path(a.folder), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = read_records(folder / "runs" / f"{a.run}-seed{a.seed}.jsonl")[a.stage]
    prof = _profile(folder)
    changes = profile_changes(prof, a.set) if a.set else {}
    if changes:
        prof = replace(prof, **changes)
        print(f"profile changed: {changes}", flush=True)
    pool, val, test = split_sets(folder, a.data, prof.size)
    lab = np.sort(pool.index_of(rec["labeled"]))
    own = a.seed * 1000 + a.stage
    for ts in (int(x) for x in a.train_seeds.split(",")):
        path = out / f"{a.run}-seed{a.seed}-stage{a.stage}-t{ts}{'-' + a.tag if a.tag else ''}.npz"
        if path.exists():
            print(f"  {path.name}: already there, skipped", flush=True)
            continue
        tr = train(prof, pool.images[lab], pool.masks[lab], val.images, val.masks, seed=ts)
        probs = predict(tr.model, test.images, scorers=()).probs
        m = evaluate(probs, test.masks)
        m.pop("pooled")
        note = ""
        if ts == own and not changes:
            same = all(abs(m[k] - rec["test"][k]) < 1e-9 for k in rec["test"])
            note = f"; the recorded training seed, replay {'matches' if same else 'DIFFERS FROM'} the record"
        meta = {"run": a.run, "seed": a.seed, "stage": a.stage, "train_seed": ts, "n_labeled": int(len(lab)),
                "steps": tr.steps, "retries": tr.retries, "test": m, "tag": a.tag, "changes": changes,
                "recorded_test": rec["test"]}
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, probs=probs.astype(np.float16), meta=json.dumps(meta))
        tmp.replace(path)
        print(f"  training seed {ts}: test mIoU {100 * m['paper_miou']:.2f} Dice {100 * m['polyp_dice']:.2f} "
              f"({tr.steps} steps, {tr.retries} retries){note}", flush=True)
    return 0


def _pooled_std(groups: list[np.ndarray]) -> tuple[float, int]:
    """Within-group std pooled over groups (each group: one labeled set), and its degrees of freedom."""
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    return (float(np.sqrt(ss / df)) if df else float("nan")), df


def cmd_analyse(a) -> int:
    files = sorted(f for f in Path(a.folder).glob("*-t*.npz") if not f.name.endswith(".tmp.npz"))
    if not files:
        print(f"no trainings in {a.folder}", file=sys.stderr)
        return 1
    sets, tagged = defaultdict(list), defaultdict(list)
    for f in files:
        z = np.load(f)
        meta = json.loads(str(z["meta"]))
        (tagged if meta.get("tag") else sets)[(meta["run"], meta["seed"], meta["stage"])].append(
            (meta, z["probs"].astype(np.float32)))
    res = Path(a.results)  # the test masks: one split file for every set of one results folder
    masks = split_sets(res, a.data, _profile(res).size)[2].masks
    keys = ("paper_miou", "polyp_dice")
    # per stage (one labeled-set size): single trainings and ensembles per set, ensemble gains
    single, ens, gain = (defaultdict(lambda: {k: [] for k in keys}) for _ in range(3))
    versus = defaultdict(list)  # a changed recipe (tagged files) against the recorded recipe, same labeled set
    for key, items in sorted(sets.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        run, seed, stage = key
        items.sort(key=lambda it: it[0]["train_seed"])
        # singles re-evaluated from the stored float16 maps, as the ensembles are (so the pairing is exact)
        s_eval = [evaluate(it[1], masks) for it in items]
        for it, e in zip(items, s_eval):
            it[0]["test16"] = e
        s_vals = {k: np.array([100 * e[k] for e in s_eval]) for k in keys}
        pairs = [(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        e_vals = {k: [] for k in keys}
        size = (stage, items[0][0]["n_labeled"])
        print(f"{run} seed {seed} stage {stage} ({items[0][0]['n_labeled']} labels), "
              f"recorded mIoU {100 * items[0][0]['recorded_test']['paper_miou']:.2f}")
        for it in items:
            m = it[0]
            print(f"  single t{m['train_seed']}: mIoU {100 * m['test16']['paper_miou']:.2f} "
                  f"Dice {100 * m['test16']['polyp_dice']:.2f} ({m['steps']} steps; float32 maps: mIoU "
                  f"{100 * m['test']['paper_miou']:.2f})")
        for p, q in pairs:
            e = evaluate((p[1] + q[1]) / 2, masks)
            for k in keys:
                v = 100 * e[k]
                e_vals[k].append(v)
                gain[size][k].append(v - 50 * (p[0]["test16"][k] + q[0]["test16"][k]))
            print(f"  ensemble t{p[0]['train_seed']}+t{q[0]['train_seed']}: mIoU {100 * e['paper_miou']:.2f} "
                  f"Dice {100 * e['polyp_dice']:.2f} (members' mean mIoU "
                  f"{50 * (p[0]['test16']['paper_miou'] + q[0]['test16']['paper_miou']):.2f})")
        for k in keys:
            single[size][k].append(s_vals[k])
            ens[size][k].append(np.array(e_vals[k]))
        for meta, probs in sorted(tagged.get(key, []), key=lambda it: (it[0]["tag"], it[0]["train_seed"])):
            t = evaluate(probs, masks)
            twin = next((e for it, e in zip(items, s_eval) if it[0]["train_seed"] == meta["train_seed"]), None)
            row = {k: 100 * t[k] for k in keys}
            # its twin: the recorded recipe's training with the same training seed on the same set
            cmp = {"vs its twin": None if twin is None else {k: row[k] - 100 * twin[k] for k in keys},
                   "vs the ensembles' mean": {k: row[k] - float(np.mean(e_vals[k])) for k in keys} if pairs else None}
            cmp["value"], cmp["set"] = row, (run, seed)
            versus[(stage, meta["n_labeled"], meta["tag"])].append(cmp)
            print(f"  {meta['tag']} ({meta['changes']}) t{meta['train_seed']}: mIoU {row['paper_miou']:.2f} Dice "
                  f"{row['polyp_dice']:.2f} ({meta['steps']} steps)")
    for size in sorted(single):
        print(f"\nstage {size[0]}, {size[1]} labels, {len(single[size]['paper_miou'])} labeled sets")
        for k in keys:
            _summary(k, single[size][k], ens[size][k], np.array(gain[size][k]))
    _steps(sets, single, ens)
    for (stage, n, tag), rows in sorted(versus.items()):
        print(f"\n{tag} at stage {stage}, {n} labels, {len(rows)} trainings: minus the recorded recipe, paired by set")
        for k in keys:
            by_set = defaultdict(list)
            for r in rows:
                by_set[r["set"]].append(r["value"][k])
            sd, df = _pooled_std([np.array(v) for v in by_set.values()])
            if df:
                print(f"  {k}: training-only std {sd:.2f} ({df} df, {_ci(sd, df)})")
        for what in ("vs its twin", "vs the ensembles' mean"):
            for k in keys:
                if what == "vs its twin":  # paired training by training: the set cancels
                    d = np.array([r[what][k] for r in rows if r[what] is not None])
                else:  # one value per labeled set: its trainings' mean minus its ensembles' mean
                    per_set = defaultdict(list)
                    for r in rows:
                        if r[what] is not None:
                            per_set[r["set"]].append(r[what][k])
                    d = np.array([np.mean(v) for v in per_set.values()])
                if len(d) > 1:
                    tq = t_dist.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
                    print(f"  {what} {k} ({len(d)} {'pairs' if what == 'vs its twin' else 'labeled sets'}): {d.mean():+.2f} [t interval {d.mean() - tq:+.2f}, {d.mean() + tq:+.2f}], "
                          f"{int((d > 0).sum())}/{len(d)} ahead")
    return 0


def _steps(sets: dict, single: dict, ens: dict) -> None:
    """The step between two measured stages of the same runs (issue 11's drop target is about steps): how much
    of its spread over the labeled sets is training noise, and what a two-model ensemble would leave of it."""
    sizes = sorted(single)
    for lo, hi in zip(sizes, sizes[1:]):
        runs = sorted({(r, s) for (r, s, st) in sets if st == lo[0]} & {(r, s) for (r, s, st) in sets if st == hi[0]})
        if len(runs) < 2:
            continue
        k = "paper_miou"
        # each set's mean over its trainings, in the order single[...] was filled (sorted by run, then seed)
        order = {size: [(r, s) for (r, s, st) in sorted(sets, key=lambda t: (t[2], t[0], t[1])) if st == size[0]]
                 for size in (lo, hi)}
        m = {size: {rs: g.mean() for rs, g in zip(order[size], single[size][k])} for size in (lo, hi)}
        n = {size: np.mean([len(g) for g in single[size][k]]) for size in (lo, hi)}
        d = np.array([m[hi][rs] - m[lo][rs] for rs in runs])
        sd1 = {size: _pooled_std(single[size][k])[0] for size in (lo, hi)}
        sd2 = {size: _pooled_std(ens[size][k])[0] for size in (lo, hi)}
        var_change = max(0.0, float(d.var(ddof=1)) - sum(sd1[z] ** 2 / n[z] for z in (lo, hi)))
        tr1, tr2 = (sum(sd[z] ** 2 for z in (lo, hi)) for sd in (sd1, sd2))
        print(f"\nstep {lo[1]} -> {hi[1]} labels over {len(runs)} runs ({k}): mean {d.mean():+.2f}; the labeled "
              f"set's change spreads it by {np.sqrt(var_change):.2f} (std over runs of the step between set means, less "
              f"the training noise in them); training noise by {np.sqrt(tr1):.2f} with one training per stage, "
              f"{np.sqrt(tr2):.2f} with two-model ensembles; so a step spread of about {np.sqrt(var_change + tr1):.2f} "
              f"and {np.sqrt(var_change + tr2):.2f}, training noise {100 * tr1 / (var_change + tr1):.0f}% of it "
              f"with one training")


def _ci(sd: float, df: int) -> str:
    """95% chi-square interval of a std with df degrees of freedom."""
    if not df or not np.isfinite(sd):
        return "no interval"
    lo, hi = (sd * np.sqrt(df / chi2.ppf(q, df)) for q in (0.975, 0.025))
    return f"95% {lo:.2f}-{hi:.2f}"


def _summary(k: str, single: list, ens: list, g: np.ndarray) -> None:
    sd1, df1 = _pooled_std(single)
    sd2, df2 = _pooled_std(ens)
    means = np.array([x.mean() for x in single])
    n = np.mean([len(x) for x in single])
    # one-way random effects: the labeled set's own share of the spread between seeds
    var_set = max(0.0, float(means.var(ddof=1)) - sd1 ** 2 / n) if len(means) > 1 else float("nan")
    se = g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else float("nan")
    print(f"{k}: training-only std, single {sd1:.2f} ({df1} df, {_ci(sd1, df1)}); two-model ensemble "
          f"{sd2:.2f} ({df2} df, {_ci(sd2, df2)}); "
          f"ratio {sd2 / sd1:.2f} (independent pairs: 0.71)")
    print(f"  ensemble minus its members' mean: {g.mean():+.2f} (sd {g.std(ddof=1):.2f}, "
          f"t {g.mean() / se:.1f}, {int((g > 0).sum())}/{len(g)} ahead)")
    print(f"  the labeled set's own spread (std of the {len(means)} sets' means, less the training noise in "
          f"them): {np.sqrt(var_set):.2f}; so a seed std of about {np.sqrt(var_set + sd1 ** 2):.2f} with one "
          f"training per stage, {np.sqrt(var_set + sd2 ** 2):.2f} with a two-model ensemble")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a recorded stage's labeled set once per training seed")
    t.add_argument("folder")
    t.add_argument("run")
    t.add_argument("seed", type=int)
    t.add_argument("stage", type=int)
    t.add_argument("--train-seeds", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a field of the run's profile (as replay_stage.py); needs --tag")
    t.add_argument("--tag", default="", help="name the files of a changed recipe (e.g. s2400); analyse sets "
                   "them against the recipe's own single trainings and ensembles of the same labeled set")
    s = sub.add_parser("analyse", help="single trainings against two-model ensembles")
    s.add_argument("folder")
    s.add_argument("--results", required=True, help="the results folder the stages came from (split, profile)")
    s.add_argument("--data", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "train" and bool(a.set) != bool(a.tag):
        ap.error("--set and --tag go together (a changed recipe's files must not mix with the recorded recipe's)")
    return cmd_train(a) if a.cmd == "train" else cmd_analyse(a)


if __name__ == "__main__":
    sys.exit(main())
