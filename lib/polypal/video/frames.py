"""Per-frame measures for video ingest: a perceptual hash, and blur/black/overexposure flags.

All measures work on a grey (ITU-R 601 luma) copy of the frame, so they do not
depend on the colour of the mucosa. Thresholds and how they were measured:
README "Video in" and ``results/video/thresholds.md``
(``benchmarks/video_thresholds.py``).

- **Difference hash** (dHash): the grey frame shrunk to (HASH+1) x HASH pixels,
  one bit per horizontal neighbour pair (left < right). Two frames are
  near-duplicates when the Hamming distance of their hashes is at most
  ``DUP_BITS`` (of HASH*HASH bits).
- **Blur**: variance of the 4-neighbour Laplacian (``lapvar``) on the central
  70% of the frame (away from the black border and burned-in text, which stay
  sharp when the scene is blurred), after resizing to ``MEASURE_WIDTH`` pixels
  wide so the value does not depend on the video's resolution; divided by the
  squared mean absolute horizontal gradient (``sharp``), so that it measures
  how fine the detail is rather than how much texture or contrast the scene
  has (on CVC-ClinicDB, raw ``lapvar`` of sharp frames spans 10-430 and
  overlaps Gaussian-blurred copies; ``sharp`` does not). Flagged below
  ``BLUR_SHARP``.
- **Black**: mean grey of the central crop below ``BLACK_MEAN``.
- **Overexposed**: more than ``BRIGHT_FRAC`` of the central crop at grey >= 250.
- **Out of body** (the only colour measure): ``red``, the share of the central
  crop's lit pixels (brightest channel >= ``RED_LIT``) whose red channel exceeds
  both green and blue by more than ``RED_MARGIN``. White-light endoscopy is
  dominated by red/pink mucosa: on every CVC-ClinicDB and Kvasir-SEG frame
  (1,612) ``red`` is at least 0.68 (median 0.996); flagged below ``OOB_RED``
  (0.5). A room, drapes, gauze, steel or a white-balance card are neutral or
  cool and score near 0; warm scenes (skin, wood) do not, and are not flagged.
  Not measured on narrow-band imaging (NBI), whose green/cyan frames may be
  flagged (``results/video/out_of_body.md``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH = 16  # 256-bit hash
DUP_BITS = 24  # Hamming distance (of 256) at or below which consecutive frames are one group
MEASURE_WIDTH = 256
CROP = 0.70
BLUR_SHARP = 3.0
BLACK_MEAN = 25.0
BRIGHT_FRAC = 0.25
OOB_RED = 0.5  # out of body below this share of reddish lit pixels
RED_MARGIN = 8  # red exceeds green and blue by more than this (of 255)
RED_LIT = 40  # pixels whose brightest channel is below this are too dark to have a colour


def grey(rgb: np.ndarray) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3]).astype(np.uint8), "RGB")
    return img.convert("L")


def dhash(g: Image.Image, size: int = HASH) -> np.ndarray:
    """Difference hash of a grey image: a bool vector of size*size bits."""
    a = np.asarray(g.resize((size + 1, size), Image.BOX), dtype=np.int16)
    return (a[:, 1:] > a[:, :-1]).ravel()


def hash_hex(bits: np.ndarray) -> str:
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def hex_bits(h: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8)).astype(bool)


def hamming(a, b) -> int:
    """Bits that differ between two hashes (bool vectors or hex strings)."""
    a = hex_bits(a) if isinstance(a, str) else a
    b = hex_bits(b) if isinstance(b, str) else b
    return int(np.count_nonzero(a != b))


def _central(g: Image.Image, dtype=np.float32) -> np.ndarray:
    w, h = g.size
    nh = max(1, round(h * MEASURE_WIDTH / w))
    a = np.asarray(g.resize((MEASURE_WIDTH, nh), Image.BILINEAR), dtype=dtype)
    mh, mw = int(a.shape[0] * (1 - CROP) / 2), int(a.shape[1] * (1 - CROP) / 2)
    return a[mh:a.shape[0] - mh, mw:a.shape[1] - mw]


def laplacian_var(a: np.ndarray) -> float:
    if a.shape[0] < 3 or a.shape[1] < 3:
        return 0.0
    lap = a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4 * a[1:-1, 1:-1]
    return float(lap.var())


def redness(rgb: np.ndarray) -> float:
    """Share of the central crop's lit pixels that are reddish (R > G + RED_MARGIN and R > B + RED_MARGIN)."""
    c = _central(Image.fromarray(np.ascontiguousarray(rgb[..., :3]).astype(np.uint8), "RGB"), np.int16)
    lit = c.max(axis=-1) >= RED_LIT
    red = (c[..., 0] > c[..., 1] + RED_MARGIN) & (c[..., 0] > c[..., 2] + RED_MARGIN) & lit
    n = int(lit.sum())
    return float(red.sum() / n) if n else 0.0


def measure(rgb: np.ndarray) -> dict:
    """Hash and quality measures of one RGB frame (H, W, 3 uint8)."""
    g = grey(rgb)
    c = _central(g)
    lv = laplacian_var(c)
    grad = float(np.abs(np.diff(c, axis=1)).mean()) if c.shape[1] > 1 else 0.0
    return {"dhash": hash_hex(dhash(g)), "lapvar": round(lv, 2), "sharp": round(lv / (grad * grad + 1.0), 3),
            "mean": round(float(c.mean()), 2), "bright": round(float((c >= 250).mean()), 4),
            "red": round(redness(rgb), 4)}


def flags(m: dict) -> list[str]:
    """Why a frame carries little information ([] when it looks fine)."""
    if m.get("damaged"):  # the decoder reported an error in it or in the frames it was predicted from
        return ["damaged"]
    out = []
    if m["mean"] < BLACK_MEAN:
        out.append("black")
    elif m["bright"] > BRIGHT_FRAC:
        out.append("overexposed")
    elif m.get("red") is not None and m["red"] < OOB_RED:  # frames ingested before this measure have none
        out.append("out_of_body")
    elif m["sharp"] < BLUR_SHARP:
        out.append("blurred")
    return out


def group_consecutive(hashes: list[str], max_bits: int = DUP_BITS) -> list[int]:
    """Group index per frame: a frame joins the current group when it is within ``max_bits`` of the
    group's first frame (its anchor), else it starts a new group. Comparing with the anchor, not the
    previous frame, keeps a slow pan from chaining a whole video into one group."""
    out, anchor, g = [], None, -1
    for h in hashes:
        bits = hex_bits(h)
        if anchor is None or np.count_nonzero(bits != anchor) > max_bits:
            g += 1
            anchor = bits
        out.append(g)
    return out


def representative(members: list[int], ms: list[dict]) -> int:
    """The group's frame to annotate: the sharpest unflagged one (the sharpest of all if all are flagged)."""
    clean = [i for i in members if not flags(ms[i])]
    return max(clean or members, key=lambda i: (ms[i]["sharp"], -i))
