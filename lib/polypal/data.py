"""Reading polyp frames and masks: folder layouts, decoding, validation and a resize cache.

Frames are decoded and resized once into uint8 arrays (N, S, S, 3) and boolean
masks (N, S, S); training then never touches the original JPEGs again. An
optional on-disk cache (one .npz per folder, size and file stamps) makes the
second run of an experiment start in seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_THRESHOLD = 127  # Kvasir masks carry JPEG noise: foreground is > 127
# Frames and labels larger than this are refused before decoding (a 20 KB PNG can declare 400 MP).
# 4K endoscopy frames are 8.3 MP. Servers set it from ``--conf max_pixels``; POLYPAL_MAX_PIXELS overrides.
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_PIXELS = int(os.environ.get("POLYPAL_MAX_PIXELS", DEFAULT_MAX_PIXELS))
# A mask whose pixels are more than this fraction "neither background nor polyp" (between 25% and 75%
# of its maximum) is a photograph, not a mask. Measured: real Kvasir-SEG/CVC-ClinicDB masks (JPEG noise
# included) <= 0.0001; their frames 0.10 to 0.78.
MAX_AMBIGUOUS_FRACTION = 0.02


class TooLarge(DataError):
    """An image with more pixels than MAX_PIXELS (refused before decoding)."""


def set_max_pixels(n: int) -> None:
    """The pixel cap for every reader in this process."""
    global MAX_PIXELS
    if int(n) < 4:
        raise ValueError(f"max_pixels must be at least 4, got {n}")
    MAX_PIXELS = int(n)


def _check_pixels(path, w: int, h: int, what: str = "image") -> None:
    if int(w) * int(h) > MAX_PIXELS:
        raise TooLarge(path, f"{what} of {w}x{h} pixels is larger than the limit of {MAX_PIXELS} pixels "
                             f"(server setting max_pixels)")


def image_id(path: str | Path) -> str:
    """MONAI Label's id of a file: its name without the (possibly double) extension."""
    name = Path(path).name
    for ext in (".nii.gz",) + IMAGE_EXTENSIONS + (".nii", ".nrrd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        _check_pixels(path, *img.size)
        img.load()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:
        raise TooLarge(path, f"image too large to decode ({e})") from None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"corrupt or truncated image ({e})") from None
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode any jpg/jpeg/png/tif frame to uint8 (H, W, 3). Grey, palette and RGBA become RGB."""
    path = Path(path)
    if _is_volume(path):
        return _read_volume_rgb(path)
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        arr = (arr / hi * 255.0) if hi > 255 else arr
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DataError(path, f"unexpected image shape {arr.shape}")
    return arr


VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")
LABEL_EXTENSIONS = IMAGE_EXTENSIONS + VOLUME_EXTENSIONS


def _is_volume(path: Path) -> bool:
    return any(path.name.lower().endswith(e) for e in VOLUME_EXTENSIONS)


def _check_compressed(path, raw_bytes: int) -> None:
    """A file larger than the data it declares (plus headroom for headers and compression overhead)
    hides something: refused before it is decompressed (a few MB of zeros inflate to gigabytes)."""
    size = os.path.getsize(path)
    if size > raw_bytes * 1.05 + (64 << 10):
        raise DataError(path, f"file of {size} bytes for {raw_bytes} bytes of declared data: refused")


def _plane(shape) -> tuple[int, int]:
    """(pixels of the first two axes, the product of the others): a slice's size times the slices."""
    shape = [int(x) for x in shape] + [1, 1]
    rest = int(np.prod(shape[2:]))
    return shape[0], shape[1] * max(rest, 1)


