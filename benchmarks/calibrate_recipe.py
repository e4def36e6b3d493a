"""Calibrate the training recipe: one config, several seeds, one labeled-set size, every selection rule.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibrate_recipe.py --dataset cvc \
        --data ../shared/datasets/cvc-clinicdb --n 80 --seeds 0,1,2,3 --config old \
        --out results/calibration/raw/cvc-n80.jsonl

The labeled set at seed k is the AL protocol's initial draw of n frames from the
pool (``polypal.experiments.simulate.initial_labeled``: the same as Random's labeled set of
that size), on the same split as ``polypal-sim run`` (split seed 0, CVC by
video sequence, Kvasir tested on the sessile frames). Training seed k*1000.
Every selection rule the config's training supports (best-val, last, EMA,
EMA best-val) is evaluated on the test set from the same training run, so
they are compared on identical training noise. One JSON line per (config, seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

from polypal.experiments.cli import _make_split
from polypal.data import load_folder
from polypal.learner import evaluate, get_profile, predict, train
from polypal.experiments.simulate import initial_labeled

# every config is cpu-lite with these fields overridden (the profile as it was before calibration is "old")
OLD = dict(epochs=40, min_steps=600, max_steps=600, schedule="constant", warmup=0.0, min_lr=0.0, augment="",
           flips=True, ema=0.0, select="best_val", lr=1e-3, batch_size=8, val_every=100, collapse_retries=0)
CONFIGS = {
    "old": {},  # the committed recipe: constant lr 1e-3, flips, 600 steps, best-val
    "cos": dict(schedule="cosine", warmup=0.05, min_lr=0.02, ema=0.99),
    "cos-endo": dict(schedule="cosine", warmup=0.05, min_lr=0.02, ema=0.99, augment="endo"),
    "cos-endo-1000": dict(schedule="cosine", warmup=0.05, min_lr=0.02, ema=0.99, augment="endo",
                          min_steps=1000, max_steps=1000),
    "cos-endo-lr3e-3": dict(schedule="cosine", warmup=0.05, min_lr=0.02, ema=0.99, augment="endo", lr=3e-3),
    "cos-endo-b16": dict(schedule="cosine", warmup=0.05, min_lr=0.02, ema=0.99, augment="endo", batch_size=16),
    "endo": dict(ema=0.99, augment="endo"),
    "cos-rot": dict(schedule="cosine", warmup=0.05, min_lr=0.02, ema=0.99, augment="rot"),
    "cos-1000": dict(schedule="cosine", warmup=0.05, min_lr=0.02, ema=0.99, min_steps=1000, max_steps=1000),
    "cos-endo-1500": dict(schedule="cosine", warmup=0.05, min_lr=0.02, ema=0.99, augment="endo",
                          min_steps=1500, max_steps=1500),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["kvasir", "cvc"], required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, required=True, help="labeled frames")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--config", required=True, help="a name from CONFIGS, optionally +key=value,key=value")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    name, _, extra = args.config.partition("+")
    over = {**OLD, **CONFIGS[name]}
    for kv in filter(None, extra.split(",")):
        k, v = kv.split("=")
        over[k] = type(OLD[k])(v) if not isinstance(OLD[k], bool) else v == "True"
    profile = get_profile("cpu-lite", **over)
    fs = load_folder(args.data, profile.size, cache_dir=os.path.expanduser("~/.cache/polypal"))
    split = _make_split(Namespace(dataset=args.dataset, splits=str(Path(args.data).parent / "splits"), n_val=100,
                                  n_test=112, split_seed=0, cvc_split="sequence"), fs.names)
    pool, val, test = (fs.subset(fs.index_of(split[k])) for k in ("pool", "val", "test"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        lab = initial_labeled(len(pool), args.n, seed, "shared")  # as the v2/v3 folders drew them
        t0 = time.perf_counter()
        tr = train(profile, pool.images[lab], pool.masks[lab], val.images, val.masks, seed=seed * 1000,
                   device="cpu", keep_variants=True)
        rec = {"config": args.config, "dataset": args.dataset, "n": args.n, "seed": seed,
               "steps": tr.steps, "train_seconds": round(tr.seconds, 1), "overrides": over, "test": {}}
        for rule, m in tr.variants.items():
            met = evaluate(predict(m, test.images, scorers=()).probs, test.masks)
            met.pop("pooled")
            rec["test"][rule] = {k: round(float(v), 4) for k, v in met.items()}
        rec["history"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()
                           if k in ("step", "lr", "polyp_dice", "ema_polyp_dice", "paper_miou", "ema_paper_miou")}
                          for h in tr.history]
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(args.config, args.dataset, args.n, seed, rec["train_seconds"], "s",
              {r: round(100 * v["paper_miou"], 2) for r, v in rec["test"].items()}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
