"""The experiment CLI end to end (smoke profile), resume, splits, and the report."""

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import require_shared, write_dataset
from polypal.experiments.cli import main
from polypal.experiments.simulate import read_records
from polypal.experiments.splits import cvc_split, kvasir_split, read_names, read_sequences


def run_cli(data, out, strategies="random,unc_ta_coreset,vaal", seeds="0", cycles=2, extra=()):
    return main(["run", "--dataset", "folder", "--data", str(data), "--profile", "smoke", "--strategies", strategies,
                 "--seeds", seeds, "--initial", "6", "--budget", "4", "--cycles", str(cycles),
                 "--cache-dir", str(out / "cache"), "--out", str(out), *extra])


def test_cli_end_to_end_and_report(tmp_path):
    data = write_dataset(tmp_path / "d", 36, seed=4)
    out = tmp_path / "res"
    strategies = "random,uncertainty,uncertainty:region,pca_coreset,ta_coreset,unc_ta_coreset,unc_ta_coreset:mean:0.25,vaal"
    assert run_cli(data, out, strategies, seeds="0,1", cycles=3) == 0
    runs = sorted(p.name for p in (out / "runs").glob("*.jsonl"))
    assert "unc_ta_coreset@g0.25-seed1.jsonl" in runs and "uncertainty+region-seed0.jsonl" in runs
    assert len(runs) == 16
    for f in (out / "runs").glob("*.jsonl"):
        assert [r["n_labeled"] for r in read_records(f)] == [6, 10, 14, 18]
    # same initial labeled set for every strategy at a seed
    firsts = {read_records(f)[0]["strategy"]: read_records(f)[0]["labeled"] for f in (out / "runs").glob("*seed0.jsonl")}
    assert len({tuple(v) for v in firsts.values()}) == 1
    split = json.loads((out / "split.json").read_text())
    assert not set(split["test"]) & set(split["pool"]) and not set(split["val"]) & set(split["pool"])
    assert "commands.txt" in os.listdir(out)
    assert main(["report", str(out), "--paper", "cvc"]) == 0
    rep = out / "report"
    for name in ("tables.md", "curves.png", "aulc_diff.png", "tsne_stage3.png", "gamma_sweep.png", "overlap.png",
                 "gallery_stage3.png"):
        assert (rep / name).stat().st_size > 1000, name
    # the t-SNE embeddings are kept (one per strategy's latents file); a second report reuses them and draws
    # the same panel; a changed latents file gets a new embedding in place of the old one
    cached = sorted((rep / ".tsne-cache").glob("*.npy"))
    assert len(cached) == 8, cached
    first = (rep / "tsne_stage3.png").read_bytes()
    stamps = {f: f.stat().st_mtime_ns for f in cached}
    assert main(["report", str(out), "--paper", "cvc"]) == 0
    assert (rep / "tsne_stage3.png").read_bytes() == first
    assert {f: f.stat().st_mtime_ns for f in sorted((rep / ".tsne-cache").glob("*.npy"))} == stamps
    lat = out / "extras" / "latents-random-seed0-stage2.npz"
    z = dict(np.load(lat))
    z["latents"] = z["latents"] * 2
    np.savez(lat, **z)
    assert main(["report", str(out), "--paper", "cvc"]) == 0
    now = sorted((rep / ".tsne-cache").glob("latents-random-seed0-stage2-*.npy"))
    assert len(now) == 1 and now[0] not in stamps
    # the machine-readable summary: every strategy against Random, paired over both seeds, on the run's stages
    summ = json.loads((rep / "summary.json").read_text())
    assert summ["stages"] == [6, 10, 14, 18] and summ["profile"] == "smoke" and summ["smoke"] is True
    vs = summ["metrics"]["paper_miou"]["vs_random"]
    assert len(vs) == 7 and "random" not in vs
    assert all(v["aulc"]["seeds"] == 2 and len(v["aulc"]["ci95"]) == 2 for v in vs.values())
    tables = (rep / "tables.md").read_text()
    assert "paper_miou" in tables and "polyp_dice" in tables and "*paper: ta_coreset*" in tables
    assert "± " in tables  # two seeds: mean ± std
    # paired by seed against random: the printed difference is the runs' own means subtracted
    assert "Paired by seed: strategy minus random" in tables
    runs_mean = {k: np.mean([100 * r["test"]["paper_miou"] for r in read_records(out / "runs" / f"{k}-seed0.jsonl")[1:]])
                 for k in ("random", "ta_coreset")}
    row = next(line for line in tables.split("`paper_miou` (points):")[1].splitlines() if line.startswith("| ta_coreset |"))
    assert f"s0: {runs_mean['ta_coreset'] - runs_mean['random']:+.1f}" in row and "/2 |" in row


