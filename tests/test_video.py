"""polypal-ingest and one-frame-per-group selection: tiny videos generated here with PyAV, and one clip
encoded from real CVC-ClinicDB frames when ../shared/datasets is present."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import av  # a requirement: CI must fail, not skip, without it
import numpy as np
import pytest
from PIL import Image, ImageFilter

from polypal.serving.framestore import FrameStore  # noqa: E402
from polypal.vocab import check_name  # noqa: E402
from polypal.video import dedupe_candidates, dedupe_tiers, load_index, sanitize, spread_across_videos  # noqa: E402
from polypal.video import frames as F  # noqa: E402
from polypal.video.select import grouped_candidates, plan_universe  # noqa: E402
from polypal.video.ingest import main as ingest_main  # noqa: E402

DATA = Path(os.environ.get("POLYP_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
CVC = DATA / "cvc-clinicdb" / "images"
SEQ_CSV = DATA / "splits" / "cvc_clinicdb_sequences.csv"


def write_video(path, frames, fps=25, codec="libx264"):
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=fps)
    s.height, s.width = frames[0].shape[:2]
    s.pix_fmt = "yuv420p"
    for a in frames:
        for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()
    return path


def scene(seed, h=120, w=160):
    """A sharp, textured frame (blocks of random brightness), reddish like mucosa (red well above green
    and blue, so not out-of-body); different seeds give different scenes."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 236, (h // 10, w // 10, 1)).astype(np.float64)
    tint = np.stack([np.ones_like(base[..., 0]), rng.uniform(0.3, 0.6, base.shape[:2]),
                     rng.uniform(0.3, 0.6, base.shape[:2])], axis=-1)
    return np.kron(np.round(base * tint).astype(np.uint8), np.ones((10, 10, 1), np.uint8))


def pngs(d):
    return sorted(p.name for p in Path(d).glob("*.png"))


@pytest.fixture
def clip(tmp_path):
    """20 frames: 4 scenes x 5 near-identical frames (a little noise each)."""
    rng = np.random.default_rng(0)
    fr = [np.clip(scene(s).astype(int) + rng.integers(-3, 4, (120, 160, 3)), 0, 255).astype(np.uint8)
          for s in range(4) for _ in range(5)]
    return write_video(tmp_path / "Patient 7 (left).mp4", fr)


