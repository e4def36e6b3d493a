"""Dataset folders: finding (image, mask) pairs in the supported layouts and loading them resized.

Frames are decoded and resized once into uint8 arrays (N, S, S, 3) and boolean
masks (N, S, S); training then never touches the original JPEGs again. An
optional on-disk cache (one .npz per folder, size and file stamps) makes the
second run of an experiment start in seconds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from polypal.data.images import read_rgb, resize_mask, resize_rgb
from polypal.data.masks import read_mask
from polypal.errors import DataError
from polypal.vocab import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, frame_id

def list_images(folder: str | Path) -> list[Path]:
    """Top-level image files of a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a directory")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def frames_subfolder(root: str | Path) -> str | None:
    """The subfolder a dataset layout keeps its frames in (``images/``, CVC's ``Original/``, ``frames/``), when a
    folder given for its frames has one: what to tell a user whose folder has none at its top."""
    return next((d for d in ("images", "Original", "frames") if (Path(root) / d).is_dir()), None)


def _find_mask(mask_dir: Path, stem: str) -> Path | None:
    for ext in LABEL_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        p = mask_dir / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def find_pairs(root: str | Path, require_masks: bool = True) -> list[tuple[Path, Path | None]]:
    """(image, mask) pairs of a dataset folder in any of the supported layouts.

    - ``images/`` + ``masks/`` (Kvasir-SEG: jpg, CVC-ClinicDB: png), matched by file stem;
    - a MONAI Label datastore: images at the top, masks in ``labels/final/``.

    With ``require_masks`` a frame without a mask raises DataError naming it;
    otherwise its mask is None (an unlabeled frame).
    """
    root = Path(root)
    if (root / "images").is_dir():
        img_dir, mask_dir = root / "images", root / "masks"
    elif root.is_dir():
        img_dir, mask_dir = root, root / "labels" / "final"
    else:
        raise DataError(root, "dataset folder does not exist")
    images = list_images(img_dir)
    if not images:
        raise DataError(img_dir, f"no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    seen: dict[str, Path] = {}
    for img in images:  # a frame is named by its stem: two files of one stem would be one frame twice
        if img.stem in seen:
            raise DataError(img, f"same name as {seen[img.stem].name}: one frame per name (rename or remove one)")
        seen[img.stem] = img
    pairs = []
    for img in images:
        mask = _find_mask(mask_dir, img.stem) if mask_dir.is_dir() else None
        if mask is None and require_masks:
            if not mask_dir.is_dir():  # the folder itself, not one mask (a walkthrough)
                raise DataError(mask_dir, "no masks/ folder beside images/ (a dataset folder holds both, a mask "
                                          "per image under the image's name)")
            raise DataError(img, f"missing mask: no file named {img.stem}.* in {mask_dir}")
        pairs.append((img, mask))
    return pairs


@dataclass
class FrameSet:
    """Frames resized to ``size``: uint8 images (N,S,S,3), bool masks (N,S,S) or None."""

    names: list[str]
    images: np.ndarray
    masks: np.ndarray | None
    original_hw: np.ndarray  # (N, 2) original heights and widths
    size: int
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: Sequence[int]) -> "FrameSet":
        idx = np.asarray(idx, dtype=np.int64)
        return FrameSet(
            names=[self.names[i] for i in idx],
            images=self.images[idx],
            masks=None if self.masks is None else self.masks[idx],
            original_hw=self.original_hw[idx],
            size=self.size,
            paths=[self.paths[i] for i in idx] if self.paths else [],
        )

    def index_of(self, names: Iterable[str]) -> np.ndarray:
        pos = {n: i for i, n in enumerate(self.names)}
        return np.array([pos[n] for n in names], dtype=np.int64)


def load_frame(image_path: str | Path, mask_path: str | Path | None, size: int):
    """Decode, validate and resize one (image, mask) pair."""
    rgb = read_rgb(image_path)
    hw = rgb.shape[:2]
    mask = None
    if mask_path is not None:
        mask = resize_mask(read_mask(mask_path, expected_hw=hw), size)
    return resize_rgb(rgb, size), mask, hw


def _cache_key(pairs, size: int) -> str:
    h = hashlib.sha1(f"v2:{size}".encode())  # v2: EXIF orientation applied
    for img, mask in pairs:
        for p in (img, mask):
            if p is None:
                h.update(b"-")
                continue
            st = os.stat(p)
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_folder(
    root: str | Path,
    size: int,
    cache_dir: str | Path | None = None,
    require_masks: bool = True,
    progress: bool = False,
) -> FrameSet:
    """Load a whole dataset folder (see find_pairs) resized to ``size``, decoding each file once.

    With ``cache_dir`` the resized arrays are stored as one .npz keyed by every
    file's path, size and mtime; a changed file invalidates the cache.
    """
    pairs = find_pairs(root, require_masks=require_masks)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"frames-{Path(root).name}-{size}-{_cache_key(pairs, size)}.npz"
        if cache_file.exists():
            z = np.load(cache_file, allow_pickle=False)
            masks = z["masks"] if z["has_masks"] else None
            return FrameSet(
                names=[str(n) for n in z["names"]], images=z["images"], masks=masks,
                original_hw=z["original_hw"], size=size, paths=[str(p) for p, _ in pairs],
            )
    n = len(pairs)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    has_mask = np.zeros(n, dtype=bool)
    hws = np.empty((n, 2), dtype=np.int32)
    it = pairs
    if progress:
        from tqdm import tqdm

        it = tqdm(pairs, desc=f"decode {Path(root).name}", unit="img")
    for i, (img, mask) in enumerate(it):
        im, m, hw = load_frame(img, mask, size)
        images[i], hws[i] = im, hw
        if m is not None:
            masks[i], has_mask[i] = m, True
    all_masks = bool(has_mask.all())
    fs = FrameSet(
        names=[frame_id(p) for p, _ in pairs], images=images, masks=masks if all_masks else None,
        original_hw=hws, size=size, paths=[str(p) for p, _ in pairs],
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, names=np.array(fs.names), images=images, masks=masks,
                 has_masks=np.array(all_masks), original_hw=hws)
        os.replace(tmp, cache_file)
    return fs
