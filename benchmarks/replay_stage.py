"""Replay one recorded stage's training with every selection rule kept, to see why a run collapsed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/replay_stage.py results/cvc-v2 \
        "unc_ta_coreset@g0.5" 3 2 --data ../shared/datasets/cvc-clinicdb [--collapse-retries 1]

Reads the stage's labeled set, the split and the profile from the results folder, trains exactly as
``polypal-sim`` did (training seed seed*1000+stage), checks that the chosen weights give the recorded
test metrics (same numbers = a faithful replay), and prints, for every selection rule (last, EMA,
best-val, EMA best-val), the test and validation polyp Dice, the Dice on the stage's own labeled frames
(how well it fits what it was trained on) and the share of test pixels predicted polyp.
With ``--train-seeds 1,2,3,4``: retrains the same labeled set with other training seeds instead, to separate
training noise from the spread that comes from which frames were labeled; add ``--set min_steps=1200`` (any
profile field, repeatable) to measure a candidate recipe's training noise on the same labeled set.
With ``--collapse-retries N [--fit-floor D]``: then trains once more with the retry guard on (a floor on the
polyp Dice of the model on its own labeled frames too) and prints where that model lands against the run's
neighbouring stages; ``--guard-only`` skips the replay of every selection rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from polypal.data import load_folder
from polypal.experiments.simulate import read_records
from polypal.experiments.cli import _fit_floor
from polypal.learner import Profile, evaluate, labeled_fit, predict, train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("run", help="run label, e.g. unc_ta_coreset@g0.5")
    ap.add_argument("seed", type=int)
    ap.add_argument("stage", type=int)
    ap.add_argument("--data", required=True)
    ap.add_argument("--collapse-retries", type=int, default=0,
                    help="train once more with the collapse guard on (at most N retries) and print where that "
                         "model lands against the run's neighbouring stages")
    ap.add_argument("--fit-floor", type=_fit_floor, default=None,
                    help="with --collapse-retries: the guard also retries a model whose polyp Dice on its own labeled "
                         "frames is under this (profile.fit_floor, in [0, 1); default: the folder's recipe's)")
    ap.add_argument("--guard-only", action="store_true",
                    help="with --collapse-retries: skip the replay of every selection rule, train only with the guard")
    ap.add_argument("--train-seeds", default="",
                    help="instead: retrain the stage's labeled set with these training seeds (e.g. 1,2,3,4,5) and "
                         "print the spread of the test metrics: training noise alone, the labeled set held fixed")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="with --train-seeds: change a field of the run's profile (e.g. min_steps=1200, ema=0.995, "
                         "batch_size=16), to measure a candidate recipe's training noise on the same labeled set")
    a = ap.parse_args(argv)
    if (a.guard_only or a.fit_floor is not None) and not a.collapse_retries:
        ap.error("--guard-only and --fit-floor need --collapse-retries")
    torch.set_num_threads(1)
    folder = Path(a.folder)
    rec = read_records(folder / "runs" / f"{a.run}-seed{a.seed}.jsonl")[a.stage]
    prof = Profile(**json.loads((folder / "run.json").read_text())["profile"])
    if a.set:
        if not a.train_seeds:
            ap.error("--set needs --train-seeds (a replay of the recorded training uses the recorded profile)")
        try:
            changes = profile_changes(prof, a.set)
        except ValueError as e:
            ap.error(str(e))
        prof = replace(prof, **changes)
        print(f"profile changed: {changes}", flush=True)
    pool, val, test = split_sets(folder, a.data, prof.size)
    lab = np.sort(pool.index_of(rec["labeled"]))
    if a.train_seeds:
        return training_noise(a, prof, rec, pool, val, test, lab)
    if not a.guard_only:
        replay_rules(a, prof, rec, pool, val, test, lab)
    if a.collapse_retries:
        floor = prof.fit_floor if a.fit_floor is None else a.fit_floor
        guarded = train(replace(prof, collapse_retries=a.collapse_retries, fit_floor=floor), pool.images[lab],
                        pool.masks[lab], val.images, val.masks, seed=a.seed * 1000 + a.stage)
        g = evaluate(predict(guarded.model, test.images, scorers=()).probs, test.masks)
        fit = "" if guarded.fit_dice is None else f", labeled-set Dice {guarded.fit_dice:.4f}"
        if a.guard_only and guarded.retries == 0:  # its only try is the recorded training
            same = all(abs(g[k] - rec["test"][k]) < 1e-9 for k in rec["test"])
            fit += f"; no retry, so this is the recorded training, which it {'matches' if same else 'DIFFERS FROM'}"
        print(f"  with collapse_retries={a.collapse_retries}" + (f", fit_floor={floor:g}" if floor else "")
              + f": {guarded.retries} retr{'y' if guarded.retries == 1 else 'ies'}"
              f", test Dice {g['polyp_dice']:.4f} mIoU {g['paper_miou']:.4f}{fit}")
        recs = read_records(folder / "runs" / f"{a.run}-seed{a.seed}.jsonl")
        for r in recs[max(0, a.stage - 1):a.stage + 2]:
            print(f"  recorded stage {r['stage']} ({r['n_labeled']} labels): test Dice {r['test']['polyp_dice']:.4f} "
                  f"mIoU {r['test']['paper_miou']:.4f}")
    return 0


def split_sets(folder: Path, data: str, size: int):
    """The pool, validation and test frames of a results folder's split (its ``split.json``), read from
    ``data`` at ``size`` pixels."""
    split = json.loads((Path(folder) / "split.json").read_text())
    fs = load_folder(data, size)
    return tuple(fs.subset(fs.index_of(split[k])) for k in ("pool", "val", "test"))


def profile_changes(prof: Profile, items: list[str]) -> dict:
    """``FIELD=VALUE`` strings as changes to a profile's fields (values as JSON, else a bare word), typed as
    the field is; ``augment=flips`` means the v2 recipe's own flips, as polypal-sim's ``--augment flips``."""
    changes = {}
    for item in items:
        key, _, val = item.partition("=")
        if key not in prof.__dataclass_fields__ or not val:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of the profile's fields")
        try:
            v = json.loads(val)
        except json.JSONDecodeError:  # a bare word: a string field such as augment=endo
            v = val
        cur = getattr(prof, key)
        changes[key] = type(cur)(v) if cur is not None and not isinstance(cur, str) else v
        if key == "augment" and v == "flips":
            changes.update(augment="", flips=True)
    return changes


def replay_rules(a, prof, rec, pool, val, test, lab) -> None:
    """Replay the recorded training; print every selection rule's model on test, validation and its own frames."""
    tr = train(prof, pool.images[lab], pool.masks[lab], val.images, val.masks, seed=a.seed * 1000 + a.stage,
               keep_variants=True)
    chosen = evaluate(predict(tr.model, test.images, scorers=()).probs, test.masks)
    same = all(abs(chosen[k] - rec["test"][k]) < 1e-9 for k in rec["test"])
    print(f"{a.run} seed {a.seed} stage {a.stage}: {len(lab)} labels, {tr.steps} steps, rule {prof.select}; "
          f"replay {'matches' if same else 'DIFFERS FROM'} the record (test polyp Dice {chosen['polyp_dice']:.4f} "
          f"vs {rec['test']['polyp_dice']:.4f})")
    if not same:
        from polypal.experiments.simulate import software_versions

        now = software_versions()
        print(f"  software now {now}; the record's {rec.get('env', 'not recorded (before 2026-12-05)')}"
              + ("" if rec.get("env") == now else ": a different environment can explain the difference"))
    for rule, m in tr.variants.items():
        p = predict(m, test.images, scorers=()).probs
        t = evaluate(p, test.masks)
        v = evaluate(predict(m, val.images, scorers=()).probs, val.masks)
        own = labeled_fit(m, pool.images[lab], pool.masks[lab])  # its own labeled frames
        print(f"  {rule:13s} test Dice {t['polyp_dice']:.4f} mIoU {t['paper_miou']:.4f}  val Dice {v['polyp_dice']:.4f}"
              f"  labeled-set Dice {own if own is None else format(own, '.4f')}"
              f"  test pixels predicted polyp {100 * (p > 0.5).mean():.2f}% (true {100 * test.masks.mean():.2f}%)")
    last = tr.history[-5:]
    print("  last validations:", [(h["step"], round(h.get("polyp_dice", 0), 3), round(h.get("ema_polyp_dice", 0), 3),
                                   round(h["loss"], 3)) for h in last], flush=True)