def test_resume_skips_finished_stages(tmp_path):
    data = write_dataset(tmp_path / "d", 30, seed=5)
    out = tmp_path / "res"
    run_cli(data, out, "ta_coreset", cycles=2)
    f = out / "runs" / "ta_coreset-seed0.jsonl"
    full = read_records(f)
    # simulate an interruption during stage 1: keep stage 0 and a half-written line
    lines = f.read_text().splitlines()
    f.write_text(lines[0] + "\n" + lines[1][:40])
    run_cli(data, out, "ta_coreset", cycles=2)
    again = read_records(f)
    assert [r["stage"] for r in again] == [0, 1, 2]
    assert [json.loads(line)["stage"] for line in f.read_text().splitlines()] == [0, 1, 2]  # cut line dropped
    assert again[0] == full[0]  # stage 0 kept as it was, not redone
    # stages 1 and 2 were recomputed: the stage-1 model trained, scored the pool and picked again.
    # Training is deterministic on the CPU, so everything but the timings equals the uninterrupted run.
    timing = {"seconds", "train_seconds"}
    for k in (1, 2):
        assert {a: v for a, v in again[k].items() if a not in timing} == \
            {a: v for a, v in full[k].items() if a not in timing}, k
    assert full[1]["selected"] and again[1]["selected"] == full[1]["selected"]
    # a complete run is not redone at all
    before = f.read_text()
    run_cli(data, out, "ta_coreset", cycles=2)
    assert f.read_text() == before


def test_kvasir_split_has_no_sessile_in_pool_or_val():
    root = require_shared("splits")
    names = [p[:-4] for p in os.listdir(require_shared("kvasir-seg/images"))]
    sess = read_names(root / "kvasir_sessile.txt")
    s = kvasir_split(names, sess)
    assert len(s["test"]) == 196 and set(s["test"]) == set(sess)
    assert not set(sess) & set(s["pool"]) and not set(sess) & set(s["val"])
    assert len(s["val"]) == 100 and len(s["pool"]) == 704
    assert not set(s["val"]) & set(s["pool"])


def test_cvc_split_by_sequence_is_disjoint():
    root = require_shared("splits")
    names = [p[:-4] for p in os.listdir(require_shared("cvc-clinicdb/images"))]
    seq = read_sequences(root / "cvc_clinicdb_sequences.csv")
    s = cvc_split(names, seq)
    seqs = {k: {seq[n] for n in s[k]} for k in ("test", "val", "pool")}
    assert not seqs["test"] & seqs["pool"] and not seqs["val"] & seqs["pool"] and not seqs["test"] & seqs["val"]
    assert 100 <= len(s["test"]) <= 140 and 90 <= len(s["val"]) <= 140
    f = cvc_split(names, seq, mode="frame")
    assert len(f["test"]) == 112 and len(f["val"]) == 100 and len(f["pool"]) == 400


