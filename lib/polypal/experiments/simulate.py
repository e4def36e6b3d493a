"""Offline active-learning simulation: the paper's protocol on a labeled dataset.

The oracle is the dataset's own masks. At each stage the learner is trained
from scratch on the labeled set (the profile's model rule: the EMA of the weights), evaluated on the test
set, and, unless it is the last stage, the strategy picks the next ``budget``
frames using that model. Each finished stage is appended at once to a JSONL
file, so an interrupted run resumes where it stopped and reproduces the same
picks (every random choice is seeded from (seed, stage)).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from polypal.data import FrameSet
from polypal.errors import DataError
from polypal.learner import Profile, evaluate, predict, train
from polypal.sampler import BvSB, PoolInfo, k_center_greedy, pca_features, resolve, select, top_uncertain

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """A strategy as run in an experiment: a registered strategy, its BvSB aggregation and gamma."""

    name: str
    aggregation: str = "mean"
    gamma: float = 0.5

    @property
    def label(self) -> str:
        """The run's name in file names and tables, e.g. ``unc_ta_coreset@g0.5+topk``."""
        strategy = resolve(self.name)
        s = self.name
        if strategy.uses_gamma:
            s += f"@g{self.gamma:g}"
        if self.aggregation != "mean" and "scores" in strategy.needs:
            s += f"+{self.aggregation}"
        return s

    @classmethod
    def parse(cls, text: str, default_gamma: float = 0.5) -> "RunSpec":
        """'uncertainty', 'uncertainty:topk', 'unc_ta_coreset:mean:0.25', 'vaal'. Checked whole here (name,
        aggregation, gamma in [0, 1]), so a bad one is refused before anything is written or trained."""
        from polypal.sampler import AGGREGATIONS

        parts = text.strip().split(":")
        if len(parts) > 3 or not parts[0]:
            raise ValueError(f"{text!r}: write a strategy as NAME[:aggregation[:gamma]], e.g. unc_ta_coreset:mean:0.25")
        try:
            resolve(parts[0])  # a registered name or alias
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
        agg = parts[1] if len(parts) > 1 and parts[1] else "mean"
        if agg not in AGGREGATIONS:
            raise ValueError(f"{text!r}: unknown aggregation {agg!r}; choose from {', '.join(AGGREGATIONS)}")
        try:
            gamma = float(parts[2]) if len(parts) > 2 and parts[2] else float(default_gamma)
        except ValueError:
            raise ValueError(f"{text!r}: gamma {parts[2]!r} is not a number") from None
        if not 0 <= gamma <= 1:  # nan too
            raise ValueError(f"{text!r}: gamma must be in [0, 1], got {gamma:g}")
        # under its registered name: an alias (bvsb_ta_coreset) made other result files and report rows for
        # the same strategy
        return cls(resolve(parts[0]).name, agg, gamma)


SEEDINGS = ("streams", "shared")
_INITIAL_STREAM = 0x1A17  # the initial set's own stream: SeedSequence([seed, _INITIAL_STREAM])


def initial_labeled(n_pool: int, n_initial: int, seed: int, seeding: str = "streams") -> np.ndarray:
    """The same initial labeled set for every strategy at a given seed.

    ``seeding``: "streams" (new folders) draws it from its own stream, independent of the queries' and
    trainings' seeds (``seed * 1000 + stage``). "shared" is how folders written up to the v3 recipe drew it:
    ``default_rng(seed)``, the very stream of seed 0's first query, so that seed's first Random batch took
    the frames at the same relative pool positions as the initial set (next to them in a video's frame order).
    Kept so that those folders resume and reproduce as they were."""
    if seeding not in SEEDINGS:
        raise ValueError(f"seeding must be one of {SEEDINGS}, not {seeding!r}")
    rng = np.random.default_rng(seed if seeding == "shared" else np.random.SeedSequence([seed, _INITIAL_STREAM]))
    return np.sort(rng.choice(n_pool, size=min(n_initial, n_pool), replace=False))


def read_records(path, stages: bool = False) -> list[dict]:
    """The records of a JSONL file. A last line cut by a crash is ignored (that stage reruns); a damaged line
    with records after it is an error naming the line (resuming would otherwise drop, and redo, those).
    ``stages``: each record must be a stage record (``_well_formed``), else an error naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for k, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            later = sum(1 for x in lines[k + 1:] if x.strip())
            if later:
                raise DataError(path, f"line {k + 1} is not valid JSON and {later} record(s) follow it: fix or "
                                      f"remove that line") from None
            break  # a line cut by a crash
        if stages and not _well_formed(rec):
            raise DataError(path, f"line {k + 1} is not a stage record (needs strategy, seed, stage, n_labeled "
                                  f"and numeric test metrics)")
        out.append(rec)
    return out


def _well_formed(rec) -> bool:
    def num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(rec, dict) or not all(num(rec.get(k)) for k in ("seed", "n_labeled")):
        return False
    test = rec.get("test")
    if not isinstance(test, dict) or not all(num(v) for v in test.values() if not isinstance(v, (dict, list))):
        return False
    return rec.get("kind") == "ceiling" or (isinstance(rec.get("strategy"), str) and num(rec.get("stage")))


def run(
    pool: FrameSet,
    val: FrameSet,
    test: FrameSet,
    spec: RunSpec,
    profile: Profile,
    seed: int,
    n_initial: int,
    budget: int,
    cycles: int,
    out_file: str | Path,
    device=None,
    pca_feats: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
    extras_dir: str | Path | None = None,
    video_groups: dict | None = None,
    video_of: dict | None = None,
    video_cap: int | str = "off",
    seeding: str = "streams",
) -> list[dict]:
    """Run (or resume) one strategy at one seed; returns all stage records.

    ``seeding``: how the initial labeled set is drawn (``initial_labeled``); one value per results folder.

    Stage k has n_initial + k*budget labels (k = 0..cycles). ``video_groups``
    ({"groups", "flagged", "representatives"} as ``polypal.video`` records
    them, keyed by frame name): each query picks only among one clean
    representative per group of near-duplicates with no label yet. ``video_of`` (frame name -> video)
    with ``video_cap`` ('auto', an int; default 'off'): each query takes at most that many frames of
    one video (``polypal.video.capped_select``).
    """
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    records = read_records(out_file, stages=True)
    if out_file.exists() and out_file.read_text() != "".join(json.dumps(r) + "\n" for r in records):
        # drop a line cut by a crash, so that new stages start on a clean line
        tmp = out_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, out_file)
    rh = recipe_hash(profile)
    if records and records[0].get("recipe", rh) != rh:
        raise ValueError(f"{out_file} was written with another training recipe ({records[0].get('recipe')}, "
                         f"now {rh}): use a new output folder")
    redo = bool(records) and not records[-1]["selected"] and records[-1]["stage"] < cycles
    if redo:
        # the run ended at an earlier protocol's last stage, which queried nothing: extending it redoes that stage
        # (same training seed and labeled set) so that its model picks the next batch; the old record is
        # replaced only once the new one is complete (a failed redo leaves the file as it was)
        records.pop()
    if records:
        last = records[-1]
        labeled = np.sort(pool.index_of(last["labeled"] + last["selected"]))
        start = last["stage"] + 1
    else:
        labeled = initial_labeled(len(pool), n_initial, seed, seeding)
        start = 0
    for stage in range(start, cycles + 1):
        t0 = time.perf_counter()
        if progress:
            progress(f"{spec.label} seed {seed} stage {stage}: training on {len(labeled)} labels")
        bar = _bar(progress, f"stage {stage} train", profile.steps_for(len(labeled)), "step")
        tr = train(profile, pool.images[labeled], pool.masks[labeled], val.images, val.masks,
                   seed=seed * 1000 + stage, device=device,
                   on_step=(lambda step, total, loss: bar.update(1)) if bar else None)
        if bar:
            bar.close()
        test_pred = predict(tr.model, test.images, scorers=())
        metrics = evaluate(test_pred.probs, test.masks)
        metrics.pop("pooled")
        rec = {
            "strategy": spec.label, "base": spec.name, "aggregation": spec.aggregation, "gamma": spec.gamma,
            "seed": seed, "stage": stage, "n_labeled": int(len(labeled)), "profile": profile.name, "recipe": rh,
            "test": metrics, "val": tr.best_val, "best_step": tr.best_step, "steps": tr.steps,
            "train_seconds": round(tr.seconds, 1), "labeled": [pool.names[i] for i in labeled],
            **({"seeding": seeding} if seeding != "shared" else {}),
            **({"retries": tr.retries} if tr.retries else {}),
            **({"fit_dice": round(tr.fit_dice, 4)} if tr.fit_dice is not None else {}),
            "env": software_versions(),
            "selected": [], "picked_by": [], "notes": [],
        }
        if stage < cycles:
            bar = _bar(progress, f"stage {stage} score pool", len(pool), "img")
            sel, extra = _query(tr.model, pool, labeled, spec, budget, seed * 1000 + stage, pca_feats,
                                profile.vaal_steps, bar.update if bar else None, video_groups,
                                video_of, video_cap)
            if bar:
                bar.close()
            rec.update(extra)
            rec["selected"] = [pool.names[i] for i in sel.indices]
            rec["picked_by"] = sel.picked_by
            rec["notes"] = sel.notes
            if extras_dir is not None and stage == 2:
                _save_latents(Path(extras_dir), spec, seed, pool, labeled, sel, tr.model)
            labeled = np.sort(np.concatenate([labeled, sel.indices]))
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        if redo:
            tmp = out_file.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(tmp, out_file)
            redo = False
        else:
            with open(out_file, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
        if progress:
            progress(f"{spec.label} seed {seed} stage {stage}: paper_miou {metrics['paper_miou']:.4f} "
                     f"polyp_dice {metrics['polyp_dice']:.4f} ({rec['seconds']} s)")
    return records


def software_versions() -> dict:
    """The packages that decide a training's numbers. The recipe hash does not cover them: the same
    recipe, seed and labeled set trained differently after the venv was rebuilt (results/cvc-v2:
    Random seed 0 stage 0, test Dice 59.1 recorded on 2026-11-28, 62.9 replayed on 2026-12-05)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}  # with its build (+cpu, +cu130)
    for name in ("monai", "numpy", "pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def recipe_hash(profile: Profile) -> str:
    """A short fingerprint of every profile field: records from different recipes never mix."""
    import hashlib

    return hashlib.sha1(json.dumps(profile.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def _bar(progress, desc: str, total: int, unit: str):
    """A tqdm bar when the caller shows progress (the CLI), else None. Not when stderr is a file (``nohup ...
    > log``): a nested bar there leaves a cursor-up escape and a redrawn line per update; the stage lines
    (``progress``) still say where a run is."""
    if progress is None:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not sys.stderr.isatty())


def _query(model, pool: FrameSet, labeled, spec: RunSpec, budget: int, seed: int, pca_feats,
           vaal_steps: int = 300, on_batch=None, video_groups: dict | None = None, video_of: dict | None = None,
           video_cap: int | str = "off"):
    extra = {}
    strategy = resolve(spec.name)
    scorer = BvSB(spec.aggregation)
    pred = predict(model, pool.images, scorers=(scorer,), keep_probs=False, progress=on_batch)
    scores = pred.scores[scorer.name]
    info = PoolInfo(n=len(pool), scores=scores, latents=pred.latents, image_features=pca_feats,
                    options={"vaal_steps": vaal_steps})
    if "image_features" in strategy.needs and pca_feats is None:
        info.image_features = pca_features(pool.images, seed=seed)
    if "images" in strategy.needs:
        info.images = pool.images
    if video_groups:  # pick in the sub-universe of labeled frames + one representative per fresh group
        from polypal.video.select import grouped_candidates

        sub = np.union1d(labeled, grouped_candidates(pool.names, labeled, **video_groups, need=budget)).astype(np.int64)
        part = PoolInfo(n=len(sub), scores=scores[sub], latents=pred.latents[sub], options=info.options,
                        image_features=None if info.image_features is None else info.image_features[sub],
                        images=None if info.images is None else info.images[sub])
        sel = _select(spec, part, np.searchsorted(sub, labeled), budget, seed, [pool.names[i] for i in sub],
                      video_of, video_cap)
        sel.indices = sub[sel.indices]
        extra["grouped_candidates"] = int(len(sub) - len(labeled))
    else:
        sel = _select(spec, info, labeled, budget, seed, pool.names, video_of, video_cap)
    # Fig 4: how many frames would both pure TA-Coreset and pure Uncertainty pick?
    mask = np.ones(len(pool), dtype=bool)
    mask[labeled] = False
    unc = top_uncertain(scores, np.flatnonzero(mask), budget)
    ta = k_center_greedy(pred.latents, labeled, budget, seed=seed)
    extra["overlap_ta_unc"] = int(len(np.intersect1d(unc, ta)))
    return sel, extra


def _select(spec: RunSpec, info: PoolInfo, labeled, budget: int, seed: int, names, video_of, video_cap):
    """The strategy's selection; with video info and a cap other than 'off', spread across videos."""
    if video_of and str(video_cap).lower() != "off":
        from polypal.video.select import capped_select

        return capped_select(spec.name, info, labeled, budget, [video_of.get(n) for n in names], cap=video_cap,
                             seed=seed, gamma=spec.gamma)
    return select(spec.name, info, labeled, budget, seed=seed, gamma=spec.gamma)


def _save_latents(folder: Path, spec, seed, pool, labeled, sel, model):
    folder.mkdir(parents=True, exist_ok=True)
    pred = predict(model, pool.images, scorers=(), keep_probs=False)
    np.savez_compressed(folder / f"latents-{spec.label}-seed{seed}-stage2.npz",
                        latents=pred.latents.astype(np.float16), labeled=labeled, selected=sel.indices,
                        picked_by=np.array(sel.picked_by), names=np.array(pool.names))
