"""Measure the out-of-body flag (``frames.redness`` < ``OOB_RED``) on real frames:
results/video/out_of_body.{json,md}.

In body: every CVC-ClinicDB and Kvasir-SEG frame (curated white-light frames, all
inside the colon), as stored and, for the first 100 CVC frames, after an H.264
round trip (encoded as a 25 fps clip and decoded back, as ``polypal-ingest`` sees
them: 4:2:0 chroma subsampling changes colours a little).
Out of body: no real out-of-body colonoscopy frames are available here, so the
colour photographs shipped inside scikit-image (``skimage.data``: people, a cat,
coffee, a rocket, a telescope field...) stand in for "not the inside of a colon",
plus their grey versions (a monochrome room, gauze, a white-balance card).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video_out_of_body.py --data ../shared/datasets --out results/video
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from polypal.video import frames as F  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "colorwheel", "logo", "camera", "coins", "moon", "page", "text", "brick", "grass", "gravel")


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def h264_roundtrip(frames: list[np.ndarray]) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.mp4"
        c = av.open(str(p), "w")
        s = c.add_stream("libx264", rate=25)
        h, w = (min(a.shape[0] for a in frames) // 2) * 2, (min(a.shape[1] for a in frames) // 2) * 2
        s.height, s.width, s.pix_fmt = h, w, "yuv420p"
        for a in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(a[:h, :w]), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
        c.close()
        with av.open(str(p)) as r:
            return [f.to_ndarray(format="rgb24") for f in r.decode(video=0)]


def stats(v) -> dict:
    v = np.asarray(v, dtype=float)
    return {"n": int(len(v)), "min": round(float(v.min()), 4), "p0.5": round(float(np.percentile(v, 0.5)), 4),
            "p1": round(float(np.percentile(v, 1)), 4), "p5": round(float(np.percentile(v, 5)), 4),
            "median": round(float(np.median(v)), 4), "flagged": int((v < F.OOB_RED).sum())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/datasets")
    ap.add_argument("--out", default="results/video")
    a = ap.parse_args()
    t0 = time.time()
    data = Path(a.data)
    res: dict = {"threshold": F.OOB_RED, "margin": F.RED_MARGIN, "lit": F.RED_LIT, "in_body": {}, "out_of_body": {}}
    cvc = sorted((data / "cvc-clinicdb" / "images").glob("*"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    kva = sorted((data / "kvasir-seg" / "images").glob("*"))
    red = {"cvc": [F.redness(rgb(p)) for p in cvc], "kvasir": [F.redness(rgb(p)) for p in kva]}
    red["cvc_h264_first100"] = [F.redness(f) for f in h264_roundtrip([rgb(p) for p in cvc[:100]])]
    for k, v in red.items():
        res["in_body"][k] = stats(v)
    lowest = sorted(zip(red["cvc"], [p.name for p in cvc]))[:3] + sorted(zip(red["kvasir"], [p.name for p in kva]))[:3]
    res["in_body_lowest"] = [[n, round(r, 4)] for r, n in lowest]
    import skimage.data as D

    for name in PHOTOS:
        try:
            img = np.asarray(getattr(D, name)())
        except Exception as e:  # noqa: BLE001 - a photo this scikit-image lacks or must download
            res["out_of_body"][name] = f"unavailable: {type(e).__name__}"
            continue
        grey_only = img.ndim == 2
        img = np.stack([img] * 3, -1) if grey_only else img[..., :3]
        img = img.astype(np.uint8)
        r = {"red": round(F.redness(img), 4), "flags": F.flags(F.measure(img))}
        if not grey_only:
            g = np.repeat(np.asarray(Image.fromarray(img).convert("L"))[..., None], 3, -1)
            r["grey_red"] = round(F.redness(g), 4)
        r["kind"] = "grey" if grey_only else "colour"
        res["out_of_body"][name] = r
    res["seconds"] = round(time.time() - t0, 1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "out_of_body.json").write_text(json.dumps(res, indent=1))
    lines = ["# Out-of-body flag: `red` (share of lit central pixels with R > G+8 and R > B+8) < "
             f"{F.OOB_RED}", "",
             "Written by `benchmarks/video_out_of_body.py` (command in `commands.txt`).", "",
             "## In body (must not be flagged)", "", "| frames | n | min | p0.5 | p1 | p5 | median | flagged |",
             "|---|---|---|---|---|---|---|---|"]
    for k, s in res["in_body"].items():
        lines.append(f"| {k} | {s['n']} | {s['min']} | {s['p0.5']} | {s['p1']} | {s['p5']} | {s['median']} | "
                     f"{s['flagged']} |")
    lines += ["", "Lowest in-body frames: " + ", ".join(f"{n} ({r})" for n, r in res["in_body_lowest"]), "",
              "## Stand-ins for out of body (scikit-image's photographs; no real out-of-body endoscopy frames here)",
              "", "| photo | kind | red | flags | red of its grey copy |", "|---|---|---|---|---|"]
    for k, r in res["out_of_body"].items():
        if isinstance(r, str):
            lines.append(f"| {k} | {r} | | | |")
        else:
            lines.append(f"| {k} | {r['kind']} | {r['red']} | {','.join(r['flags']) or '-'} | "
                         f"{r.get('grey_red', '')} |")
    (out / "out_of_body.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