def test_a_folder_keeps_its_recipe(tmp_path):
    """A run with another training recipe into a folder is refused before anything is written (run.json kept),
    naming what differs; --augment changes the recipe; the v2 folders' recipe is cpu-lite with the flags
    their README gives."""
    import pytest

    from polypal.experiments.cli import _refuse_other_recipe
    from polypal.learner import get_profile

    data = write_dataset(tmp_path / "d", 36, seed=6)
    out = tmp_path / "res"
    assert run_cli(data, out, "random", cycles=1, extra=["--augment", "rot"]) == 0
    meta = (out / "run.json").read_text()
    assert json.loads(meta)["profile"]["augment"] == "rot"
    runs = {p.name: p.read_text() for p in (out / "runs").glob("*.jsonl")}
    commands = (out / "commands.txt").read_text()
    with pytest.raises(SystemExit, match="augment 'rot' there, 'endo' now.*these flags.*: --augment rot"):
        run_cli(data, out, "random", cycles=2, extra=["--augment", "endo"])
    assert (out / "run.json").read_text() == meta and (out / "commands.txt").read_text() == commands
    assert {p.name: p.read_text() for p in (out / "runs").glob("*.jsonl")} == runs
    assert run_cli(data, out, "random", cycles=2, extra=["--augment", "rot"]) == 0  # same recipe: resumes
    # extending a finished run: its old last stage (which picked nothing) is redone, and its model picks
    # the next batch; training is deterministic, so the redone stage's numbers are the first ones
    short = json.loads(runs["random-seed0.jsonl"].splitlines()[-1])
    longer = read_records(out / "runs" / "random-seed0.jsonl")
    assert [r["n_labeled"] for r in longer] == [6, 10, 14] and short["selected"] == []
    assert longer[1]["test"] == short["test"] and len(longer[1]["selected"]) == 4
    # the committed v2 folders: today's cpu-lite is refused, the documented v2 flags are accepted
    root = Path(__file__).resolve().parents[1] / "results"
    for name in ("cvc-v2", "kvasir-v2"):
        with pytest.raises(SystemExit, match="another training recipe"):
            _refuse_other_recipe(root / name, get_profile("cpu-lite"))
        with pytest.raises(SystemExit, match="max_steps 1500 there, 3000 now.*--max-steps 1500"):
            _refuse_other_recipe(root / name, get_profile("cpu-lite", min_steps=600, augment="", flips=True,
                                                          collapse_retries=0))
        _refuse_other_recipe(root / name, get_profile("cpu-lite", min_steps=600, max_steps=1500, augment="",
                                                      flips=True, collapse_retries=0))
    # the v3 folders, as results/v3-queue.sh runs them: Kvasir with today's cpu-lite, CVC with --max-steps 1500
    _refuse_other_recipe(root / "kvasir-v3", get_profile("cpu-lite"))
    _refuse_other_recipe(root / "cvc-v3", get_profile("cpu-lite", max_steps=1500))
    with pytest.raises(SystemExit, match="max_steps 1500 there, 3000 now.*--max-steps 1500"):
        _refuse_other_recipe(root / "cvc-v3", get_profile("cpu-lite"))


def test_a_fit_floor_is_part_of_the_recipe_and_its_fit_is_recorded(tmp_path):
    """--fit-floor: run.json holds it (another recipe than the folder without it), and each stage record keeps
    the returned model's polyp Dice on its own labeled frames; without it, no such field."""
    import pytest

    data = write_dataset(tmp_path / "d", 36, seed=6)
    out = tmp_path / "res"
    assert run_cli(data, out, "random", cycles=1, extra=["--collapse-retries", "1", "--fit-floor", "0.01"]) == 0
    assert json.loads((out / "run.json").read_text())["profile"]["fit_floor"] == 0.01
    recs = read_records(out / "runs" / "random-seed0.jsonl")
    assert len(recs) == 2 and all(0 <= r["fit_dice"] <= 1 for r in recs), recs
    with pytest.raises(SystemExit, match="fit_floor 0.01 there, 0.0 now.*--fit-floor 0.01"):
        run_cli(data, out, "random", cycles=1, extra=["--collapse-retries", "1"])
    plain = tmp_path / "plain"
    assert run_cli(data, plain, "random", cycles=0) == 0
    assert "fit_dice" not in read_records(plain / "runs" / "random-seed0.jsonl")[0]
    assert "fit_floor" not in json.loads((plain / "run.json").read_text())["profile"]


def test_extending_a_run_that_cannot_go_on_keeps_its_records(tmp_path, capsys):
    """A run whose last stage labeled the whole pool, extended by a cycle: no frame is left to pick, so the
    command is refused with the reason before it starts, and the run file is as it was."""
    import pytest

    data = write_dataset(tmp_path / "d", 36, seed=7)
    out = tmp_path / "res"
    assert run_cli(data, out, "random", cycles=0) == 0
    pool = len(json.loads((out / "split.json").read_text())["pool"])
    out2 = tmp_path / "res2"
    assert run_cli(data, out2, "random", cycles=1, extra=["--initial", str(pool - 4)]) == 0
    f = out2 / "runs" / "random-seed0.jsonl"
    before = f.read_text()
    assert [r["n_labeled"] for r in read_records(f)] == [pool - 4, pool]
    with pytest.raises(SystemExit, match=f"the pool holds {pool} frames .*at least {pool + 1}"):
        run_cli(data, out2, "random", cycles=2, extra=["--initial", str(pool - 4)])  # refused before it starts
    assert f.read_text() == before