def _read_volume_mask(path: Path) -> np.ndarray:
    """A single-slice label volume as 3D Slicer saves it: array (W, H[, 1]) in ITK's x, y order.

    Returned as (H, W) uint8, so that it overlays the frame it was drawn on.
    """
    try:
        if path.name.lower().endswith(".nrrd"):
            import nrrd

            header = nrrd.read_header(str(path))
            detached = [k for k in header if k.replace(" ", "").lower() in ("datafile", "data_file")]
            if detached or any(k in header for k in ("byte skip", "byteskip", "line skip", "lineskip")):
                raise DataError(path, "NRRD with detached data or skips is not accepted: save the label as one "
                                      "self-contained .nrrd, .nii.gz or .png")
            sizes = [int(x) for x in header.get("sizes", [0, 0])]
            _check_pixels(path, *_plane(sizes), what="label volume")
            _check_compressed(path, int(np.prod(sizes)) * np.dtype(nrrd.reader._determine_datatype(header)).itemsize)
            arr, _ = nrrd.read(str(path))  # index order F: arr[x, y, z]
        else:
            import nibabel as nib

            vol = nib.load(str(path))
            _check_pixels(path, *_plane(vol.shape), what="label volume")
            _check_compressed(path, int(np.prod(vol.shape)) * vol.get_data_dtype().itemsize)
            arr = np.asarray(vol.dataobj.get_unscaled())  # arr[i=x, j=y, k]; a label map is never scaled
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure means an unusable file
        raise DataError(path, f"not a readable label volume ({type(e).__name__}: {e})") from None
    arr = np.asarray(arr)
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(path, f"label volume must be a single 2D slice, got shape {arr.shape}")
    return np.ascontiguousarray(arr.T)


