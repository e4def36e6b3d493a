"""Measure the video ingest thresholds on real frames (results/video/thresholds.{json,md}).

1. Near-duplicates: each CVC-ClinicDB sequence is encoded as an H.264 clip
   (its frames in order, 25 fps), ingested back with ``ingest_video``, and the
   dHash Hamming distances compared: consecutive frames within a sequence vs
   pairs from different sequences (for 8x8 and 16x16 hashes).
2. Flags: blur/black/overexposure measures on the decoded CVC frames and a
   Kvasir-SEG sample (curated, informative frames), and on degraded copies of
   the CVC frames (Gaussian blur, darkened, overexposed).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_thresholds.py \
    --data ../shared/datasets --out results/video
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from polypal.experiments.splits import read_sequences  # noqa: E402
from polypal.video import frames as F  # noqa: E402
from polypal.video.ingest import ingest_video  # noqa: E402


def encode(paths, out, fps=25):
    c = av.open(str(out), "w")
    s = c.add_stream("libx264", rate=fps)
    w, h = Image.open(paths[0]).size
    s.width, s.height, s.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
    for p in paths:
        a = np.asarray(Image.open(p).convert("RGB"))[: s.height, : s.width]
        for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()


def pct(a, qs=(0, 1, 5, 25, 50, 75, 95, 99, 100)):
    a = np.asarray(a, dtype=float)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in qs} | {"n": int(a.size)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/datasets")
    ap.add_argument("--out", default="results/video")
    ap.add_argument("--kvasir", type=int, default=200, help="Kvasir-SEG frames measured for the flags")
    a = ap.parse_args()
    t0 = time.time()
    cvc = Path(a.data) / "cvc-clinicdb" / "images"
    seqs = read_sequences(Path(a.data) / "splits" / "cvc_clinicdb_sequences.csv")
    by_seq: dict[int, list[Path]] = {}
    for p in sorted(cvc.glob("*.png"), key=lambda p: int(p.stem)):
        by_seq.setdefault(seqs[p.stem], []).append(p)
    res = {"sequences": len(by_seq), "frames": sum(map(len, by_seq.values()))}
    with tempfile.TemporaryDirectory() as tmp:
        studies = Path(tmp) / "studies"
        for s, paths in by_seq.items():
            clip = Path(tmp) / f"cvc_seq{s:02d}.mp4"
            encode(paths, clip)
            ingest_video(clip, studies, quiet=True)
        con = sqlite3.connect(studies / ".polypal" / "video.sqlite")
        rows = con.execute("SELECT id, video, frame, dhash, lapvar, sharp, mean, bright, grp FROM frames "
                           "ORDER BY video, frame").fetchall()
        vids = [r[1] for r in rows]
        h16 = np.stack([F.hex_bits(r[3]) for r in rows])
        h8 = np.stack([F.dhash(Image.open(studies / f"{r[0]}.png").convert("L"), 8) for r in rows])
        ms = [dict(zip(("lapvar", "sharp", "mean", "bright"), r[4:8])) for r in rows]
        imgs = [np.asarray(Image.open(studies / f"{r[0]}.png").convert("RGB")) for r in rows]
        groups = {r[8] for r in rows}
    vids = np.asarray(vids)
    same_next = vids[1:] == vids[:-1]
    for name, h in (("dhash16", h16), ("dhash8", h8)):
        bits = h.shape[1]
        within = np.count_nonzero(h[1:] != h[:-1], axis=1)[same_next]
        d = np.count_nonzero(h[:, None, :] != h[None, :, :], axis=2)
        cross = d[vids[:, None] != vids[None, :]]
        nearest_cross = np.where(vids[:, None] != vids[None, :], d, bits + 1).min(axis=1)
        res[name] = {"bits": bits, "within_sequence_consecutive": pct(within), "across_sequences": pct(cross),
                     "nearest_other_sequence_per_frame": pct(nearest_cross),
                     "by_threshold": {int(t): {"consecutive_grouped": round(float((within <= t).mean()), 3),
                                               "cross_pairs_at_or_below": round(float((cross <= t).mean()), 5),
                                               "frames_with_other_sequence_at_or_below":
                                                   round(float((nearest_cross <= t).mean()), 3)}
                                      for t in np.linspace(0, bits // 2, 9).astype(int)}}
    shifts = {}
    for k in (2, 4, 8, 16):
        d = [F.hamming(F.dhash(Image.fromarray(x[:, k:]).convert("L")), F.dhash(Image.fromarray(x[:, :-k]).convert("L")))
             for x in imgs[::3]]
        shifts[f"shift_{k}px"] = pct(d)
    res["dhash16"]["frame_vs_itself_shifted"] = shifts
    res["groups_at_default"] = {"dup_bits": F.DUP_BITS, "groups": len(groups), "frames": len(rows)}
    # flags: curated frames vs degraded copies
    rng = np.random.default_rng(0)
    kv = sorted((Path(a.data) / "kvasir-seg" / "images").glob("*.jpg"))
    kv = [kv[i] for i in sorted(rng.choice(len(kv), size=min(a.kvasir, len(kv)), replace=False))]
    kvm = []
    for p in kv:
        im = Image.open(p)
        im.draft("RGB", (im.size[0] // 2, im.size[1] // 2))
        kvm.append(F.measure(np.asarray(im.convert("RGB"))))
    sub = imgs[::3]
    degraded = {
        "blur_gauss_r1": [F.measure(np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1)))) for x in sub],
        "blur_gauss_r2": [F.measure(np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(2)))) for x in sub],
        "blur_gauss_r4": [F.measure(np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(4)))) for x in sub],
        "dark_x0.1": [F.measure((x * 0.1).astype(np.uint8)) for x in sub],
        "overexposed_x3": [F.measure(np.clip(x.astype(float) * 3 + 40, 0, 255).astype(np.uint8)) for x in sub],
    }
    sets = {"cvc_decoded": ms, "kvasir_sample": kvm, **degraded}
    res["flags"] = {"thresholds": {"BLUR_SHARP": F.BLUR_SHARP, "BLACK_MEAN": F.BLACK_MEAN,
                                   "BRIGHT_FRAC": F.BRIGHT_FRAC, "MEASURE_WIDTH": F.MEASURE_WIDTH, "CROP": F.CROP}}
    for k, m in sets.items():
        fl = [F.flags(x) for x in m]
        res["flags"][k] = {"lapvar": pct([x["lapvar"] for x in m]), "sharp": pct([x["sharp"] for x in m]), "mean": pct([x["mean"] for x in m]),
                           "bright": pct([x["bright"] for x in m]),
                           "flagged": {f: round(sum(f in x for x in fl) / len(fl), 3)
                                       for f in ("blurred", "black", "overexposed")}}
    res["seconds"] = round(time.time() - t0, 1)
    os.makedirs(a.out, exist_ok=True)
    Path(a.out, "thresholds.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