def training_noise(a, prof, rec, pool, val, test, lab) -> int:
    """Train the recorded labeled set once per training seed; print each result and the std over seeds,
    beside the recorded run's own result (its training seed is seed*1000+stage)."""
    # with --set the recipe differs from the recorded run's: its result is printed but not pooled
    rows = {} if a.set else {"recorded": rec["test"]}
    own = a.seed * 1000 + a.stage
    for ts in (int(x) for x in a.train_seeds.split(",")):
        if ts == own and not a.set:  # the recorded training itself: already in rows
            print(f"  training seed {ts}: the recorded run's own (seed*1000+stage), not trained twice", flush=True)
            continue
        tr = train(prof, pool.images[lab], pool.masks[lab], val.images, val.masks, seed=ts)
        rows[ts] = evaluate(predict(tr.model, test.images, scorers=()).probs, test.masks)
        print(f"  training seed {ts}: test mIoU {100 * rows[ts]['paper_miou']:.2f} Dice {100 * rows[ts]['polyp_dice']:.2f}"
              f" ({tr.steps} steps)", flush=True)
    print(f"{a.run} seed {a.seed} stage {a.stage} ({len(lab)} labels), recorded: mIoU "
          f"{100 * rec['test']['paper_miou']:.2f} Dice {100 * rec['test']['polyp_dice']:.2f}")
    for k in ("paper_miou", "polyp_dice"):
        v = np.array([100 * r[k] for r in rows.values()])
        if len(v) < 2:  # one training (e.g. the recorded seed with --set: a paired comparison, no spread)
            print(f"  {k}: {v[0]:.2f}, recorded {100 * rec['test'][k]:.2f}, difference {v[0] - 100 * rec['test'][k]:+.2f}")
            continue
        print(f"  {k}: mean {v.mean():.2f}, std over {len(v)} trainings{'' if a.set else ' (recorded included)'} "
              f"{np.std(v, ddof=1):.2f}, "
              f"range {v.min():.2f}-{v.max():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