def test_cli_errors_are_one_line_and_leave_no_folder(tmp_path, capsys):
    """Bad arguments and bad dataset files: a one-line error and exit code != 0, no traceback, and a new
    --out folder is not created; a folder of another dataset is refused before it is touched."""
    import pytest

    data = write_dataset(tmp_path / "d", 12, seed=1)
    for flag, value in (("--seeds", "a"), ("--seeds", "0,\u00b2"), ("--seeds", "1" * 5000), ("--budget", "0"), ("--initial", "0"),
                        ("--cycles", "-1"), ("--fit-floor", "1.5"), ("--fit-floor", "nan"), ("--fit-floor", "x")):
        with pytest.raises(SystemExit) as e:
            main(["run", "--dataset", "folder", "--data", str(data), "--profile", "smoke", flag, value,
                  "--out", str(tmp_path / "o1")])
        assert e.value.code == 2 and flag in capsys.readouterr().err
    # a bad strategy spec: refused before --out is made or anything trained (the gamma and aggregation were
    # only checked at the first query, after stage 0's training, with a traceback). An alias, e.g. bvsb, runs
    # under its registered name since 2026-12-07 (test_registry)
    for spec, why in (("unc_ta_coreset:mean:2", "gamma must be in"), ("uncertainty:bogus", "unknown aggregation"),
                      ("foo", "unknown strategy"), ("random:mean:0.5:9", r"NAME\[:aggregation"),
                      ("unc_ta_coreset:mean:x", "not a number"), (",", "names no strategy")):
        with pytest.raises(SystemExit, match=why):
            main(["run", "--dataset", "folder", "--data", str(data), "--profile", "smoke", "--strategies", spec,
                  "--out", str(tmp_path / "o0")])
        assert not (tmp_path / "o0").exists(), spec
    with pytest.raises(SystemExit, match="no such folder .give the --out folder"):
        main(["report", str(tmp_path / "nosuch")])
    (tmp_path / "r" / "runs").mkdir(parents=True)
    (tmp_path / "r" / "runs" / "random-seed0.jsonl").write_text("")
    with pytest.raises(SystemExit, match="holds the run records: give the folder above it"):
        main(["report", str(tmp_path / "r" / "runs")])
    for strategies in ("unc_ta_coreset", "random"):  # (random's was said as a fault of --strategies 'random')
        with pytest.raises(SystemExit, match=r"--gamma must be in \[0, 1\], got -1"):
            main(["run", "--dataset", "folder", "--data", str(data), "--profile", "smoke", "--strategies",
                  strategies, "--gamma", "-1", "--out", str(tmp_path / "o0")])
    assert not (tmp_path / "o0").exists()
    bad = write_dataset(tmp_path / "bad", 12, seed=2)
    sorted((bad / "masks").iterdir())[3].unlink()
    assert run_cli(bad, tmp_path / "o2") == 2
    assert "missing mask" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match="is a file"):
        run_cli(data, tmp_path / "afile")
    out = tmp_path / "o3"
    assert run_cli(data, out, strategies="random", cycles=1) == 0
    other = write_dataset(tmp_path / "other", 12, seed=3)
    for p in list((other / "images").iterdir()) + list((other / "masks").iterdir()):
        p.rename(p.with_name("g" + p.name))  # other frames
    before = (out / "run.json").read_text()
    with pytest.raises(SystemExit, match="another dataset"):
        run_cli(other, out, strategies="random", cycles=1)
    assert (out / "run.json").read_text() == before
    # a damaged line with records after it is named; a cut last line is not an error
    f = out / "runs" / "random-seed0.jsonl"
    lines = f.read_text().splitlines()
    f.write_text("\n".join([lines[0][:-5]] + lines[1:]) + "\n")
    assert main(["report", str(out)]) == 2
    assert "line 1 is not valid JSON" in capsys.readouterr().err
    f.write_text("\n".join(lines[:-1] + [lines[-1][:-5]]) + "\n")
    assert main(["report", str(out)]) == 0