def test_a_playlist_is_not_a_video_and_opens_no_other_file(tmp_path, capsys):
    """An HLS playlist (.m3u8) names other files, which FFmpeg opened and decoded: handed to polypal-ingest,
    one put another local video's frames (another procedure's, another patient's) into the studies folder.
    Only video containers are opened now, so a playlist is refused by name and nothing is written."""
    elsewhere = tmp_path / "private"
    elsewhere.mkdir()
    write_video(elsewhere / "other_patient.ts", [scene(s) for s in range(10)])
    st = tmp_path / "st"
    for name, target in (("list.m3u8", elsewhere / "other_patient.ts"),
                         ("list2.m3u8", f"file://{elsewhere / 'other_patient.ts'}")):
        pl = tmp_path / name
        pl.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:0.4,\n{target}\n#EXT-X-ENDLIST\n")
        assert ingest_main([str(pl), "--studies", str(st), "--every", "1", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert str(pl) in err and "an HLS playlist" in err and "ingest the video files themselves" in err, err
        assert pngs(st) == []
    # the video itself, named on the command line, is fine
    assert ingest_main([str(elsewhere / "other_patient.ts"), "--studies", str(st), "--every", "1", "--quiet"]) == 0
    assert len(pngs(st)) == 10


def test_a_playlist_is_said_to_be_one_whatever_its_name(tmp_path, capsys):
    """An .m3u8 or an ffconcat list was refused as "not a readable video in an accepted container ...:
    Invalid data found when processing input". Now it is said to be a playlist, which polyp-al does not open,
    and to ingest the video files themselves; found by its first bytes whatever the file's name, by its
    extension too."""
    other = write_video(tmp_path / "other.mp4", [scene(s) for s in range(3)])
    st = tmp_path / "st"
    files = {"hls.m3u8": ("an HLS playlist", f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:0.4,\n{other}\n"),
             "hls-named.mp4": ("an HLS playlist", f"\ufeff#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:0.4,\n{other}\n"),
             "plain.m3u": ("an M3U playlist", f"{other}\n"),
             "list.txt": ("an ffconcat list", f"ffconcat version 1.0\nfile '{other}'\n"),
             "concat.mkv": ("an ffconcat list", f"  ffconcat version 1.0\nfile '{other}'\n")}
    for name, (kind, text) in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert ingest_main([str(tmp_path / name), "--studies", str(st), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"error: {tmp_path / name}: {kind}, which names other files: polyp-al does not open playlists" in err \
            and "ingest the video files themselves" in err and "Invalid data" not in err, err
        assert pngs(st) == []
    assert ingest_main([str(other), "--studies", str(st), "--quiet"]) == 0 and len(pngs(st)) == 3


def test_frames_ids_rate_and_groups(clip, tmp_path):
    st = tmp_path / "st"
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    names = pngs(st)
    assert names == [f"Patient_7_left_{i:06d}.png" for i in range(20)]
    for n in names:
        check_name("image id", n[:-4])
    idx = load_index(st)
    assert idx.summary() == {"videos": 1, "frames": 20, "groups": 4, "flagged": 0}
    assert {idx.groups[f"Patient_7_left_{i:06d}"] for i in range(5)} == {"Patient_7_left_000000"}
    assert len(idx.representatives) == 4 and {idx.groups[r] for r in idx.representatives} == set(idx.groups.values())
    assert not (st / ".polypal" / "ingest-tmp").exists()
    # another rate on another folder: every 3rd frame; --fps 5 of a 25 fps video = every 5th
    assert ingest_main([str(clip), "--studies", str(tmp_path / "e3"), "--every", "3", "--quiet"]) == 0
    assert pngs(tmp_path / "e3") == [f"Patient_7_left_{i:06d}.png" for i in range(0, 20, 3)]
    assert ingest_main([str(clip), "--studies", str(tmp_path / "f5"), "--fps", "5", "--quiet"]) == 0
    assert pngs(tmp_path / "f5") == [f"Patient_7_left_{i:06d}.png" for i in range(0, 20, 5)]
    a = np.asarray(Image.open(st / names[7]))
    err = [np.abs(a.astype(int) - scene(k)).mean() for k in range(4)]  # frame 7 is scene 1, decoded
    assert a.shape == (120, 160, 3) and err[1] < 12 and min(err[0], err[2], err[3]) > 4 * err[1]


def test_idempotent_and_name_collision(clip, tmp_path, capsys):
    st = tmp_path / "st"
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in st.glob("*.png")}
    rows = sqlite3.connect(st / ".polypal" / "video.sqlite").execute("SELECT * FROM frames ORDER BY id").fetchall()
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    assert "nothing added" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in st.glob("*.png")} == before
    assert sqlite3.connect(st / ".polypal" / "video.sqlite").execute(
        "SELECT * FROM frames ORDER BY id").fetchall() == rows
    # a different video with the same file name gets its own prefix, nothing overwritten
    other = tmp_path / "other"
    other.mkdir()
    write_video(other / clip.name, [scene(9)] * 3)
    assert ingest_main([str(other / clip.name), "--studies", str(st), "--quiet"]) == 0
    assert len(before) + 3 == len(pngs(st)) and "Patient_7_left-2_000002.png" in pngs(st)
    assert {p.name: p.stat().st_mtime_ns for p in st.glob("*.png") if p.name in before} == before


def test_bad_inputs_named_and_nothing_written(clip, tmp_path, capsys):
    st = tmp_path / "st"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    data = write_video(tmp_path / "cut.mkv", [scene(s) for s in range(30)]).read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    for bad in (text, empty, cut, tmp_path / "missing.mp4"):
        assert ingest_main([str(bad), "--studies", str(st), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert str(bad) in err and "[Errno" not in err, err  # FFmpeg's words, not its error code
        assert pngs(st) == [] and not (st / ".polypal" / "ingest-tmp").exists()
    assert "truncated" in (ingest_main([str(cut), "--studies", str(st), "--quiet"]) and capsys.readouterr().err)
    # one bad video among good ones: the good one is ingested, the exit code still says failure
    assert ingest_main([str(text), str(clip), "--studies", str(st), "--quiet"]) == 1
    assert len(pngs(st)) == 20


def test_interrupted_move_resumes(clip, tmp_path, monkeypatch, capsys):
    """A failure while frames are moved into place: every frame there is whole, the video is not marked
    done, and the next run finishes it without duplicates."""
    import polypal.video.ingest as ing

    st, real, calls = tmp_path / "st", os.link, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(ing.os, "link", flaky)
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "No space left" in err and "3 frames moved" in err and len(pngs(st)) == 3
    assert "3 frame(s) of them are in" in err and "nothing was written" not in err, err
    assert all(Image.open(p).size == (160, 120) for p in st.glob("*.png"))
    assert not (st / ".polypal" / "ingest-tmp").exists()
    monkeypatch.setattr(ing.os, "link", real)
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    assert '"written": 17' in capsys.readouterr().out
    assert pngs(st) == [f"Patient_7_left_{i:06d}.png" for i in range(20)]
    assert load_index(st).summary() == {"videos": 1, "frames": 20, "groups": 4, "flagged": 0}


def test_frame_ids_taken_by_other_files_are_never_replaced(clip, tmp_path, capsys):
    """Frame ids are predictable (<video>_<frame>): a file already there under one (a client's upload, in
    any image format) is left as it is, and the video is ingested under another name."""
    st = tmp_path / "st"
    st.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(st / "Patient_7_left_000001.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(st / "Patient_7_left_000002.jpg")
    # any letter case of the extension is the same frame id to the datastore: "-2" is taken that way
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(st / "Patient_7_left-2_000003.Png", format="PNG")
    before = {p.name: p.read_bytes() for p in st.iterdir()}
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "ingested as Patient_7_left-3" in out.err and '"video": "Patient_7_left-3"' in out.out
    assert all((st / n).read_bytes() == b for n, b in before.items())
    assert pngs(st) == sorted(["Patient_7_left_000001.png"] + [f"Patient_7_left-3_{i:06d}.png" for i in range(20)])
    assert {r for r in load_index(st).summary()} and load_index(st).summary()["frames"] == 20
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0  # a re-run adds nothing
    assert "already ingested" in capsys.readouterr().out


def test_frames_over_the_pixel_cap_are_refused(clip, tmp_path, capsys):
    from polypal.data import images

    st, was = tmp_path / "st", images.MAX_PIXELS
    images.set_max_pixels(160 * 120 - 1)  # the clip's frames are 160 x 120
    try:
        assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 1
    finally:
        images.set_max_pixels(was)
    err = capsys.readouterr().err
    assert "160 x 120 pixels are over the cap" in err and "Patient 7 (left).mp4" in err
    assert pngs(st) == []


def test_served_folder_sees_new_frames(clip, tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    Image.fromarray(scene(5)).save(st / "still.png")
    store = FrameStore(st)
    store.reconcile()
    assert store.image_ids() == ["still"]
    assert ingest_main([str(clip), "--studies", str(st), "--quiet", "--every", "5"]) == 0
    assert sorted(FrameStore(st).image_ids()) == ["Patient_7_left_000000", "Patient_7_left_000005",
                                                  "Patient_7_left_000010", "Patient_7_left_000015", "still"]


def test_flags_black_overexposed_blurred_out_of_body():
    sharp = scene(3, 288, 384)
    assert F.flags(F.measure(sharp)) == []
    assert F.flags(F.measure((sharp * 0.05).astype(np.uint8))) == ["black"]
    assert F.flags(F.measure(np.full_like(sharp, 252))) == ["overexposed"]
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(4)))
    assert F.flags(F.measure(blurred)) == ["blurred"]
    # out of body: the same texture in neutral grey or in cool colours (drapes, a room); a warm scene is not
    assert F.flags(F.measure(np.repeat(sharp[..., :1], 3, axis=-1))) == ["out_of_body"]
    assert F.flags(F.measure(np.ascontiguousarray(sharp[..., ::-1]))) == ["out_of_body"]
    assert F.measure(sharp)["red"] == 1.0 and F.measure(np.full_like(sharp, 128))["red"] == 0.0
    dark_edges = sharp.copy()
    dark_edges[:, :150] = 5  # unlit pixels have no colour: they neither count for nor against
    assert F.flags(F.measure(dark_edges)) == []


def test_sanitize():
    assert sanitize("my clip (1)") == "my_clip_1"
    assert sanitize("..x..y") == "x_y" and sanitize("") == "video" and sanitize("***") == "video"
    long = sanitize("a" * 400)
    check_name("image id", f"{long}-99_{123456:06d}")


def test_dedupe_candidates():
    groups = {"a1": "a1", "a2": "a1", "a3": "a1", "b1": "b1", "b2": "b1", "c1": "c1", "d1": "d1", "d2": "d1"}
    reps = {"a2", "b1", "c1", "d1"}
    flagged = {"c1", "d1"}
    # strategy order: a3 first (non-representative), a1, x (not from a video), b2, c1 (flagged), d2
    ids = ["a3", "a1", "x", "b2", "b1", "c1", "d2"]
    out = dedupe_candidates(ids, groups, flagged, reps)
    assert out == ["x", "b1", "a3", "d2", "c1"]
    assert dict(dedupe_tiers(ids, groups, flagged, reps)) == {"x": 0, "b1": 0, "a3": 1, "d2": 1, "c1": 3}
    # the representative is served for its group when it is a candidate, at the group's first position
    assert dedupe_candidates(["a3", "a2", "b2"], groups, (), reps) == ["a2", "b2"]
    # a group that already holds a labeled frame comes after fresh groups
    assert dedupe_candidates(["b1", "a2", "c1"], groups, (), reps, labeled={"a1"}) == ["b1", "c1", "a2"]
    assert dedupe_candidates(["b1", "a2", "c1"], groups, flagged, reps, max_tier=0) == ["b1", "a2"]
    # no video data at all: unchanged
    assert dedupe_candidates(["q", "p", "q"], {}, (), None) == ["q", "p"]
    # property: never two of one group in the output, and nothing invented
    rng = np.random.default_rng(0)
    for _ in range(200):
        pool = [f"f{i}" for i in range(40)]
        g = {f: f"g{rng.integers(0, 12)}" for f in pool if rng.random() < 0.8}
        fl = {f for f in pool if rng.random() < 0.2}
        rp = {next(f for f in pool if g.get(f) == gg) for gg in set(g.values())}
        order = list(rng.permutation(pool))
        out = dedupe_candidates(order, g, fl, rp, labeled=set(order[:3]))
        assert set(out) <= set(order) and len({g.get(f, f) for f in out}) == len(out)
        assert len(out) == len({g.get(f, f) for f in order})
        tiers = [t for _, t in dedupe_tiers(order, g, fl, rp, labeled=set(order[:3]))]
        assert tiers == sorted(tiers)


def test_grouped_candidates_for_the_simulation():
    names = ["a1", "a2", "b1", "b2", "c1", "s"]
    groups = {"a1": "a1", "a2": "a1", "b1": "b1", "b2": "b1", "c1": "c1"}
    # a1 labeled: group a is done; b's representative b2; c1 flagged; the still s is its own group
    assert grouped_candidates(names, [0], groups, {"c1"}, {"a2", "b2", "c1"}) == [3, 5]
    # nothing clean left: second frames of labeled groups (one per group), then flagged ones
    assert grouped_candidates(names, [0, 3, 5], groups, {"c1"}, {"a2", "b2", "c1"}) == [1, 2]
    assert grouped_candidates(names, [0, 3, 5], groups, {"c1"}, {"a2", "b2", "c1"}, need=3) == [1, 2, 4]
    # a simulation's stage needs its budget: fewer clean representatives than it widens to one frame per
    # group of any tier, then to every unlabeled frame (before, a budget of 3 got 2 picks: stages of
    # different sizes that the report could no longer pair with Random's)
    assert grouped_candidates(names, [0], groups, {"c1"}, {"a2", "b2", "c1"}, need=3) == [1, 3, 5]  # tier by tier:
    assert grouped_candidates(names, [0], groups, {"c1"}, {"a2", "b2", "c1"}, need=4) == [1, 3, 4, 5]  # flagged last
    assert grouped_candidates(names, [0], groups, {"c1"}, {"a2", "b2", "c1"}, need=5) == [1, 2, 3, 4, 5]


def test_plan_universe_with_a_real_strategy(clip, tmp_path):
    """The call the server's planner makes: a plan over plan_universe never holds two frames of a group."""
    from polypal.sampler import PoolInfo, select

    st = tmp_path / "st"
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    idx = load_index(st)
    universe = sorted(idx.video_of) + ["still_1", "still_2"]
    labeled = {"Patient_7_left_000001"}  # a frame of the first group
    sub = plan_universe(universe, labeled, idx.groups, idx.flagged, idx.representatives)
    assert len(sub) == 1 + 3 + 2  # the label, one representative of each of the 3 other groups, 2 stills
    lab = [k for k, i in enumerate(sub) if i in labeled]
    for name in ("random", "ta_coreset"):
        rng = np.random.default_rng(0)
        info = PoolInfo(n=len(sub), scores=rng.random(len(sub)), latents=rng.random((len(sub), 4)))
        picks = [sub[j] for j in select(name, info, lab, 10, seed=1).indices]
        assert len(picks) == 5 and len({idx.groups.get(p, p) for p in picks} | {"Patient_7_left_000000"}) == 6


def test_spread_across_videos():
    video_of = {f"a{i}": "A" for i in range(10)} | {f"b{i}": "B" for i in range(3)} | {"c0": "C"}
    ranked = [f"a{i}" for i in range(10)] + ["b0", "b1", "b2", "c0", "still"]
    # 3 videos (+ a still, not capped), batch of 6: at most 2 per video, rank order otherwise
    out = spread_across_videos(ranked, video_of, 6)
    assert out[:6] == ["a0", "a1", "b0", "b1", "c0", "still"] and sorted(out) == sorted(ranked)
    assert spread_across_videos(ranked, video_of, 6, max_per_video=4)[:6] == ["a0", "a1", "a2", "a3", "b0", "b1"]
    # one video only: nothing to spread, the batch is still full
    assert spread_across_videos([f"a{i}" for i in range(10)], video_of, 4)[:4] == ["a0", "a1", "a2", "a3"]
    # too few other frames: the cap leaves the batch short, the best-ranked deferred fill it
    assert spread_across_videos(["a0", "a1", "a2", "b0"], video_of, 4) == ["a0", "a1", "b0", "a2"]


@pytest.mark.realdata
def test_real_clip_groups_near_duplicates(tmp_path):
    if not CVC.is_dir() or not SEQ_CSV.exists():
        pytest.skip(f"real-data clip needs CVC-ClinicDB at {CVC} and {SEQ_CSV} (set POLYP_DATA)")
    from polypal.experiments.splits import read_sequences

    seq = read_sequences(SEQ_CSV)
    by = {}
    for n in sorted(seq, key=int):
        by.setdefault(seq[n], []).append(n)
    # two sequences back to back, each frame held for 3 video frames with a 1-px-per-frame camera drift: a 25 fps clip
    fr = []
    for s in (1, 2):
        for n in by[s][:4]:
            a = np.asarray(Image.open(CVC / f"{n}.png").convert("RGB"))
            fr += [np.ascontiguousarray(a[:286, k:k + 380]) for k in (0, 1, 2)]
    clip = write_video(tmp_path / "cvc_seq1_seq2.mp4", fr)
    st = tmp_path / "st"
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    idx = load_index(st)
    assert len(idx.video_of) == 24
    ids = sorted(idx.video_of)
    grp = [idx.groups[i] for i in ids]
    # a still and its 1-px shifted copy are near-duplicates; nothing groups across the two sequences
    con = sqlite3.connect(st / ".polypal" / "video.sqlite")
    h = [r[0] for r in con.execute("SELECT dhash FROM frames ORDER BY frame")]
    assert max(F.hamming(h[k], h[k + 1]) for k in range(0, 24, 3)) <= F.DUP_BITS
    assert min(F.hamming(a, b) for a in h[:12] for b in h[12:]) > F.DUP_BITS
    assert not set(grp[:12]) & set(grp[12:])
    assert 2 <= len(set(grp)) <= 12, grp
    assert len(dedupe_candidates(ids, idx.groups, idx.flagged, idx.representatives)) == len(set(grp))


def _pool(n_a=60, n_b=4, n_c=4, stills=0, seed=0):
    """A pool dominated by one video (A), two short ones (B, C) and some stills; A's frames are the most
    uncertain and the farthest apart, so an uncapped strategy fills the batch from A."""
    from polypal.sampler import PoolInfo

    rng = np.random.default_rng(seed)
    vids = ["A"] * n_a + ["B"] * n_b + ["C"] * n_c + [None] * stills
    scores = np.concatenate([0.5 + 0.5 * rng.random(n_a), 0.4 * rng.random(len(vids) - n_a)])
    lat = np.concatenate([10 * rng.random((n_a, 3)), rng.random((len(vids) - n_a, 3))]).astype(np.float64)
    return vids, PoolInfo(n=len(vids), scores=scores, latents=lat, image_features=lat)


def test_capped_select_spreads_a_pool_dominated_by_one_video():
    from collections import Counter

    from polypal.sampler import select
    from polypal.video import capped_select

    vids, info = _pool()
    labeled = [0, 60]  # one frame of A, one of B
    for name in ("random", "uncertainty", "ta_coreset", "pca_coreset", "unc_ta_coreset"):
        plain = select(name, info, labeled, 12, seed=3)
        if name != "random":
            assert Counter(vids[j] for j in plain.indices)["A"] >= 9, name  # uncapped: mostly A
        sel = capped_select(name, info, labeled, 12, vids, seed=3)  # auto: ceil(12 / 3) = 4 per video ...
        c = Counter(vids[j] for j in sel.indices)
        assert len(sel) == 12 and len(set(sel.indices.tolist())) == 12 and not set(sel.indices.tolist()) & {0, 60}
        # ... but B has only 3 unlabeled frames: 4 + 3 + 4 < 12, so the cap is raised to 5 to fill the batch
        assert c == {"A": 5, "B": 3, "C": 4}, (name, c)
        assert "at most 5 frames per video (raised from 4" in sel.notes[-1], sel.notes
        c9 = Counter(vids[j] for j in capped_select(name, info, labeled, 9, vids, seed=3).indices)
        assert c9 == {"A": 3, "B": 3, "C": 3}, (name, c9)  # 9 / 3 videos: exactly 3 each
        assert len(sel.picked_by) == 12
        # deterministic
        again = capped_select(name, info, labeled, 12, vids, seed=3)
        assert again.indices.tolist() == sel.indices.tolist() and again.picked_by == sel.picked_by
        # an explicit cap; 'off' and no video info give the strategy's own selection
        c2 = Counter(vids[j] for j in capped_select(name, info, labeled, 12, vids, cap=6, seed=3).indices)
        assert c2["A"] == 6 and len(c2) == 3 and sum(c2.values()) == 12, c2
        for same in (capped_select(name, info, labeled, 12, vids, cap="off", seed=3),
                     capped_select(name, info, labeled, 12, [None] * info.n, seed=3)):
            assert same.indices.tolist() == plain.indices.tolist()


def test_capped_select_is_the_greedy_rule_under_the_cap():
    """uncertainty and k-center under the cap = their greedy rule over the videos still below it."""
    from polypal.sampler import k_center_greedy
    from polypal.video import capped_select

    vids, info = _pool(stills=3, seed=1)
    labeled, cap, b = [1, 62], 3, 10

    def reference(pick_next):
        picked, count = [], {}
        while len(picked) < b:
            ok = [j for j in range(info.n) if j not in labeled and j not in picked
                  and (vids[j] is None or count.get(vids[j], 0) < cap)]
            j = pick_next(picked, ok)
            picked.append(j)
            if vids[j] is not None:
                count[vids[j]] = count.get(vids[j], 0) + 1
        return picked

    unc = reference(lambda picked, ok: max(ok, key=lambda j: (info.scores[j], -j)))
    assert capped_select("uncertainty", info, labeled, b, vids, cap=cap).indices.tolist() == unc
    kc = reference(lambda picked, ok: int(k_center_greedy(info.latents, labeled + picked, 1, candidates=ok)[0]))
    assert capped_select("ta_coreset", info, labeled, b, vids, cap=cap).indices.tolist() == kc


def test_capped_select_keeps_the_papers_split_when_the_cap_binds():
    """unc_ta_coreset under a binding cap: round(gamma * B) picks by uncertainty, the rest by k-center, as
    without the cap (a correctness review: each rerun split the shortfall by gamma again while the k-center
    picks after a capped one were dropped, so gamma 0.5 gave about 89% uncertainty picks)."""
    from polypal.sampler import PoolInfo
    from polypal.video import capped_select

    rng = np.random.default_rng(0)
    n_vid, per = 10, 30
    n = n_vid * per
    vids = [f"v{j // per}" for j in range(n)]
    for t in range(3):
        latents = rng.normal(size=(n, 8)) + np.repeat(rng.normal(size=(n_vid, 8)) * 3, per, axis=0)
        scores = rng.random(n) + np.repeat(rng.random(n_vid), per)  # some videos far more uncertain
        info = PoolInfo(n=n, scores=scores, latents=latents)
        labeled = rng.choice(n, 20, replace=False)
        for gamma in (0.25, 0.5, 0.75):
            sel = capped_select("unc_ta_coreset", info, labeled, 20, vids, seed=t, gamma=gamma)
            by_unc = sum(p in ("uncertainty", "both") for p in sel.picked_by)
            assert by_unc == round(gamma * 20), (t, gamma, sel.picked_by, sel.notes)
            assert "selection runs" in sel.notes[-1]  # the cap did bind


def test_capped_select_property():
    from collections import Counter

    from polypal.sampler import PoolInfo
    from polypal.video import capped_select
    from polypal.video.select import fill_cap

    rng = np.random.default_rng(0)
    for t in range(60):
        n = int(rng.integers(5, 60))
        vids = [None if rng.random() < 0.1 else f"v{rng.integers(0, 1 + rng.integers(1, 6))}" for _ in range(n)]
        info = PoolInfo(n=n, scores=rng.random(n), latents=rng.random((n, 3)))
        labeled = rng.choice(n, size=int(rng.integers(0, n // 2)), replace=False)
        b = int(rng.integers(1, 20))
        name = ("random", "uncertainty", "ta_coreset", "unc_ta_coreset")[t % 4]
        sel = capped_select(name, info, labeled, b, vids, seed=t)
        left = [j for j in range(n) if j not in set(labeled.tolist())]
        assert len(sel) == min(b, len(left)) and len(set(sel.indices.tolist())) == len(sel)
        assert not set(sel.indices.tolist()) & set(labeled.tolist())
        per = Counter(vids[j] for j in left if vids[j] is not None)
        if per:
            cap = fill_cap(per, sum(v is None for j, v in enumerate(vids) if j in left), min(b, len(left)),
                           -(-min(b, len(left)) // len(per)))
            got = Counter(vids[j] for j in sel.indices if vids[j] is not None)
            assert max(got.values(), default=0) <= cap, (t, got, cap)


def test_video_split_never_splits_a_video():
    from polypal.experiments.splits import video_split
    from polypal.video.store import videos_from_ids

    names = [f"proc{v}_{f:06d}" for v in range(9) for f in range(0, 30 * (v % 3 + 1), 3)] + ["still_a", "still_b"]
    vo = videos_from_ids(names)
    assert len(vo) == len(names) - 2 and vo["proc3_000009"] == "proc3"
    sp = video_split(names, vo, n_test=20, n_val=20, seed=0)
    assert sorted(sp["test"] + sp["val"] + sp["pool"]) == sorted(names)
    side = {n: k for k in ("test", "val", "pool") for n in sp[k]}
    for v in set(vo.values()):
        assert len({side[n] for n in names if vo.get(n) == v}) == 1, v
    assert len(sp["test"]) >= 20 and len(sp["val"]) >= 20 and sp["pool"] and sp["mode"] == "video"
    assert sp == video_split(list(reversed(names)), vo, n_test=20, n_val=20, seed=0)  # deterministic
    assert sp != video_split(names, vo, n_test=20, n_val=20, seed=1)
    # three videos: one each, whatever the sizes asked
    three = [f"p{v}_{f:06d}" for v in range(3) for f in range(5)]
    sp3 = video_split(three, videos_from_ids(three), n_test=100, n_val=100)
    assert all(len(sp3[k]) == 5 for k in ("test", "val", "pool"))
    with pytest.raises(ValueError, match="at least 3 videos"):
        video_split(three[:10], videos_from_ids(three[:10]), 2, 2)


def test_old_records_get_the_red_column(tmp_path):
    """A video.sqlite written before the out-of-body measure: opened for a new ingest, it gains the column;
    its old frames keep their flags (no measure, no out_of_body flag)."""
    from polypal.video.store import VideoDB, db_path

    st = tmp_path / "st"
    (st / ".polypal").mkdir(parents=True)
    c = sqlite3.connect(db_path(st))
    c.executescript("CREATE TABLE frames (id TEXT PRIMARY KEY, video TEXT NOT NULL, frame INTEGER NOT NULL, "
                    "time_s REAL, dhash TEXT NOT NULL, lapvar REAL, sharp REAL, mean REAL, bright REAL, "
                    "flags TEXT NOT NULL DEFAULT '', grp TEXT, representative INTEGER NOT NULL DEFAULT 0);"
                    "INSERT INTO frames (id, video, frame, dhash) VALUES ('old_000000', 'old', 0, '00');")
    c.commit()
    c.close()
    VideoDB(st)
    cols = [r[1] for r in sqlite3.connect(db_path(st)).execute("PRAGMA table_info(frames)")]
    assert "red" in cols and load_index(st).video_of == {"old_000000": "old"}
    assert F.flags({"mean": 100, "bright": 0, "sharp": 10}) == []


def test_polypal_sim_split_by_video_and_cap(tmp_path):
    """polypal-sim on a folder of <video>_<frame> frames: --split-by-video on puts whole videos on each side,
    --video-cap auto keeps every query within its cap; without them the split is by frame (unchanged)."""
    import json
    import re
    from collections import Counter

    from conftest import write_dataset
    from polypal.experiments.cli import main
    from polypal.experiments.simulate import read_records

    d = write_dataset(tmp_path / "d", 44, seed=3)
    names = [f"procA_{i:06d}" for i in range(16)] + [f"proc{v}_{i:06d}" for v in "BCDEFGH" for i in range(4)]
    for sub in ("images", "masks"):
        for k, p in enumerate(sorted((d / sub).glob("*.jpg"))):
            p.rename(p.with_name(names[k] + ".jpg"))

    def sim(out, *extra):
        return main(["run", "--dataset", "folder", "--data", str(d), "--profile", "smoke", "--seeds", "0",
                     "--strategies", "random,unc_ta_coreset", "--initial", "4", "--budget", "6", "--cycles", "2",
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *extra])

    assert sim(tmp_path / "v", "--split-by-video", "on", "--video-cap", "auto") == 0
    split = json.loads((tmp_path / "v" / "split.json").read_text())
    assert split["mode"] == "video"
    side = {n: k for k in ("test", "val", "pool") for n in split[k]}
    assert all(len({side[n] for n in names if n.startswith(f"proc{v}_")}) == 1 for v in "ABCDEFGH")
    for f in (tmp_path / "v" / "runs").glob("*.jsonl"):
        recs = read_records(f)
        assert [r["n_labeled"] for r in recs] == [4, 10, 16]
        for r in recs[:-1]:
            note = next(n for n in r["notes"] if n.startswith("video cap"))
            cap = int(re.search(r"at most (\d+) frames", note).group(1))
            assert max(Counter(n.split("_")[0] for n in r["selected"]).values()) <= cap, (note, r["selected"])
    # default: no video options, the folder's frame split and no cap notes (the committed protocol)
    assert sim(tmp_path / "f", "--split-by-video", "auto") == 0
    assert "mode" not in json.loads((tmp_path / "f" / "split.json").read_text())
    assert not any(n.startswith("video cap") for f in (tmp_path / "f" / "runs").glob("*.jsonl")
                   for r in read_records(f) for n in r["notes"])


def write_vfr(path, times, frames):
    """A video whose frames are shown at the given times (a variable frame rate), in the container the
    path's extension names."""
    from fractions import Fraction

    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=30)
    s.height, s.width = frames[0].shape[:2]
    s.pix_fmt = "yuv420p"
    s.codec_context.time_base = Fraction(1, 1000)
    for t, a in zip(times, frames):
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
        f.pts, f.time_base = int(round(t * 1000)), Fraction(1, 1000)
        for pk in s.encode(f):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()
    return path


def test_frame_times_that_start_again_and_variable_rates_lose_no_frame(tmp_path, capsys):
    """A hostile-input probe: (1) two MPEG-TS recordings joined (`cat a.ts b.ts`): the times start again
    half-way, and --fps dropped every frame after that, in silence; (2) a complete variable-rate MKV (as
    screen and browser recorders write) was refused as "truncated": its frame count was estimated from
    duration x average rate. A cut MKV is still refused (test_bad_inputs_named_and_nothing_written)."""
    one = write_video(tmp_path / "one.ts", [scene(s % 5) for s in range(50)], fps=25)  # 2 s
    both = tmp_path / "both.ts"
    both.write_bytes(one.read_bytes() * 2)
    kept = {}
    for v in (one, both):
        assert ingest_main([str(v), "--studies", str(tmp_path / f"st-{v.stem}"), "--fps", "5", "--quiet"]) == 0
        kept[v.stem] = json_out(capsys)["kept"]
    assert kept["one"] == 10 and kept["both"] == 20, kept  # times from the first frame: 0, 0.2, ..., 1.8
    times = [i / 30 for i in range(60)] + [2 + k for k in range(10)]  # 2 s at 30 fps, then 1 frame a second
    vfr = write_vfr(tmp_path / "vfr.mkv", times, [scene(i % 7) for i in range(len(times))])
    assert ingest_main([str(vfr), "--studies", str(tmp_path / "st-vfr"), "--quiet"]) == 0, capsys.readouterr().err
    assert json_out(capsys)["kept"] == 70


def json_out(capsys):
    import json

    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bad_settings_and_studies_folders_get_a_clear_error(clip, tmp_path, capsys):
    """--fps inf hung, --fps nan kept one frame and recorded the video as done, --dup-bits took any
    number, --studies naming a file and a damaged video.sqlite gave tracebacks."""
    st = tmp_path / "st"
    for args in (["--fps", "inf"], ["--fps", "nan"], ["--fps", "1e9"], ["--dup-bits", "-5"],
                 ["--dup-bits", "100000"]):
        with pytest.raises(SystemExit) as e:
            ingest_main([str(clip), "--studies", str(st), "--quiet", *args])
        assert e.value.code == 2 and args[0] in capsys.readouterr().err
    assert not st.exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert ingest_main([str(clip), "--studies", str(afile), "--quiet"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    (st / ".polypal").mkdir(parents=True)
    (st / ".polypal" / "video.sqlite").write_bytes(b"garbage " * 512)
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "video.sqlite" in err and "backup" in err and "Traceback" not in err, err
    assert pngs(st) == []
    # the server's reader: an empty index that says why, read once, never an exception per request
    idx = load_index(st)
    assert not idx.video_of and "unreadable" in idx.summary()["problem"]


def test_a_video_name_is_reserved_before_its_frames_are_decoded(tmp_path):
    """Two videos of one file name ingested at once both took the name (it was reserved only when the
    frames were recorded), and the second's row replaced the first's over the first's frame records: 400
    of 400 hashes wrong (a probe with a pause injected). Now name_for reserves the name, and a name given
    back (a failed video) is free again."""
    from polypal.video.store import VideoDB

    db = VideoDB(tmp_path / "st")
    assert db.name_for("proc", "fp-one") == "proc"
    assert db.name_for("proc", "fp-two") == "proc-2"  # (before: "proc" again, as nothing was recorded yet)
    assert db.name_for("proc", "fp-one") == "proc"  # the same video: its own name
    db.release("proc-2", "fp-two")
    assert db.name_for("proc", "fp-three") == "proc-2"


def test_a_stopped_ingest_rerun_at_another_rate_keeps_no_records_of_unwritten_frames(clip, tmp_path, monkeypatch,
                                                                                      capsys):
    """A run stopped after recording its frames and before moving them in, then a run with another --every:
    the first run's records of frames that were never written stayed, and were grouped and chosen as
    representatives of files that do not exist."""
    import polypal.video.ingest as ing

    st, real = tmp_path / "st", ing._move_no_replace

    def stopped(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ing, "_move_no_replace", stopped)
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 1  # 20 frames recorded, none moved
    capsys.readouterr()
    monkeypatch.setattr(ing, "_move_no_replace", real)
    assert ingest_main([str(clip), "--studies", str(st), "--every", "5", "--quiet"]) == 0
    assert json_out(capsys)["frames"] == 4
    idx = load_index(st)
    assert sorted(idx.video_of) == [p[:-4] for p in pngs(st)] and len(pngs(st)) == 4
    assert idx.representatives <= set(idx.video_of)


def test_videos_of_one_to_two_mib_are_told_apart(tmp_path):
    """fingerprint hashed a file of 1-2 MiB on its first MiB only: another video of the same size and start
    was skipped as "already ingested"."""
    from polypal.video.ingest import fingerprint

    a = bytes(np.random.default_rng(0).integers(0, 256, 1_500_000, dtype=np.uint8))
    b = a[:1_200_000] + bytes(300_000)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    assert fingerprint(tmp_path / "a") != fingerprint(tmp_path / "b")


def test_frame_ids_past_a_million_frames_still_name_their_video():
    """Frame 1,000,000 of a video gets 7 digits; the id pattern took exactly 6, so such frames had no video."""
    from polypal.video.store import videos_from_ids

    assert videos_from_ids(["proc_1000000", "proc_000001", "a_b_123456_000002", "x_12345"]) == \
        {"proc_1000000": "proc", "proc_000001": "proc", "a_b_123456_000002": "a_b_123456"}


def test_a_video_an_older_version_ingested_is_still_known_and_tried_names_go_back(tmp_path, capsys):
    """(1) The fingerprint of a 1-2 MiB file changed; a video an older version recorded under the old value
    was ingested again as <name>-2, every frame twice (a review). (2) Names tried and found taken by other
    files stayed reserved, with no frames, so a later video of that name got <name>-2-2 (a review)."""
    import hashlib

    from polypal.video.ingest import fingerprint, legacy_fingerprint

    rng = np.random.default_rng(0)
    v = write_video(tmp_path / "proc.mp4", [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(170)])
    size = v.stat().st_size
    assert (1 << 20) < size <= (2 << 20), size
    old = hashlib.sha256(str(size).encode() + v.read_bytes()[: 1 << 20]).hexdigest()[:32]  # the older value
    assert legacy_fingerprint(v) == old != fingerprint(v)
    st = tmp_path / "st"
    assert ingest_main([str(v), "--studies", str(st), "--every", "10", "--quiet"]) == 0
    db = st / ".polypal" / "video.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("UPDATE videos SET fingerprint=?", (old,))  # as an older version recorded it
    capsys.readouterr()
    assert ingest_main([str(v), "--studies", str(st), "--every", "10", "--quiet"]) == 0
    assert "already ingested" in capsys.readouterr().out and len(pngs(st)) == 17
    # frame ids of "clip" and "clip-2" taken by other files: ingested as clip-3, and clip-2 is free again
    st2 = tmp_path / "st2"
    st2.mkdir()
    clip = write_video(tmp_path / "clip.mp4", [scene(s) for s in range(3)])
    for taken in ("clip_000000.png", "clip-2_000000.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(st2 / taken)
    assert ingest_main([str(clip), "--studies", str(st2), "--quiet"]) == 0
    assert "ingested as clip-3" in capsys.readouterr().err
    with sqlite3.connect(st2 / ".polypal" / "video.sqlite") as c:
        assert [r[0] for r in c.execute("SELECT name FROM videos ORDER BY name")] == ["clip-3"]


def test_a_locked_video_database_is_read_again_at_the_next_request(tmp_path, monkeypatch):
    """A passing error (locked) was cached as a damaged file until the file next changed: near-duplicate
    groups and video caps stayed off, and /info said to restore a backup (a review)."""
    import polypal.video.store as store

    st = tmp_path / "st"
    clip = write_video(tmp_path / "c.mp4", [scene(s) for s in range(3)])
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    real = sqlite3.connect
    calls = []

    def locked_once(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(*a, **k)

    store._CACHE.clear()
    monkeypatch.setattr(sqlite3, "connect", locked_once)
    first = load_index(st)
    assert "asked again" in first.summary()["problem"]
    assert load_index(st).summary() == {"videos": 1, "frames": 3, "groups": 3, "flagged": 0}
    monkeypatch.setattr(sqlite3, "connect", real)
    # emptied (a probe: ingest then started the records afresh, and re-ingesting would copy each video again
    # under another name; /info called it a passing "no such table")
    db = st / ".polypal" / "video.sqlite"
    for f in st.glob(".polypal/video.sqlite-*"):
        f.unlink()
    db.write_bytes(b"")
    os.utime(db, (time.time() - 60, time.time() - 60))  # (a file of 0 bytes for seconds only is being created)
    assert "empty" in load_index(st).summary()["problem"]
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 2
    assert db.stat().st_size == 0 and len(pngs(st)) == 3


def test_a_damaged_video_sqlite_is_said_in_one_sentence(tmp_path, capsys):
    """A damaged video.sqlite was said with its advice twice: "...Put it back from a backup (with its -wal
    file beside it), or move it aside to start afresh (restore ... from a backup, or move it aside to start
    its records afresh)". Now once, naming the file."""
    st = tmp_path / "st"
    (st / ".polypal").mkdir(parents=True)
    (st / ".polypal" / "video.sqlite").write_bytes(b"garbage " * 512)
    assert ingest_main([str(tmp_path / "none.mp4"), "--studies", str(st), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"polypal-ingest: {st / '.polypal' / 'video.sqlite'}: cannot be used ("), err
    assert err.count("backup") == 1 and err.count("move it aside") == 1 and "\n" not in err, err
    assert err.endswith("put it back from a backup (with its -wal file beside it), or move it aside to start "
                        "afresh"), err


def test_a_staging_folder_held_by_a_running_ingest_elsewhere_is_left_alone(tmp_path):
    """Stale staging folders were found by their pid alone: an ingest in another container or on another
    machine sharing the studies folder has a pid that means nothing here, and a second ingest removed its
    folder mid-run (a review, 2026-12-07). A running ingest now holds an flock on a lock file in its folder
    (a plain file: NFS passes its locks to the server). One without the file goes when an hour old."""
    import fcntl
    import subprocess

    from polypal.video.ingest import STAGING, STAGING_LOCK, _clean_staging, _hold

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid with no process behind it here
    root = tmp_path / "studies" / STAGING
    held, crashed, old, young = (root / f"{gone.pid}-{n}" for n in ("elsewhere", "crashed", "old", "young"))
    for d in (held, crashed, old, young):
        d.mkdir(parents=True)
        (d / "x_000001.png").write_bytes(b"frame")
    (crashed / STAGING_LOCK).write_bytes(b"")  # its ingest was killed: the lock file, held by nobody
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # no lock file (an older version's), 2 h old
    fd = _hold(str(held))  # as that ingest holds it
    try:
        _clean_staging(str(tmp_path / "studies"))
        assert (held / "x_000001.png").exists() and (young / "x_000001.png").exists()
        assert not crashed.exists() and not old.exists()
    finally:
        os.close(fd)
    _clean_staging(str(tmp_path / "studies"))  # its ingest ended without removing it: now it goes
    assert not held.exists()


def test_two_ingests_of_one_video_at_once_lose_no_frame_record(clip, tmp_path, monkeypatch):
    """Two ingests of the same file at once with different settings shared one name, and the second
    dropped the records of the first's frames not yet moved in (they came in with no group or flag). Now
    the second waits for the first (an flock per video), then adds only what its settings add. The first
    runs here, paused after recording its frames; the second is a polypal-ingest process."""
    import select
    import subprocess
    import sys
    import threading

    import polypal.video.ingest as ing
    from polypal.video import ingest_video

    st, real = tmp_path / "st", ing._move_no_replace
    reached, go = threading.Event(), threading.Event()

    def paused(src, dst):
        reached.set()
        assert go.wait(120)
        return real(src, dst)

    monkeypatch.setattr(ing, "_move_no_replace", paused)
    out = {}
    first = threading.Thread(target=lambda: out.update(first=ingest_video(clip, st, quiet=True)))
    first.start()
    try:
        assert reached.wait(60)
        second = subprocess.Popen([sys.executable, "-m", "polypal.video.ingest", str(clip), "--studies", str(st),
                                   "--every", "5", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)  # (--quiet: the wait is said all the same)
        note, deadline = "", time.monotonic() + 60
        waits = select.poll()  # (not select(): a descriptor above 1023 in a long test run is out of its range)
        waits.register(second.stderr, select.POLLIN)
        while second.poll() is None and "waiting" not in note and time.monotonic() < deadline:
            if waits.poll(1000):  # (never blocks past the deadline)
                note = second.stderr.readline()
        waiting = second.poll() is None  # (before: it ran to the end, with no note)
    finally:
        go.set()
        first.join(60)
    rest, err = second.communicate(timeout=120)
    assert waiting and "another ingest of this same video is running; waiting" in note, (note, err)
    assert second.returncode == 0, err
    assert out["first"]["kept"] == 20 and f'"video": "{out["first"]["video"]}"' in rest
    idx = load_index(st)
    assert sorted(idx.video_of) == [p[:-4] for p in pngs(st)] and len(pngs(st)) == 20


def test_frames_deleted_through_the_server_are_not_written_again(tmp_path, capsys):
    """A re-ingest at another rate wrote every frame whose file was missing, frames an annotator deleted on
    purpose included (one showing a patient's name); and the video's one row of settings was overwritten,
    so the first command run again brought them back too (a review). Now a frame once moved in and gone
    since is never written again, and the JSON line says how many were not restored."""
    v = write_video(tmp_path / "proc.mp4", [scene(s) for s in range(6)])
    st = tmp_path / "st"
    assert ingest_main([str(v), "--studies", str(st), "--quiet"]) == 0
    capsys.readouterr()
    FrameStore(st).remove_image("proc_000000")
    FrameStore(st).remove_image("proc_000003")
    assert "proc_000000.png" not in pngs(st)
    assert ingest_main([str(v), "--studies", str(st), "--every", "2", "--quiet"]) == 0
    r = json_out(capsys)
    assert r["not_restored"] == 1 and "deleted since" in r["note"] and r["written"] == 0, r
    assert ingest_main([str(v), "--studies", str(st), "--every", "3", "--quiet"]) == 0
    assert json_out(capsys)["not_restored"] == 2
    assert ingest_main([str(v), "--studies", str(st), "--quiet"]) == 0  # the first command again: nothing
    assert "nothing added" in capsys.readouterr().out
    assert pngs(st) == [f"proc_{i:06d}.png" for i in (1, 2, 4, 5)]
    assert len(load_index(st).video_of) == 6  # (the records stay, for a restore from the trash)


def _write_clip(path, n, gop=None, shift=0, audio_s=None, options=None):
    """n frames at 25 fps (GOP ``gop``), times moved back ``shift`` frames (the mp4 muxer then writes an edit
    list that hides them, as `ffmpeg -ss ... -c copy` does), with ``audio_s`` seconds of silence beside."""
    c = av.open(str(path), "w", options=options or {})
    s = c.add_stream("libx264", rate=25)
    s.height, s.width, s.pix_fmt = 120, 160, "yuv420p"
    if gop:
        s.codec_context.gop_size = gop
    a = c.add_stream("pcm_s16le" if path.suffix != ".mp4" else "aac", rate=8000) if audio_s else None
    pks = []
    for i in range(n):
        pks += s.encode(av.VideoFrame.from_ndarray(scene(i), format="rgb24"))
    for pk in pks + list(s.encode()):
        d = shift * pk.time_base.denominator // (25 * pk.time_base.numerator)
        pk.pts, pk.dts = pk.pts - d, pk.dts - d
        c.mux(pk)
    t = 0
    while a is not None and t < audio_s * 8000:
        af = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        af.sample_rate, af.pts, t = 8000, t, t + 800
        for pk in a.encode(af):
            c.mux(pk)
    for pk in a.encode() if a is not None else ():
        c.mux(pk)
    c.close()
    return path


def _cut_before(src, dst, skip):
    """``src``'s video from its packet ``skip`` on (mid-GOP), copied into ``dst``'s container."""
    i, o = av.open(str(src)), av.open(str(dst), "w")
    t = o.add_stream_from_template(i.streams.video[0])
    for k, pk in enumerate(p for p in i.demux(i.streams.video[0]) if p.size):
        if k >= skip:
            pk.stream = t
            o.mux(pk)
    o.close()
    i.close()
    return dst


def test_complete_videos_are_not_taken_for_truncated_ones(tmp_path, capsys):
    """Complete files were refused as "truncated" (a review): an mp4 trimmed with an edit list (its stated
    count includes the hidden samples), an mkv whose audio goes on after the video (the file's duration
    covers every stream), mkv and ts clips cut mid-GOP (their first frames cannot be decoded). Now the
    video's own packets and end are compared; cut files are still refused, naming the file and the problem."""
    gop = _write_clip(tmp_path / "gop.mkv", 30, gop=5)
    cases = {_write_clip(tmp_path / "trim.mp4", 20, shift=5): 15,
             _write_clip(tmp_path / "audio.mkv", 10, audio_s=1.0): 10,
             _write_clip(tmp_path / "audio.ts", 10, audio_s=1.0): 10,
             _cut_before(gop, tmp_path / "cut.mkv", 7): 20,  # packets 7-9 come before the keyframe at 10
             _cut_before(gop, tmp_path / "cut.ts", 7): 20}
    for v, frames in cases.items():
        assert ingest_main([str(v), "--studies", str(tmp_path / f"st-{v.name}"), "--quiet"]) == 0, \
            capsys.readouterr().err
        assert frames <= json_out(capsys)["kept"] <= frames + 3, v  # (a decoder may show a frame before the key)
    whole = _write_clip(tmp_path / "fast.mp4", 40, gop=5, options={"movflags": "faststart"})
    for v, data in ((tmp_path / "half.mp4", whole.read_bytes()),
                    (tmp_path / "half.mkv", (tmp_path / "audio.mkv").read_bytes())):
        v.write_bytes(data[: len(data) // 2])
        assert ingest_main([str(v), "--studies", str(tmp_path / "st-cut"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"error: {v}: " in err and "truncated" in err, err
    assert pngs(tmp_path / "st-cut") == []


def test_frame_times_count_from_the_first_frame(tmp_path, capsys):
    """time_s was the stream's raw time, so a .ts whose first frame is at 0.08 s got an --fps grid from 0
    (frames 0, 3, 8, ... of a 25 fps video at --fps 5). Times now count from the first frame, and the grid
    starts there; an mp4's (first frame at 0) are as before."""
    for ext in ("ts", "mp4"):
        v = write_video(tmp_path / f"v.{ext}", [scene(s) for s in range(12)])
        st = tmp_path / f"st-{ext}"
        assert ingest_main([str(v), "--studies", str(st), "--fps", "5", "--quiet"]) == 0
        with sqlite3.connect(st / ".polypal" / "video.sqlite") as c:
            assert c.execute("SELECT frame, time_s FROM frames ORDER BY frame").fetchall() == \
                [(0, 0.0), (5, 0.2), (10, 0.4)], ext


def test_a_damaged_datastore_after_the_frames_are_in_is_one_line(clip, tmp_path, capsys):
    """A damaged .polypal/datastore.sqlite raised an uncaught DamagedDatabase once the frames were in (a
    traceback). Now one line naming the problem, exit code 1, the frames kept."""
    st = tmp_path / "st"
    (st / ".polypal").mkdir(parents=True)
    (st / ".polypal" / "datastore.sqlite").write_bytes(b"garbage " * 512)
    assert ingest_main([str(clip), "--studies", str(st), "--every", "5", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"polypal-ingest: the frames are in {st}, but its datastore") and "\n" not in err, err
    assert "datastore.sqlite" in err and len(pngs(st)) == 4


def test_a_folder_given_as_a_video_is_said_to_be_one(tmp_path, capsys):
    """A folder named as the video was "no such file"."""
    d = tmp_path / "procs.mp4"
    d.mkdir()
    assert ingest_main([str(d), "--studies", str(tmp_path / "st"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"error: {d}: a folder, not a video file" in err and "no such file" not in err, err


def test_a_frame_id_taken_during_the_move_leaves_no_duplicate(clip, tmp_path, monkeypatch, capsys):
    """A frame id taken by another file while the frames were moved in: the message said "N frames moved,
    run again to finish under another name", and the re-run wrote the whole video again under <name>-2,
    so the N frames moved were there twice. Now the failed run takes out what it moved, says so, and the
    re-run ingests the video once, under <name>-2."""
    import polypal.video.ingest as ing

    st, real, calls = tmp_path / "st", ing._move_no_replace, []

    def raced(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # a client uploads this id first
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dst)
        return real(src, dst)

    monkeypatch.setattr(ing, "_move_no_replace", raced)
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Patient_7_left_000002 was taken by another file" in err and "the 2 frames moved in before were " \
        "taken out again" in err and "nothing was written for them" in err, err
    assert pngs(st) == ["Patient_7_left_000002.png"] and load_index(st).summary()["frames"] == 0
    monkeypatch.setattr(ing, "_move_no_replace", real)
    assert ingest_main([str(clip), "--studies", str(st), "--quiet"]) == 0
    assert json_out(capsys)["written"] == 20
    assert pngs(st) == sorted(["Patient_7_left_000002.png"] + [f"Patient_7_left-2_{i:06d}.png" for i in range(20)])
    assert load_index(st).summary() == {"videos": 1, "frames": 20, "groups": 4, "flagged": 0}


def test_frames_the_decoder_reports_damaged_are_flagged(tmp_path, capsys):
    """FFmpeg paints over a damaged picture (and the frames predicted from it) and only logs an error; PyAV
    raises nothing, so smeared frames went to annotators unflagged (a review). Frames from a reported error
    to the next keyframe shown after it are flagged "damaged" now. FFmpeg conceals some damage without a
    message: those stay unflagged, so the test asks for most, not all, of the damaged packets. A packet the
    decoder refuses outright refused the whole video: its picture is left out now, unless many are."""
    v = _write_clip(tmp_path / "g.mkv", 30, gop=10)  # keyframes at 0, 10, 20
    assert ingest_main([str(v), "--studies", str(tmp_path / "st"), "--quiet"]) == 0
    assert "damaged" not in json_out(capsys) and not load_index(tmp_path / "st").flagged
    clean = [f.to_ndarray(format="rgb24") for f in av.open(str(v)).decode(video=0)]
    pks = [p for p in av.open(str(v)).demux(video=0) if p.size]
    found = lost = 0
    for k in range(11, 17):  # P/B frames of the second GOP
        data = bytearray(v.read_bytes())
        mid = pks[k].pos + pks[k].size // 2
        data[mid: mid + 16] = b"\xff" * 16
        bad = tmp_path / f"bad{k}.mkv"
        bad.write_bytes(bytes(data))
        st = tmp_path / f"st{k}"
        assert ingest_main([str(bad), "--studies", str(st), "--quiet"]) == 0, capsys.readouterr().err
        out = json_out(capsys)
        flagged = sorted(int(i[-6:]) for i, f in load_index(st).flagged.items() if f == "damaged")
        assert out.get("damaged", 0) == len(flagged)
        if out.get("undecodable"):  # a packet the decoder refused (the whole video was refused): its picture is
            # missing, those predicted from it flagged, up to the next keyframe (video frame 20, the 19th decoded)
            lost += 1
            assert out["undecodable"] == 1 and out["decoded"] == 29 and len(pngs(st)) == 29, out
            assert "1 video frame(s) could not be decoded and are missing (the first at 0.56 s: Invalid data" in \
                out["undecodable_note"], out
            assert flagged and all(10 < i < 19 for i in flagged), (k, flagged)  # (in its GOP)
            shown = {f.pts: f.to_ndarray(format="rgb24") for f in av.open(str(v)).decode(video=0)}
            got = []
            for p in av.open(str(bad)).demux(video=0):
                try:
                    got += p.decode()
                except av.FFmpegError:  # (the packet refused)
                    pass
            differ = [i for i, f in enumerate(got) if not np.array_equal(f.to_ndarray(format="rgb24"), shown[f.pts])]
            assert set(differ) <= set(flagged), (k, differ, flagged)
            continue
        assert all(8 <= i < 20 for i in flagged), (k, flagged)  # nothing past the next keyframe
        differ = [i for i, f in enumerate(av.open(str(bad)).decode(video=0))
                  if not np.array_equal(f.to_ndarray(format="rgb24"), clean[i])]
        if flagged:
            found += 1
            assert set(differ) <= set(flagged), (k, differ, flagged)
    assert found >= 2 and lost >= 1, (found, lost)
    # every P frame damaged: more than a damaged spot (5 of 30 frames refused by the decoder), refused, named
    data = bytearray(v.read_bytes())
    for k in [k for k in range(1, 30) if k % 10]:
        mid = pks[k].pos + pks[k].size // 2
        data[mid: mid + 16] = b"\xff" * 16
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(bytes(data))
    assert ingest_main([str(broken), "--studies", str(tmp_path / "stb"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"error: {broken}: damaged: 5 of its 30 video frames could not be decoded (the first at" in err, err
    assert not pngs(tmp_path / "stb")


def test_an_avi_cut_short_is_refused(tmp_path, capsys):
    """An avi cut short passed every check of the video's own packets and end (FFmpeg reads its length from
    the index it finds; a review): its header's frame count is compared with the packets it holds again."""
    for codec in ("mjpeg", "libx264"):
        v = tmp_path / f"{codec}.avi"
        c = av.open(str(v), "w")
        s = c.add_stream(codec, rate=25)
        s.height, s.width, s.pix_fmt = 120, 160, "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(40):
            for pk in s.encode(av.VideoFrame.from_ndarray(scene(i), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
        c.close()
        assert ingest_main([str(v), "--studies", str(tmp_path / f"st-{codec}"), "--quiet"]) == 0, \
            capsys.readouterr().err
        assert json_out(capsys)["kept"] == 40
        cut = tmp_path / f"cut-{codec}.avi"
        cut.write_bytes(v.read_bytes()[: int(v.stat().st_size * 0.9)])  # (a tenth gone: passed before)
        assert ingest_main([str(cut), "--studies", str(tmp_path / "st-cut"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"error: {cut}: truncated or damaged: the file declares 40 frames" in err, err
    assert pngs(tmp_path / "st-cut") == []
