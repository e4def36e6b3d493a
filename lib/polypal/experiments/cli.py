"""polypal-sim: run the paper's active-learning protocol offline, and report on it.

    polypal-sim run --dataset cvc --data ../shared/datasets/cvc-clinicdb \
        --splits ../shared/datasets/splits --strategies random,ta_coreset --seeds 0,1,2 \
        --profile cpu-lite --out runs/cvc-mine
    polypal-sim ceiling --dataset cvc --data ../shared/datasets/cvc-clinicdb --seeds 0,1,2 --out runs/cvc-mine
    polypal-sim report runs/cvc-mine

(results/ holds the project's committed runs, each of the recipe it was made with: a new run goes to a
new folder.)

Every finished (strategy, seed, stage) is appended to
``OUT/runs/<run name>-seed<k>.jsonl`` (e.g. ``unc_ta_coreset@g0.5-seed0.jsonl``; ``RunSpec.label``) at once; rerunning the same command skips
what is done. ``ceiling`` trains on the whole pool (same split, profile and
validation; the profile's epochs without its per-stage step cap) and appends one line per seed to ``OUT/ceiling.jsonl``: the
full-pool model that the report's label savings are measured against. The split is written to ``OUT/split.json`` and every invocation,
with the machine it ran on, to ``OUT/commands.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from polypal.errors import PolypalError
from polypal.experiments.videos import video_of_frames
from polypal.sampler import REGISTRY

PROTOCOLS = {  # dataset -> (initial, budget per cycle, cycles)
    "kvasir": (100, 100, 5),
    "cvc": (40, 40, 5),
    "folder": (10, 10, 2),
}
ALL_STRATEGIES = tuple(REGISTRY)  # every registered strategy (polypal.sampler.REGISTRY), VAAL included


def _machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__} on {dev}, {torch.get_num_threads()} threads"


SPLIT_OPTIONS = ("--cvc-split", "--split-by-video", "--split-seed", "--n-val", "--n-test")


class _SplitOption(argparse.Action):
    """Stores the value and notes the option as given, however it was spelled (``--split-s 1``, which
    argparse takes for ``--split-seed``, was missed by a look at the command line's words)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.split_options = sorted({*getattr(namespace, "split_options", ()), self.option_strings[0]})


def _make_split(args, names):
    from polypal.experiments import splits

    if args.dataset == "kvasir":
        sess = splits.read_names(Path(args.splits) / "kvasir_sessile.txt")
        return splits.kvasir_split(names, sess, n_val=args.n_val, seed=args.split_seed)
    if args.dataset == "cvc":
        seq = None
        if args.cvc_split == "sequence":
            seq = splits.read_sequences(Path(args.splits) / "cvc_clinicdb_sequences.csv")
        return splits.cvc_split(names, seq, n_test=args.n_test, n_val=args.n_val, seed=args.split_seed,
                                mode=args.cvc_split)
    import numpy as np

    nt = max(2, len(names) // 6)
    by_video = getattr(args, "split_by_video", "off")
    if by_video != "off":
        from polypal.video.store import folder_index

        vo = video_of_frames(args, names, quiet=True) if by_video == "on" else \
            {n: v for n, v in folder_index(args.data).video_of.items() if n in set(names)}
        if vo:
            try:
                return splits.video_split(names, vo, n_test=nt, n_val=nt, seed=args.split_seed)
            except ValueError as e:
                raise SystemExit(f"{args.data}: {e}; --split-by-video off splits by frame (frames of one video "
                                 "then land on both sides)") from None
        if by_video == "on":
            raise SystemExit(f"--split-by-video on: no video of any frame in {args.data} (no .polypal/video.sqlite, "
                             "no <video>_<frame> ids)")
    rng = np.random.default_rng(args.split_seed)
    perm = [names[i] for i in rng.permutation(len(names))]
    return {"test": sorted(perm[:nt]), "val": sorted(perm[nt : 2 * nt]), "pool": sorted(perm[2 * nt :])}


BUNDLED_SPLITS = Path(__file__).resolve().parents[3] / "sample-datasets" / "splits"  # in the repository
_SPLIT_FILES = {"kvasir": ("kvasir_sessile.txt", "the names of Kvasir-SEG's 196 sessile frames, its test set"),
                "cvc": ("cvc_clinicdb_sequences.csv", "which video sequence each CVC-ClinicDB frame is from")}


def _find_splits(args) -> None:
    """The folder with the dataset's split file, before any frame is read: --splits, else the folder beside
    --data (where ``sample-datasets/download.sh`` puts it), else the copy in the repository's
    sample-datasets/splits. A missing file is named with what it holds."""
    if args.dataset == "cvc" and args.cvc_split != "sequence":
        args.splits = args.splits or str(Path(args.data).parent / "splits")  # optional there (--video-cap)
        return
    name, what = _SPLIT_FILES[args.dataset]
    if args.splits:
        if not (Path(args.splits) / name).is_file():
            raise SystemExit(f"error: --splits {args.splits}: no {name} ({what}); the repository has it in "
                             f"{BUNDLED_SPLITS}")
        return
    for d in (Path(args.data).parent / "splits", BUNDLED_SPLITS):
        if (d / name).is_file():
            args.splits = str(d)
            return
    raise SystemExit(f"error: no {name} ({what}) beside --data ({Path(args.data).parent / 'splits'}) or in "
                     f"{BUNDLED_SPLITS}; pass --splits FOLDER")


_DATASET_NAMES = {"kvasir": "Kvasir-SEG", "cvc": "CVC-ClinicDB"}


def _check_dataset(args) -> None:
    """Before any frame is decoded: refuse a --data folder whose frames the dataset's split file does not
    name (a Kvasir-SEG folder given as --dataset cvc put every frame in one "sequence", all of it in test, and
    was refused only after decoding, as a pool "too few" for the protocol). Kvasir-SEG: none of its frames
    among the sessile (test) frames; CVC-ClinicDB (split by sequence): fewer than half of them in the
    sequence list (the frames it does not name would go to one part together)."""
    from polypal.data import find_pairs
    from polypal.experiments import splits
    from polypal.vocab import frame_id

    if args.dataset == "cvc" and args.cvc_split != "sequence":
        return
    names = sorted(frame_id(img) for img, _ in find_pairs(args.data))
    file = Path(args.splits) / _SPLIT_FILES[args.dataset][0]
    if args.dataset == "kvasir":
        listed = set(splits.read_names(file))
        named = [n for n in names if n in listed]
        if named:
            return
    else:
        seq = splits.read_sequences(file)
        named = [n for n in names if splits.sequence_of(n, seq) != -1]
        if 2 * len(named) >= len(names):
            return
    unnamed = sorted(set(names) - set(named))
    how_many = "none" if not named else f"only {len(named)}"
    if args.dataset == "kvasir":  # (a subset of Kvasir-SEG without sessile frames is Kvasir-SEG all the same)
        raise SystemExit(f"error: --data {args.data} holds none of Kvasir-SEG's sessile frames, its test set "
                         f"({file} names them; {unnamed[0]!r}, for one, is not among them): not Kvasir-SEG, or "
                         f"a part of it without its test frames; check --dataset and --data (--dataset folder "
                         f"takes any images/ + masks/ folder, with a test set drawn from it)")
    raise SystemExit(f"error: --data {args.data} does not look like {_DATASET_NAMES[args.dataset]}: {file} "
                     f"({_SPLIT_FILES[args.dataset][1]}) names {how_many} of its {len(names)} frames ({unnamed[0]!r}, "
                     f"for one, is not in it); check --dataset and --data (--dataset folder takes any images/ + "
                     f"masks/ folder)")


def _fitting(pool: int, init: int, budget: int, cycles: int) -> str:
    """What to rerun with for a pool of ``pool`` frames: the largest --initial, --budget or the most --cycles
    that fit, each with the other settings as given, else --initial and --budget together; '' when nothing
    fits."""
    def need(i, b, c):
        return i + b * (c - 1) + 1 if c else i

    fits = []
    i = pool - (need(0, budget, cycles) if cycles else 0)
    if i >= 1:
        fits.append(f"--initial {i}")
    if cycles > 1 and (pool - init - 1) // (cycles - 1) >= 1:
        fits.append(f"--budget {(pool - init - 1) // (cycles - 1)}")
    c = max((k for k in range(cycles) if need(init, budget, k) <= pool), default=None)
    if c is not None:
        fits.append(f"--cycles {c}")
    if len(fits) > 1:
        return f"rerun with one of {', '.join(fits)} (the other settings as given)"
    if fits:
        return f"rerun with {fits[0]}"
    if cycles and (pool - 1) // cycles >= 1:
        return f"rerun with --initial {(pool - 1) // cycles} --budget {(pool - 1) // cycles}"
    return ""


def _log_command(out: Path) -> None:
    with open(out / "commands.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  [{_machine()}]\n  "
                f"{' '.join(shlex.quote(a) for a in sys.argv)}\n")


_FLAGS = {"min_steps": "--min-steps", "max_steps": "--max-steps", "augment": "--augment",
          "collapse_retries": "--collapse-retries", "fit_floor": "--fit-floor"}


def _refuse_other_recipe(out: Path, profile) -> None:
    """A folder holds one training recipe: refuse, before anything is written, to add runs trained another way
    (e.g. the results/*-v2 folders after cpu-lite moved to the v3 recipe), naming what differs and the flags
    that give the folder's recipe when flags can."""
    from dataclasses import asdict, fields

    from polypal.experiments.simulate import recipe_hash
    from polypal.learner import Profile

    try:
        old = json.loads((out / "run.json").read_text())["profile"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no readable record of the folder's recipe (a new folder)
    known = {f.name for f in fields(Profile)}
    if not isinstance(old, dict) or set(old) - known:
        raise SystemExit(f"error: {out}/run.json describes a recipe this version cannot read (fields "
                         f"{sorted(set(old) - known) if isinstance(old, dict) else old!r}): use a new --out")
    was = Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in old.items()})
    if recipe_hash(was) == recipe_hash(profile):
        return
    then, now = asdict(was), asdict(profile)
    differ = [k for k in then if then[k] != now[k] and not (k == "flips" and was.augment and profile.augment)]
    diff = ", ".join(f"{k} {then[k]!r} there, {now[k]!r} now" for k in differ)
    # flags can give it when only flag-set fields differ; --augment flips means flips on, no other augmentation
    by_flags = set(differ) <= set(_FLAGS) and (then["augment"] or then["flips"])
    flags = " ".join(f"{_FLAGS[k]} {then[k] if k != 'augment' else (then[k] or 'flips')}" for k in differ
                     if k in _FLAGS)
    hint = f"or these flags, which give the folder's recipe: {flags}" if by_flags else \
        _profile_hint(was) or "no polypal-sim flags give the folder's recipe"
    raise SystemExit(f"error: {out} holds runs of another training recipe ({diff}). Use a new --out; {hint}.")


def _profile_hint(was) -> str | None:
    """'or --profile NAME [flags]' when a named profile, with flags on flag-set fields only, is the recipe."""
    from dataclasses import asdict

    from polypal.learner.profiles import PROFILES

    then = asdict(was)
    for name, p in PROFILES.items():
        base = asdict(p)
        differ = [k for k in then if then[k] != base[k] and k != "name" and not (
            k == "flips" and was.augment and p.augment)]
        if set(differ) <= set(_FLAGS) and (then["augment"] or then["flips"]):
            flags = "".join(f" {_FLAGS[k]} {then[k] if k != 'augment' else (then[k] or 'flips')}" for k in differ)
            return f"or --profile {name}{flags}, which gives the folder's recipe"
    return None


def _folder_seeding(out: Path, asked: str | None) -> str:
    """How the folder's initial labeled sets are drawn (``simulate.initial_labeled``): what its run.json says;
    "shared" for a folder written before the choice existed (up to the v3 recipe), so that it resumes as it
    was; "streams" for a new folder unless ``--seeding`` says otherwise. A different --seeding is refused."""
    try:
        meta = json.loads((out / "run.json").read_text())
        has = meta.get("seeding", "shared") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        has = None
    if has is not None and asked is not None and asked != has:
        raise SystemExit(f"error: {out} draws its initial labeled sets with --seeding {has}, not {asked}: "
                         f"use a new --out")
    return has or asked or "streams"


def _refuse_other_dataset(out: Path, dataset: str) -> None:
    """A folder holds one dataset's runs: refuse, before anything is written, to add another's."""
    try:
        was = json.loads((out / "run.json").read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        return
    if was and was != dataset:
        raise SystemExit(f"error: {out} holds runs of --dataset {was}, not {dataset}: use a new --out")


def _run_meta(out: Path) -> dict:
    try:
        m = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def data_fingerprint(data, names) -> str:
    """SHA-256 over the named frames' image and mask files, byte for byte (names sorted): what a results
    folder's runs were made on, independent of where the folder sits and of any library's decoding."""
    import hashlib

    from polypal.data import find_pairs
    from polypal.vocab import frame_id

    want = set(names)
    h = hashlib.sha256()
    for img, mask in sorted((p for p in find_pairs(data) if frame_id(p[0]) in want), key=lambda p: frame_id(p[0])):
        h.update(frame_id(img).encode() + b"\0")
        for f in (img, mask):
            h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()


def _refuse_other_runs(out: Path, args, init: int, budget: int, cycles: int, fingerprint: str) -> None:
    """A folder holds runs of one protocol on one set of files: refuse, before anything is written, to add
    stages of another protocol or trained on other files (before, both were added to the same records in
    silence: a stage of 4 + 2 x 1 beside stages of 6 + 5 x 2, or stages trained on emptied masks)."""
    was = _run_meta(out)
    p = was.get("protocol")
    if args.cmd == "run" and isinstance(p, list) and len(p) == 3 and list(p[:2]) != [init, budget]:
        raise SystemExit(f"error: {out} holds runs of protocol {p[0]} + {p[1]} x {p[2]}, not {init} + {budget} "
                         f"x {cycles}: add runs with --initial {p[0]} --budget {p[1]}, or use a new --out")
    fp = was.get("data_fingerprint")
    if fp and fp != fingerprint:
        raise SystemExit(f"error: the image or mask files of --data {args.data} differ from those {out}'s runs "
                         f"were made on ({was.get('data')}, by content): use a new --out")


def _count(low: int):
    """argparse type: a whole number >= low."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


def _fit_floor(text: str) -> float:
    """argparse type: a polyp Dice floor in [0, 1)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


MAX_SEED = 10 ** 6  # seeds feed torch.manual_seed and seed * 1000 + stage streams: keep them small


def _seed_list(text: str) -> str:
    """argparse type: comma-separated seeds >= 0, as a clean "0,1,2" (commands.txt logs the command as typed)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() and len(p) <= 7 and int(p) <= MAX_SEED for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give seeds as whole numbers 0 to {MAX_SEED}, e.g. 0,1,2")
    return ",".join(parts)


def _setup(args):
    """Threads, output folder, command log, profile, protocol, data and split: shared by run and ceiling."""
    import torch
    from tqdm import tqdm

    from polypal.data import load_folder
    from polypal.learner import get_profile
    from polypal.experiments.splits import save_split

    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.data).is_dir():
        raise SystemExit(f"error: --data {args.data}: no such folder (a dataset folder holds images/ and masks/)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file, not a folder")
    _refuse_other_dataset(out, args.dataset)
    augment = {None: {}, "flips": {"augment": "", "flips": True}}.get(args.augment, {"augment": args.augment})
    profile = get_profile(args.profile, max_steps=args.max_steps, min_steps=args.min_steps,
                          collapse_retries=args.collapse_retries, fit_floor=args.fit_floor, **augment)
    _refuse_other_recipe(out, profile)
    seeding = args.seeding = _folder_seeding(out, getattr(args, "seeding", None))
    init, budget, cycles = PROTOCOLS[args.dataset]
    init = args.initial if args.initial is not None else init
    budget = args.budget if args.budget is not None else budget
    cycles = args.cycles if args.cycles is not None else cycles
    fs = load_folder(args.data, profile.size, cache_dir=args.cache_dir, progress=True)  # a bad file: before OUT
    split_file = out / "split.json"
    if split_file.exists():
        try:
            split = json.loads(split_file.read_text())
        except (OSError, ValueError):
            split = None
        if not (isinstance(split, dict) and all(isinstance(split.get(k), list) and
                                                all(isinstance(n, str) for n in split[k])
                                                for k in ("pool", "val", "test"))):
            raise SystemExit(f"error: {split_file} is damaged (not the JSON lists \"pool\", \"val\", \"test\" of "
                             f"frame names it was written as): restore it from a copy, or use a new --out") from None
        missing = sorted({n for k in ("pool", "val", "test") for n in split[k]} - set(fs.names))
        if missing:
            raise SystemExit(f"error: {split_file} names {len(missing)} frames that --data {args.data} does not have "
                             f"(e.g. {missing[0]!r}): the folder holds runs of another dataset; use a new --out")
        if getattr(args, "split_options", None):  # asked for on the command line: the folder's split must be it
            # (before, they were ignored without a word and the runs went on with the folder's split)
            asked = _make_split(args, fs.names)
            if any(sorted(asked[k]) != sorted(split[k]) for k in ("pool", "val", "test")):
                raise SystemExit(f"error: {', '.join(args.split_options)} asks for another split than the one "
                                 f"{out}'s runs use ({split_file}: pool {len(split['pool'])}, val "
                                 f"{len(split['val'])}, test {len(split['test'])}): the runs of one folder share "
                                 f"a split; leave the option out to go on, or use a new --out")
    else:
        split = _make_split(args, fs.names)
    fingerprint = data_fingerprint(args.data, [n for k in ("pool", "val", "test") for n in split[k]])
    _refuse_other_runs(out, args, init, budget, cycles, fingerprint)
    # every stage must have a frame to pick (the last batch may be short)
    need = init + budget * (cycles - 1) + 1 if cycles else init
    if not split["test"]:
        raise SystemExit(f"error: --data {args.data}: the split leaves no test frame"
                         + (" (--dataset kvasir tests on the sessile frames that --splits' kvasir_sessile.txt names, "
                            "and --data has none of them)" if args.dataset == "kvasir" else ""))
    if args.cmd == "run" and len(split["pool"]) < need:
        fits = _fitting(len(split["pool"]), init, budget, cycles)
        raise SystemExit(f"error: --data {args.data}: the pool holds {len(split['pool'])} frames (after "
                         f"{len(split['val'])} for validation and {len(split['test'])} for test), too few for "
                         f"{init} + {budget} x {cycles} labels (at least {need}: a frame left for each cycle); "
                         + (fits or "use a folder with more frames"))
    out.mkdir(parents=True, exist_ok=True)
    _log_command(out)
    if not split_file.exists():
        save_split(split, split_file)
    was = _run_meta(out)
    if isinstance(was.get("protocol"), list) and len(was["protocol"]) == 3 and isinstance(was["protocol"][2], int):
        cycles_held = max(cycles, was["protocol"][2])  # (a run with fewer cycles adds nothing: still held)
    else:
        cycles_held = cycles
    meta = {"dataset": args.dataset, "data": str(Path(args.data).resolve()), "profile": profile.to_dict(),
            "protocol": [init, budget, cycles_held], "seeding": seeding,
            "data_fingerprint": was.get("data_fingerprint") or fingerprint}
    if args.cmd == "run" or not (out / "run.json").exists():
        (out / "run.json").write_text(json.dumps(meta, indent=1))
    pool, val, test = (fs.subset(fs.index_of(split[k])) for k in ("pool", "val", "test"))
    assert not (set(split["test"]) & set(split["pool"])) and not (set(split["val"]) & set(split["pool"]))
    tqdm.write(f"split: pool {len(pool)}, val {len(val)}, test {len(test)}; protocol {init} + {budget} x {cycles}; "
               f"profile {profile.name}")
    if args.cmd == "run" and cycles and len(pool) < init + budget * cycles:  # (said only in a record's notes)
        tqdm.write(f"note: the pool holds {len(pool)} frames, fewer than {init} + {budget} x {cycles}: the last "
                   f"query takes the {len(pool) - init - budget * (cycles - 1)} left (stages end at {len(pool)})")
    return out, profile, (init, budget, cycles), pool, val, test


def cmd_run(args) -> int:
    from tqdm import tqdm

    from polypal.experiments.simulate import RunSpec, run
    from polypal.sampler import pca_features

    if not 0 <= args.gamma <= 1:  # (said as --strategies' fault, for a random run that has no gamma)
        raise SystemExit(f"error: --gamma must be in [0, 1], got {args.gamma:g}")
    try:  # before _setup writes anything into --out
        specs = [RunSpec.parse(s, default_gamma=args.gamma) for s in args.strategies.split(",") if s.strip()]
    except ValueError as e:
        raise SystemExit(f"error: --strategies {e}") from None
    if not specs:
        raise SystemExit("error: --strategies names no strategy")
    specs = list(dict.fromkeys(specs))  # (an alias parses to its registered name: once each, in order)
    vg = None
    if args.video_groups:  # checked before _setup writes anything into --out
        from polypal.experiments.videos import read_video_groups

        vg = {k: v for k, v in read_video_groups(args.video_groups).items() if k != "video_of"}
    out, profile, (init, budget, cycles), pool, val, test = _setup(args)
    pca = None
    if any(s.name == "pca_coreset" for s in specs):
        pca = pca_features(pool.images, seed=args.split_seed)
    seeds = [int(s) for s in str(args.seeds).split(",") if s != ""]
    video_of, cap = None, args.video_cap
    if cap != "off":
        video_of = video_of_frames(args, pool.names)
        if not video_of:
            raise SystemExit(f"--video-cap {cap}: no video of any pool frame (no .polypal/video.sqlite in "
                             f"{args.data}, no video_of in --video-groups, no <video>_<frame> ids)")
    from polypal.experiments.simulate import read_records

    jobs = [(seed, spec) for seed in seeds for spec in specs]
    bar = tqdm(jobs, desc="runs", unit="run")
    trained = 0
    for seed, spec in bar:
        bar.set_postfix_str(f"{spec.label} seed {seed}")
        path = out / "runs" / f"{spec.label}-seed{seed}.jsonl"
        before = path.read_text() if path.exists() else None
        run(pool, val, test, spec, profile, seed, init, budget, cycles, path, pca_feats=pca,
            progress=tqdm.write, extras_dir=out / "extras", video_groups=vg,
            video_of=video_of, video_cap=cap, seeding=args.seeding)
        trained += (path.read_text() if path.exists() else None) != before
    if not trained:
        stages = {len(read_records(out / "runs" / f"{sp.label}-seed{sd}.jsonl")) for sd, sp in jobs}
        tqdm.write(f"nothing to do: the {len(jobs)} run(s) asked for are complete in {out} "
                   f"({'/'.join(map(str, sorted(stages)))} stages each); --cycles N adds stages, a new --out "
                   f"starts over")
    return 0


def cmd_ceiling(args) -> int:
    """Train on the whole pool (the full-pool ceiling) at each seed; one line per seed in OUT/ceiling.jsonl."""
    from polypal.experiments.ceiling import full_pool_ceiling

    out, profile, _, pool, val, test = _setup(args)
    seeds = [int(s) for s in str(args.seeds).split(",") if s != ""]
    from tqdm import tqdm

    for seed in seeds:
        rec = full_pool_ceiling(pool, val, test, profile, seed, out / "ceiling.jsonl", progress=tqdm.write)
        tqdm.write(f"ceiling seed {seed}: {len(pool)} labels, paper_miou {rec['test']['paper_miou']:.4f} "
                   f"polyp_dice {rec['test']['polyp_dice']:.4f}")
    return 0


def cmd_report(args) -> int:
    from polypal.experiments.report import make_report

    folder = Path(args.results)
    if not folder.is_dir():
        raise SystemExit(f"error: {folder}: no such folder (give the --out folder of polypal-sim run)")
    if folder.name == "runs" and not (folder / "runs").is_dir() and any(folder.glob("*.jsonl")):
        raise SystemExit(f"error: {folder} holds the run records: give the folder above it ({folder.parent})")
    paths = make_report(folder, paper=args.paper)
    for p in paths:
        print(p)
    return 0


def _cap_arg(text: str):
    from polypal.video.select import parse_cap

    try:
        return parse_cap(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="polypal-sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) active-learning simulations")
    c = sub.add_parser("ceiling", help="train on the whole pool (the full-pool ceiling) at some seeds; resumable")
    for a in (r, c):
        a.add_argument("--dataset", choices=sorted(PROTOCOLS), required=True,
                       help="protocol and split: kvasir (sessile test), cvc (sequence split), folder (any images/+masks/)")
        a.add_argument("--data", required=True, help="dataset folder with images/ and masks/")
        a.add_argument("--splits", default=None, help="folder with kvasir_sessile.txt / cvc_clinicdb_sequences.csv")
        a.add_argument("--seeds", default="0,1,2", type=_seed_list, help="comma list (default: 0,1,2)")
        a.add_argument("--profile", default="cpu-lite", choices=["paper", "cpu-lite", "smoke"],
                       help="training recipe (default: cpu-lite, minutes per training on a CPU; smoke: seconds, "
                            "numbers that mean nothing; paper: 256 px, 100 epochs, for a GPU)")
        a.add_argument("--initial", type=_count(1), default=None,
                       help="labels at the first stage (default: the dataset's protocol)")
        a.add_argument("--budget", type=_count(1), default=None,
                       help="labels added per cycle (default: the dataset's protocol)")
        a.add_argument("--cycles", type=_count(0), default=None,
                       help="queries after the first stage (default: the dataset's protocol)")
        a.add_argument("--cvc-split", action=_SplitOption, choices=["sequence", "frame"], default="sequence",
                       help="--dataset cvc: whole video sequences to test/val/pool, or frames (default: sequence)")
        a.add_argument("--split-by-video", action=_SplitOption, choices=["auto", "on", "off"], default="auto",
                       help="--dataset folder: whole videos to test/val/pool (auto: when the folder has "
                            ".polypal/video.sqlite; on: also from <video>_<frame> ids)")
        a.add_argument("--split-seed", action=_SplitOption, type=int, default=0, help="(default: 0)")
        a.add_argument("--n-val", action=_SplitOption, type=int, default=100,
                       help="validation frames (default: 100)")
        a.add_argument("--n-test", action=_SplitOption, type=int, default=112,
                       help="test frames of cvc and folder (default: 112)")
        a.add_argument("--max-steps", type=int, default=None, help="override the profile's step cap")
        a.add_argument("--min-steps", type=int, default=None, help="override the profile's step floor")
        a.add_argument("--augment", choices=["flips", "rot", "endo"], default=None,
                       help="override the profile's training augmentation: flips (the v2 recipe), rot (flips and "
                            "90-degree rotations) or endo (rot, random scale/shift and colour jitter; "
                            "polypal.learner.augment)")
        a.add_argument("--collapse-retries", type=int, default=None,
                       help="redo a training whose model predicts no polyp on its own frames (at most N times; "
                            "changes the recipe's fingerprint: use a new --out)")
        a.add_argument("--fit-floor", type=_fit_floor, default=None,
                       help="with --collapse-retries: also redo a training whose model's polyp Dice on its own "
                            "frames is under this (0 to 1; a candidate, off by default; changes the fingerprint)")
        a.add_argument("--seeding", choices=["streams", "shared"], default=None,
                       help="how the initial labeled set is drawn: streams (new folders: its own random stream) "
                            "or shared (folders up to the v3 recipe: the stream of seed 0's first query); "
                            "default: the folder's own, else streams")
        a.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (0: torch's default)")
        a.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/polypal"))
        a.add_argument("--out", required=True)
    r.add_argument("--strategies", default=",".join(ALL_STRATEGIES),
                   help="comma list; NAME[:aggregation[:gamma]], e.g. uncertainty:topk,unc_ta_coreset:mean:0.25 "
                        "(default: all six, each a run per seed: " + ",".join(ALL_STRATEGIES) + ")")
    r.add_argument("--gamma", type=float, default=0.5,
                   help="unc_ta_coreset's share of the batch picked by uncertainty, when its spec gives none "
                        "(default: 0.5)")
    r.add_argument("--video-groups", default=None,
                   help="JSON {groups, flagged, representatives} by frame name (benchmarks/video_dup_labels.py): "
                        "pick only one clean representative per group of near-duplicates with no label yet")
    r.add_argument("--video-cap", default="off", type=_cap_arg,
                   help="at most this many frames of one video per query: an int, 'auto' (ceil(budget / videos), "
                        "raised when needed to fill the batch) or 'off' (default). Videos from the folder's "
                        ".polypal/video.sqlite, --video-groups' video_of, CVC's sequences or <video>_<frame> ids")
    r.set_defaults(func=cmd_run)
    c.set_defaults(func=cmd_ceiling)
    p = sub.add_parser("report", help="tables and figures from a results folder")
    p.add_argument("results")
    p.add_argument("--paper", choices=["kvasir", "cvc", "none"], default=None,
                   help="which paper table to show beside ours (default: from the folder's split)")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    args.split_options = getattr(args, "split_options", [])
    if args.cmd in ("run", "ceiling") and args.dataset in ("kvasir", "cvc"):
        _find_splits(args)
    try:
        if args.cmd in ("run", "ceiling") and args.dataset in _DATASET_NAMES and Path(args.data).is_dir() \
                and not (Path(args.out) / "split.json").exists():
            _check_dataset(args)  # another dataset's folder: said before the model code loads or a frame is decoded
        return args.func(args)
    except (PolypalError, OSError) as e:  # a file of the dataset or the results folder: one line, no traceback
        print(f"polypal-sim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a traceback looked like a crash (a walkthrough)
        print("\npolypal-sim: interrupted"
              + ("; the stages finished so far are kept: run the same command again to go on"
                 if args.cmd in ("run", "ceiling") else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
