"""The split code on synthetic names and sequences (the real-data checks live in test_cli_report)."""

from __future__ import annotations

import json

import pytest

from polypal.experiments.splits import cvc_split, kvasir_split, read_names, read_sequences, save_split


def names_of(n, prefix="f"):
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_read_names_strips_extensions_and_blank_lines(tmp_path):
    p = tmp_path / "n.txt"
    p.write_text("a.jpg\n\n  b.png  \nc\nd.e.jpg\n")
    assert read_names(p) == ["a", "b", "c", "d.e"]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_kvasir_split_partitions_and_excludes_test(seed):
    names = names_of(300)
    sessile = names[::7] + ["not_in_the_folder"]
    s = kvasir_split(names, sessile, n_val=50, seed=seed)
    test, val, pool = set(s["test"]), set(s["val"]), set(s["pool"])
    assert test == set(names[::7])  # every sessile frame present, nothing else
    assert len(val) == 50 and len(s["val"]) == 50
    assert not test & val and not test & pool and not val & pool
    assert test | val | pool == set(names)
    assert s["test"] == sorted(s["test"]) and s["val"] == sorted(s["val"])
    assert kvasir_split(names, sessile, n_val=50, seed=seed) == s  # deterministic per seed


def test_kvasir_split_seed_changes_val_only():
    names = names_of(200)
    a, b = kvasir_split(names, names[:20], n_val=30, seed=0), kvasir_split(names, names[:20], n_val=30, seed=1)
    assert a["test"] == b["test"] and a["val"] != b["val"]


def test_kvasir_split_small_folder_keeps_half_for_the_pool():
    names = names_of(30)
    s = kvasir_split(names, names[:10], n_val=100)
    assert len(s["val"]) == 10 and len(s["pool"]) == 10  # min(n_val, rest // 2)


def synthetic_sequences(n_seq=30, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    seq, names = {}, []
    k = 1
    for s in range(1, n_seq + 1):
        for _ in range(int(rng.integers(5, 30))):
            seq[str(k)] = s
            names.append(str(k))
            k += 1
    return names, seq


@pytest.mark.parametrize("seed", [0, 3])
def test_cvc_split_keeps_sequences_whole(seed):
    names, seq = synthetic_sequences(seed=seed)
    s = cvc_split(names, seq, n_test=112, n_val=100, seed=seed)
    assert s["mode"] == "sequence"
    parts = {k: set(s[k]) for k in ("test", "val", "pool")}
    assert parts["test"] | parts["val"] | parts["pool"] == set(names)
    assert sum(len(v) for v in parts.values()) == len(names)
    by = {k: {seq[n] for n in v} for k, v in parts.items()}
    assert not by["test"] & by["val"] and not by["test"] & by["pool"] and not by["val"] & by["pool"]
    # whole sequences are added until the target is reached: at most one sequence over it
    longest = max(sum(1 for v in seq.values() if v == q) for q in set(seq.values()))
    assert 112 <= len(s["test"]) < 112 + longest and 100 <= len(s["val"]) < 100 + longest
    assert s["sequences"]["test"] == sorted(by["test"]) and s["sequences"]["val"] == sorted(by["val"])
    assert cvc_split(names, seq, seed=seed) == s
    assert cvc_split(names, seq, seed=seed + 1)["test"] != s["test"]


def test_cvc_split_zero_padded_names_and_unknown_frames():
    names, seq = synthetic_sequences(n_seq=20)
    padded = [f"{int(n):04d}" for n in names] + ["extra1", "extra2"]  # two frames with no sequence
    s = cvc_split(padded, seq, n_test=40, n_val=40, seed=2)
    where = {n: k for k in ("test", "val", "pool") for n in s[k]}
    assert set(where) == set(padded)
    # frames with no known sequence are one group: they land in the same part
    assert where["extra1"] == where["extra2"]
    # the recorded sequence ids are the real ones, found through the unpadded name
    for k in ("test", "val"):
        want = {seq[n.lstrip("0")] if not n.startswith("extra") else -1 for n in s[k]}
        assert s["sequences"][k] == sorted(want)
    for k in ("test", "val", "pool"):
        seqs = {seq[n.lstrip("0")] for n in s[k] if not n.startswith("extra")}
        others = [p for p in ("test", "val", "pool") if p != k]
        for o in others:
            assert not seqs & {seq[n.lstrip("0")] for n in s[o] if not n.startswith("extra")}


def test_cvc_split_by_frame_mode_and_without_sequences():
    names = names_of(612)
    for s in (cvc_split(names, None, seed=1), cvc_split(names, {"x": 1}, seed=1, mode="frame")):
        assert s["mode"] == "frame"
        assert len(s["test"]) == 112 and len(s["val"]) == 100 and len(s["pool"]) == 400
        assert set(s["test"]) | set(s["val"]) | set(s["pool"]) == set(names)
        assert not set(s["test"]) & set(s["val"])
    assert cvc_split(names, None, seed=1) == cvc_split(list(reversed(names)), None, seed=1)  # order-free


def test_read_sequences_csv(tmp_path):
    p = tmp_path / "seq.csv"
    p.write_text("frame,sequence\n1.png,1\n2,1\n3,2\n\n")
    assert read_sequences(p) == {"1": 1, "2": 1, "3": 2}
    q = tmp_path / "seq2.csv"
    q.write_text("video_id,image\n4,a.tif\n5,b\n")
    assert read_sequences(q) == {"a": 4, "b": 5}


def test_save_split_roundtrips(tmp_path):
    s = kvasir_split(names_of(20), ["f0001"], n_val=4)
    save_split(s, tmp_path / "deep" / "split.json")
    assert json.loads((tmp_path / "deep" / "split.json").read_text()) == s