def test_what_a_new_user_meets_is_named_before_anything_is_written(tmp_path, capsys):
    """A fresh machine's first runs: the split files come from the repository when --data has none beside
    it; a folder of another profile names the --profile that gives its recipe; a pool too small for the
    protocol is refused before the results folder is written."""
    import shutil

    import pytest

    from polypal.experiments import cli

    data = write_dataset(tmp_path / "d" / "cvc-clinicdb", 36, seed=8)
    args = cli.argparse.Namespace(dataset="kvasir", data=str(data), splits=None, cvc_split="sequence")
    cli._find_splits(args)
    assert Path(args.splits) == cli.BUNDLED_SPLITS and (cli.BUNDLED_SPLITS / "kvasir_sessile.txt").is_file()
    (tmp_path / "d" / "splits").mkdir()
    shutil.copy(cli.BUNDLED_SPLITS / "cvc_clinicdb_sequences.csv", tmp_path / "d" / "splits")
    args = cli.argparse.Namespace(dataset="cvc", data=str(data), splits=None, cvc_split="sequence")
    cli._find_splits(args)
    assert Path(args.splits) == tmp_path / "d" / "splits"  # beside --data first (download.sh puts them there)
    with pytest.raises(SystemExit, match="no kvasir_sessile.txt .the names of Kvasir-SEG's 196 sessile"):
        cli._find_splits(cli.argparse.Namespace(dataset="kvasir", data=str(data), splits=str(tmp_path),
                                                cvc_split="sequence"))

    out = tmp_path / "res"
    assert run_cli(data, out, "random", cycles=1) == 0
    capsys.readouterr()
    assert run_cli(data, out, "random", cycles=1) == 0  # again: says there is nothing to do
    assert "nothing to do: the 1 run(s) asked for are complete" in capsys.readouterr().out
    # split options for a folder that has its split: refused when they ask for another (they were ignored, the
    # runs going on with the folder's split; a walkthrough, 2026-12-07), accepted when they give the same
    with pytest.raises(SystemExit, match="--split-seed asks for another split than the one"):
        run_cli(data, out, "random", cycles=1, extra=("--split-seed", "1"))
    assert run_cli(data, out, "random", cycles=1, extra=("--split-seed=0",)) == 0
    with pytest.raises(SystemExit, match="--split-seed asks for another split"):  # abbreviated: argparse takes it
        run_cli(data, out, "random", cycles=1, extra=("--split-s", "1"))
    with pytest.raises(SystemExit, match="--profile smoke, which gives the folder's recipe"):
        main(["run", "--dataset", "folder", "--data", str(data), "--strategies", "random", "--seeds", "0",
              "--initial", "6", "--budget", "4", "--cycles", "1", "--cache-dir", str(out / "cache"), "--out", str(out)])
    small = tmp_path / "small"
    with pytest.raises(SystemExit, match=r"the pool holds 24 frames .* 6 \+ 4 x 9 labels .at least 39"):
        run_cli(data, small, "random", cycles=9)
    assert sorted(p.name for p in small.iterdir()) == ["cache"]  # only the frame cache this test put there


def test_a_folder_keeps_its_protocol_and_its_files(tmp_path):
    """Resuming into a results folder with another --initial/--budget, or with other image or mask files
    under the same names, added stages to the same records in silence (a probe: n_labeled 4, 6, 11 in one
    file; a stage trained on emptied masks). Both are refused before anything is written; more cycles
    extend the folder, fewer leave its protocol as it was."""
    import shutil

    import pytest

    data = write_dataset(tmp_path / "d", 36, seed=6)
    out = tmp_path / "res"
    assert run_cli(data, out, "random", cycles=1) == 0
    meta = (out / "run.json").read_text()
    assert json.loads(meta)["protocol"] == [6, 4, 1] and len(json.loads(meta)["data_fingerprint"]) == 64
    with pytest.raises(SystemExit, match=r"protocol 6 \+ 4 x 1, not 5 \+ 4 x 1.*--initial 6 --budget 4"):
        main(["run", "--dataset", "folder", "--data", str(data), "--profile", "smoke", "--strategies", "random",
              "--seeds", "0", "--initial", "5", "--budget", "4", "--cycles", "1", "--out", str(out)])
    emptied = tmp_path / "d2"
    shutil.copytree(data, emptied)
    m = sorted((emptied / "masks").iterdir())[0]
    Image.fromarray(np.zeros_like(np.asarray(Image.open(m)))).save(m)
    with pytest.raises(SystemExit, match="differ from those .* were made on"):
        run_cli(emptied, out, "random", cycles=1)
    assert (out / "run.json").read_text() == meta
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # the same files elsewhere: fine
    assert run_cli(moved, out, "random", cycles=2) == 0
    assert json.loads((out / "run.json").read_text())["protocol"] == [6, 4, 2]
    assert run_cli(moved, out, "random", cycles=1) == 0
    assert json.loads((out / "run.json").read_text())["protocol"] == [6, 4, 2]


def test_bad_video_groups_split_and_threads_get_a_clear_error_before_out_is_written(tmp_path, capsys):
    """A probe: a bad --video-groups file gave a traceback after --out was written; a damaged split.json,
    --threads -1 and a Kvasir folder without its sessile test frames gave tracebacks (the last after
    training, on an empty test set)."""
    import pytest

    data = write_dataset(tmp_path / "d", 36, seed=6)
    bad = {"nofile.json": None, "notjson.json": "{", "list.json": "[1, 2]", "types.json": '{"groups": [1]}'}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        out = tmp_path / f"o-{name}"
        with pytest.raises(SystemExit, match=f"--video-groups .*{name}"):
            run_cli(data, out, "random", cycles=1, extra=["--video-groups", str(tmp_path / name)])
        assert not (out / "run.json").exists() and not (out / "split.json").exists()
    with pytest.raises(SystemExit) as e:
        run_cli(data, tmp_path / "o-threads", "random", cycles=1, extra=["--threads", "-1"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err
    out = tmp_path / "o-split"
    assert run_cli(data, out, "random", cycles=1) == 0
    (out / "split.json").write_text('{"pool": [')
    with pytest.raises(SystemExit, match="split.json is damaged"):
        run_cli(data, out, "random", cycles=1)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "kvasir_sessile.txt").write_text("not-a-frame-here\n")
    with pytest.raises(SystemExit, match="holds none of Kvasir-SEG's sessile frames, its test set .*kvasir_sessile.txt"):
        main(["run", "--dataset", "kvasir", "--data", str(data), "--splits", str(splits), "--profile", "smoke",
              "--strategies", "random", "--seeds", "0", "--initial", "4", "--budget", "2", "--cycles", "1",
              "--out", str(tmp_path / "o-kv")])


def test_another_datasets_folder_is_named_before_any_frame_is_decoded(tmp_path, monkeypatch):
    """A Kvasir-SEG folder given as --dataset cvc decoded every frame and then blamed the protocol ("the pool
    holds 0 frames ... lower --initial, --budget or --cycles"): CVC's sequence list names none of its frames,
    so all went to test. Now the folder is said not to look like CVC-ClinicDB before a frame is decoded, as a
    CVC folder given as --dataset kvasir is said not to look like Kvasir-SEG."""
    import shutil

    import pytest

    import polypal.data
    from polypal.experiments import cli

    def no_decoding(*a, **k):
        raise AssertionError("frames decoded before the dataset was checked")

    monkeypatch.setattr(polypal.data, "load_folder", no_decoding)
    splits = tmp_path / "splits"
    shutil.copytree(cli.BUNDLED_SPLITS, splits)
    kv = write_dataset(tmp_path / "kv", 12, seed=3)  # frame000..: no CVC name, no sessile name

    def sim(dataset, data, out):
        return main(["run", "--dataset", dataset, "--data", str(data), "--splits", str(splits), "--profile",
                     "smoke", "--strategies", "random", "--seeds", "0", "--out", str(out)])

    with pytest.raises(SystemExit, match=r"does not look like CVC-ClinicDB: .*cvc_clinicdb_sequences.csv .* names "
                                         r"none of its 12 frames .*check --dataset and --data"):
        sim("cvc", kv, tmp_path / "o1")
    # a part of Kvasir-SEG without its sessile frames is not called "not Kvasir-SEG" (a review)
    with pytest.raises(SystemExit, match=r"holds none of Kvasir-SEG's sessile frames, its test set .*"
                                         r"kvasir_sessile.txt.*: not Kvasir-SEG, or a part of it without its test "
                                         r"frames; check --dataset and --data"):
        sim("kvasir", kv, tmp_path / "o2")
    cvc = tmp_path / "cvc"  # 4 frames CVC's list names, 8 it does not: those 8 would be one "sequence"
    shutil.copytree(kv, cvc)
    for i, img in enumerate(sorted((cvc / "images").iterdir())[:4]):
        img.rename(cvc / "images" / f"{i + 1}{img.suffix}")
        (cvc / "masks" / img.name).rename(cvc / "masks" / f"{i + 1}{img.suffix}")
    with pytest.raises(SystemExit, match="does not look like CVC-ClinicDB: .* names only 4 of its 12 frames"):
        sim("cvc", cvc, tmp_path / "o3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
    with pytest.raises(AssertionError, match="frames decoded"):  # --cvc-split frame: any names will do
        main(["run", "--dataset", "cvc", "--cvc-split", "frame", "--data", str(kv), "--profile", "smoke",
              "--strategies", "random", "--seeds", "0", "--out", str(tmp_path / "o4")])


def test_a_pool_too_small_is_told_what_fits(tmp_path, capsys):
    """A folder of 30 frames with --dataset folder's protocol (10 + 10 x 2) was told "too few ... lower
    --initial, --budget or --cycles", not by how much. Now the message names the largest --initial, --budget
    and the most --cycles that fit, each one alone, and each does fit (and one more would not)."""
    import pytest

    data = write_dataset(tmp_path / "d", 30, seed=5)
    with pytest.raises(SystemExit, match=r"the pool holds 20 frames .* 10 \+ 10 x 2 labels .*rerun with one of "
                                         r"--initial 9, --budget 9, --cycles 1 \(the other settings as given\)"):
        main(["run", "--dataset", "folder", "--data", str(data), "--profile", "smoke", "--strategies", "random",
              "--seeds", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    # one that fits with a short last query is said so on the console (it was only in a record's notes)
    main(["run", "--dataset", "folder", "--data", str(data), "--profile", "smoke", "--strategies", "random",
          "--seeds", "0", "--initial", "9", "--budget", "9", "--cycles", "2", "--cache-dir", str(tmp_path / "cache"),
          "--out", str(tmp_path / "short")])
    assert "the last query takes the 2 left (stages end at 20)" in capsys.readouterr().out
    from polypal.experiments.cli import _fitting

    def need(i, b, c):
        return i + b * (c - 1) + 1 if c else i

    for pool in range(0, 30):
        for init in range(1, 12):
            for budget in range(1, 8):
                for cycles in range(0, 6):
                    if need(init, budget, cycles) <= pool:
                        continue
                    said = _fitting(pool, init, budget, cycles)
                    if not said:
                        assert pool == 0 or (cycles and pool - 1 < cycles), (pool, init, budget, cycles)
                        continue
                    opts = said.removeprefix("rerun with ").removeprefix("one of ").split(" (")[0]
                    for opt in opts.split(", "):
                        got = dict(zip(opt.split()[::2], map(int, opt.split()[1::2])))
                        i, b, c = got.get("--initial", init), got.get("--budget", budget), got.get("--cycles", cycles)
                        assert need(i, b, c) <= pool and min(i, b) >= 1 and c >= 0, (pool, init, budget, cycles, opt)
                        if len(got) == 1:  # the largest (most cycles) that fits
                            k = next(iter(got))
                            bigger = {"--initial": (i + 1, b, c), "--budget": (i, b + 1, c), "--cycles": (i, b, c + 1)}
                            assert need(*bigger[k]) > pool, (pool, init, budget, cycles, opt)


def test_ctrl_c_says_how_to_go_on_not_a_traceback(tmp_path):
    """Ctrl-C during a run printed a KeyboardInterrupt traceback, which read as a crash (a walkthrough,
    2026-12-07): now one line saying that finished stages are kept and the same command goes on."""
    import signal
    import subprocess
    import sys

    import pytest

    data = write_dataset(tmp_path / "d", 12, seed=1)
    p = subprocess.Popen([sys.executable, "-u", "-m", "polypal.experiments.cli", "run", "--dataset", "folder", "--data",
                          str(data), "--profile", "smoke", "--strategies", "random", "--seeds", "0", "--initial", "4",
                          "--budget", "2", "--cycles", "1", "--out", str(tmp_path / "o")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:  # past the imports: the split is said before the first training
        if line.startswith("split:"):
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the run finished before the interrupt")
    # (tqdm may add an "Exception ignored in tqdm.__del__" of a bar cut off mid-construction: not ours)
    assert p.returncode == 130 and "KeyboardInterrupt" not in err and "run the same command again" in err, \
        (p.returncode, err)