def _read_volume_rgb(path: Path) -> np.ndarray:
    """An RGB frame stored as a volume, as MONAI Label's DICOMweb datastore converts one:
    NIfTI shaped (W, H, 1, 1, 3) in ITK's x, y order. Returned as (H, W, 3) uint8."""
    try:
        import nibabel as nib

        vol = nib.load(str(path))
        shape = [int(x) for x in vol.shape]
        _check_pixels(path, shape[0], int(np.prod(shape[1:])) // 3 if shape and shape[-1] == 3 else
                      int(np.prod(shape[1:])))
        if vol.get_data_dtype() != np.uint8:
            raise DataError(path, f"not an 8-bit RGB frame: dtype {vol.get_data_dtype()} (polyp-al reads RGB or "
                                  f"grey 8-bit endoscopy frames)")
        _check_compressed(path, int(np.prod(shape)))
        arr = np.asarray(vol.dataobj.get_unscaled())
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable image volume ({type(e).__name__}: {e})") from None
    if arr.dtype == np.uint8 and arr.ndim >= 2 and arr.shape[-1] != 3 and np.squeeze(arr).ndim == 2:
        arr = np.repeat(np.squeeze(arr)[:, :, None, None], 3, axis=-1)  # an 8-bit grey frame: as RGB
    if arr.ndim < 3 or arr.shape[-1] != 3:
        raise DataError(path, f"not an 8-bit RGB frame: volume shape {arr.shape}, dtype {arr.dtype} "
                              f"(polyp-al reads RGB or grey 8-bit endoscopy frames)")
    arr = arr.reshape(arr.shape[0], arr.shape[1], -1, 3)
    if arr.shape[2] != 1:
        raise DataError(path, f"not a single 2D frame: volume shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise DataError(path, f"not an 8-bit RGB frame: dtype {arr.dtype} (polyp-al reads RGB or grey 8-bit "
                              f"endoscopy frames)")
    return np.ascontiguousarray(arr[:, :, 0, :].transpose(1, 0, 2))


def read_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask to bool (H, W), as its author meant it, or raise DataError saying why not.

    - images (png/jpg/tif): the polyp is any colour channel at or above half of the mask's maximum,
      so 0/255 masks, 0/1 or 0/k label maps (even JPEG-compressed: 0/1 becomes 0..2) and a polyp
      drawn in red all read right. An RGBA mask whose colour is uniform is read from its alpha
      channel. An all-zero mask is a frame with no polyp.
    - single-slice NIfTI/NRRD volumes (label maps): any value > 0 is polyp.
    - refused: a mask whose size differs from ``expected_hw`` (its frame's); anything that looks
      like a photograph (more than MAX_AMBIGUOUS_FRACTION of the pixels neither near 0 nor near the
      maximum); a volume with non-integer values or more than 16 distinct values.
    """
    path = Path(path)
    if _is_volume(path):
        vol = _read_volume_mask(path)
        if expected_hw is not None and tuple(vol.shape) != tuple(expected_hw):
            raise DataError(path, f"label volume size {vol.shape[1]}x{vol.shape[0]} (WxH) differs from its "
                                  f"image's {expected_hw[1]}x{expected_hw[0]}")
        if vol.dtype.kind == "f" and not np.all(np.isfinite(vol) & (vol == np.round(vol))):
            raise DataError(path, "label volume has non-integer values: it looks like an image, not a label map")
        values = np.unique(vol)
        if len(values) > 16:
            raise DataError(path, f"label volume has {len(values)} distinct values: it looks like an image, "
                                  f"not a label map")
        return vol > 0
    img = _open(path)
    w, h = img.size
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise DataError(path, f"mask size {w}x{h} (WxH) differs from its image's {expected_hw[1]}x{expected_hw[0]}")
    return mask_from_pixels(path, img)


def mask_from_pixels(path, img: Image.Image) -> np.ndarray:
    """The polyp mask an image means (see read_mask), or DataError naming the problem."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)[..., None]
    else:
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        rgba = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.int16)
        arr = rgba[..., :3]
        if has_alpha:
            alpha = rgba[..., 3]
            if int(arr.max() - arr.min()) == 0 and int(alpha.max()) != int(alpha.min()):
                arr = alpha[..., None]  # drawn only in the alpha channel
    g = arr.max(axis=-1)
    hi = float(g.max()) if g.size else 0.0
    if hi <= 0:
        return np.zeros(g.shape, dtype=bool)
    if hi > 16:  # an intensity mask (0/255, JPEG noise): nearly every pixel is near 0 or near the maximum
        ambiguous = float(((g > 0.25 * hi) & (g < 0.75 * hi)).mean())
        if ambiguous > MAX_AMBIGUOUS_FRACTION:
            colours = len(np.unique(arr.reshape(-1, arr.shape[-1]), axis=0))
            raise DataError(path, f"label looks like a photograph, not a mask: {colours} distinct colours, "
                                  f"{100 * ambiguous:.0f}% of the pixels neither background nor polyp "
                                  f"(send 0/1 or 0/255 masks)")
    return 2 * g >= hi


def write_label(mask_hw: np.ndarray, path: str | Path) -> Path:
    """Write a (H, W) label map (polyp = 1) losslessly, by the file's extension.

    - .png: uint8 (H, W);
    - .nrrd / .nii / .nii.gz: a single-slice volume (W, H, 1) with identity
      LPS geometry (origin 0, spacing 1), as 3D Slicer loads a 2D frame, so
      the label overlays it.
    """
    path = Path(path)
    m = np.asarray(mask_hw).astype(np.uint8)
    name = path.name.lower()
    if name.endswith(".png"):
        Image.fromarray(m).save(path)
    elif name.endswith(".nrrd"):
        import nrrd

        header = {"space": "left-posterior-superior", "space directions": np.eye(3),
                  "space origin": np.zeros(3), "kinds": ["domain", "domain", "domain"]}
        nrrd.write(str(path), m.T[:, :, None], header, index_order="F")
    elif name.endswith(".nii") or name.endswith(".nii.gz"):
        import nibabel as nib

        affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS identity expressed in NIfTI's RAS
        nib.save(nib.Nifti1Image(m.T[:, :, None], affine), str(path))
    else:
        raise ValueError(f"{path}: unsupported label extension (use .png, .nrrd, .nii or .nii.gz)")
    return path


def resize_rgb(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (H, W, 3) to (size, size, 3) with bilinear filtering (antialiased)."""
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def resize_prob(prob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a float probability map to (H, W) with bilinear interpolation."""
    img = Image.fromarray(np.asarray(prob, dtype=np.float32), mode="F")
    return np.asarray(img.resize((int(hw[1]), int(hw[0])), Image.BILINEAR), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool mask to (size, size) by nearest neighbour."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size, size), Image.NEAREST)) > 127


def normalize(images_uint8: np.ndarray) -> np.ndarray:
    """The paper's normalisation (x/255 - 0.5)/0.5, as float32 channels-first (N, 3, S, S)."""
    x = images_uint8.astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def list_images(folder: str | Path) -> list[Path]:
    """Top-level image files of a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a directory")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


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
    pairs = []
    for img in images:
        mask = _find_mask(mask_dir, img.stem) if mask_dir.is_dir() else None
        if mask is None and require_masks:
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
    h = hashlib.sha1(f"v1:{size}".encode())
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
        names=[p.stem for p, _ in pairs], images=images, masks=masks if all_masks else None,
        original_hw=hws, size=size, paths=[str(p) for p, _ in pairs],
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, names=np.array(fs.names), images=images, masks=masks,
                 has_masks=np.array(all_masks), original_hw=hws)
        os.replace(tmp, cache_file)
    return fs
