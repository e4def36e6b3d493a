"""The full-pool ceiling: the learner trained on every pool frame, the top of every learning curve."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from polypal.data import FrameSet
from polypal.experiments.simulate import _bar, read_records, recipe_hash
from polypal.learner import Profile, evaluate, predict, train


def full_pool_ceiling(pool: FrameSet, val: FrameSet, test: FrameSet, profile: Profile, seed: int,
                      out_file: str | Path, device=None, progress: Callable[[str], None] | None = None) -> dict:
    """Train on every pool frame (the full-pool ceiling) with training seed ``seed*1000 + 999``.

    The profile's epochs decide the steps, without its cap (``max_steps``): the cap bounds each AL stage's
    time, and a capped full pool trains fewer epochs than the stages below it (cpu-lite v3 as first run,
    capped at 1500 steps: 30 epochs of CVC-ClinicDB's 398 pool frames, 17 of Kvasir-SEG's 704, against 40
    for every stage up to 240 labels), so it was no ceiling: 76.3 paper mIoU on CVC, below Random's 78.1 at
    240 labels. Today's cap (3000) would still cut Kvasir-SEG's full pool (3520 steps).
    The record keeps the runs' recipe fingerprint (``recipe``) and says ``uncapped``. Appends one record
    per seed to ``out_file``; a seed already there (same recipe, uncapped) is not redone.
    """
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    rh = recipe_hash(profile)
    for r in read_records(out_file):
        if r["seed"] == seed and r.get("recipe") == rh and r.get("uncapped"):
            return r
    profile = replace(profile, max_steps=None)
    if progress:
        progress(f"ceiling seed {seed}: training on the whole pool ({len(pool)} labels, "
                 f"{profile.steps_for(len(pool))} steps)")
    bar = _bar(progress, "ceiling train", profile.steps_for(len(pool)), "step")
    tr = train(profile, pool.images, pool.masks, val.images, val.masks, seed=seed * 1000 + 999, device=device,
               on_step=(lambda step, total, loss: bar.update(1)) if bar else None)
    if bar:
        bar.close()
    metrics = evaluate(predict(tr.model, test.images, scorers=()).probs, test.masks)
    metrics.pop("pooled")
    rec = {"kind": "ceiling", "seed": seed, "n_labeled": len(pool), "profile": profile.name, "recipe": rh,
           "uncapped": True, "test": metrics, "val": tr.best_val, "best_step": tr.best_step, "steps": tr.steps,
           "train_seconds": round(tr.seconds, 1), **({"retries": tr.retries} if tr.retries else {}),
           **({"fit_dice": round(tr.fit_dice, 4)} if tr.fit_dice is not None else {})}
    with open(out_file, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec
