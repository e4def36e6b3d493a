"""Reading a results folder: the stage records per strategy and seed, their order, the ceiling.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from polypal.sampler import REGISTRY
from polypal.experiments.simulate import read_records


PAPER = {  # paper_miou (%) from the paper's Table 2
    "kvasir": {"stages": [200, 300, 400, 500, 600], "rows": {
        "random": [68.14, 73.67, 77.48, 81.63, 85.61], "vaal": [68.38, 73.58, 78.41, 81.82, 85.59],
        "pca_coreset": [64.71, 70.20, 75.43, 78.48, 81.96], "ta_coreset": [67.99, 74.02, 78.28, 81.92, 86.89],
        "unc_ta_coreset@g0.5": [67.93, 75.35, 82.68, 85.40, 89.24]}},
    "cvc": {"stages": [80, 120, 160, 200, 240], "rows": {
        "random": [78.92, 82.38, 84.83, 85.82, 86.77], "vaal": [79.02, 82.42, 84.40, 85.21, 87.69],
        "pca_coreset": [79.65, 83.67, 86.22, 87.47, 88.42], "ta_coreset": [79.94, 84.33, 87.07, 88.14, 88.78],
        "unc_ta_coreset@g0.5": [79.33, 84.60, 87.12, 88.02, 88.61]}},
}


METRICS = (("paper_miou", "paper mIoU (mean of background and polyp IoU, pooled)"),
           ("polyp_dice", "per-image polyp Dice"), ("polyp_iou", "per-image polyp IoU"))


def load_results(folder: Path) -> dict:
    """strategy -> seed -> list of stage records (complete or not)."""
    out: dict = defaultdict(dict)
    for f in sorted((folder / "runs").glob("*.jsonl")):
        recs = read_records(f, stages=True)
        if recs:
            out[recs[0]["strategy"]][recs[0]["seed"]] = recs
    return out


def run_meta(res: dict) -> dict:
    """run label -> (base strategy, gamma, aggregation), as its records say (a record without them:
    the label is the strategy, with the paper's gamma 0.5 and mean aggregation)."""
    out = {}
    for label, seeds in res.items():
        r = next(iter(seeds.values()))[0]
        out[label] = (r.get("base", label), float(r.get("gamma", 0.5)), r.get("aggregation", "mean"))
    return out


# rows in the paper's Table 2 order, then any other registered strategy in registration order
TABLE_ORDER = ("random", "vaal", "pca_coreset", "uncertainty", "ta_coreset", "unc_ta_coreset")


def _order(names, res: dict) -> list:
    """Run labels in table order: by strategy, then the paper's gamma (0.5) and aggregation (mean) first."""
    meta = run_meta(res)
    bases = list(TABLE_ORDER) + [s for s in REGISTRY if s not in TABLE_ORDER]

    def key(label):
        base, gamma, agg = meta.get(label, (None, 0.5, "mean"))
        return (bases.index(base) if base in bases else len(bases), gamma != 0.5, gamma, agg != "mean", agg, label)

    return sorted(names, key=key)


def stage_table(res: dict, metric: str):
    """{strategy: {n_labeled: [values over seeds]}} (in %)."""
    t: dict = defaultdict(lambda: defaultdict(list))
    for strat, seeds in res.items():
        for recs in seeds.values():
            for r in recs:
                t[strat][r["n_labeled"]].append(100 * r["test"][metric])
    return t


def run_means(res: dict, metric: str) -> dict:
    """{strategy: {seed: mean of the metric (%) over the queried stages}}, for runs that finished them all."""
    stages = sorted({r["n_labeled"] for seeds in res.values() for recs in seeds.values() for r in recs})
    later = set(stages[1:])
    return {strat: {seed: float(np.mean([100 * r["test"][metric] for r in recs if r["n_labeled"] in later]))
                    for seed, recs in seeds.items() if {r["n_labeled"] for r in recs} >= later}
            for strat, seeds in res.items()}


def all_stages(res: dict) -> list[int]:
    return sorted({r["n_labeled"] for seeds in res.values() for recs in seeds.values() for r in recs})


def run_recipes(res: dict) -> set:
    """The recipe fingerprints of a folder's stage records (None for records made before fingerprints)."""
    return {r.get("recipe") for seeds in res.values() for recs in seeds.values() for r in recs}


def _same_recipe(rec: dict, recipes: set | None) -> bool:
    """Whether a ceiling record can stand beside runs of these fingerprints (any, when the runs or the record
    predate fingerprints)."""
    known = (recipes or set()) - {None}
    return not known or rec.get("recipe") is None or rec.get("recipe") in known


def ceilings_left_out(folder: Path, recipes: set | None) -> int:
    """How many ceiling records ``load_ceiling`` leaves out for being of another recipe than the runs."""
    return sum(not _same_recipe(r, recipes) for r in read_records(Path(folder) / "ceiling.jsonl"))


def load_ceiling(folder: Path, recipes: set | None = None) -> dict | None:
    """Mean full-pool test metrics (%) over the ceiling seeds in ``ceiling.jsonl``, or None.

    With ``recipes`` (the runs' fingerprints, ``run_recipes``), a ceiling trained with another recipe is
    left out: the runs could not be measured against it (runs or records without a fingerprint, from
    before them, are taken as matching). Uncapped ceilings (trained the profile's epochs;
    ``polypal.experiments.ceiling``) replace the capped ones of folders made before them, when a folder
    has both; ``uncapped`` says which were used."""
    recs = [r for r in read_records(Path(folder) / "ceiling.jsonl") if _same_recipe(r, recipes)]
    if not recs:
        return None
    uncapped = [r for r in recs if r.get("uncapped")]
    recs = uncapped or recs
    out = {"seeds": [r["seed"] for r in recs], "n_labeled": recs[0]["n_labeled"], "uncapped": bool(uncapped),
           "steps": sorted({r.get("steps") for r in recs if r.get("steps")})}
    for m, _ in METRICS:
        v = [100 * r["test"][m] for r in recs]
        out[m] = float(np.mean(v))
        out[m + "_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else None
        out[m + "_per_seed"] = v  # (the reference's own noise: label savings are shown against each too)
    return out


def _profile_name(folder: Path, res: dict) -> str:
    meta = folder / "run.json"
    if meta.exists():
        return json.loads(meta.read_text()).get("profile", {}).get("name", "?")
    return next((r.get("profile", "?") for seeds in res.values() for recs in seeds.values() for r in recs), "?")


SMOKE_WARNING = ("SMOKE PROFILE: these numbers mean nothing. The smoke profile trains a tiny network on 32x32 "
                 "frames for a handful of steps; it only checks that the pipeline runs.")


def _title(folder: Path, res: dict, dataset: str | None) -> str:
    seeds = sorted({s for v in res.values() for s in v})
    uneven = len({tuple(sorted(v)) for v in res.values()}) > 1
    return (f"{dataset or folder.name} · profile {_profile_name(folder, res)} · seeds {','.join(map(str, seeds))}"
            + (" (not every strategy has all: see the seed counts)" if uneven else ""))
