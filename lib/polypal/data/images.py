"""Decoding frames: any jpg/png/tif (or single-slice RGB volume) to uint8 RGB, with a pixel cap.

Also the resizes and the paper's normalisation. Files larger than ``MAX_PIXELS`` are refused
before they are decoded; a compressed volume larger than its declared data is refused before
it is decompressed, and one whose header or data would inflate past what it declares is refused
before the reader allocates it (``volume_checks``). Only PNG, JPEG and TIFF are decoded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from polypal.data.image_checks import MAX_SEGMENTS, check_image_file
from polypal.data.volume_checks import check_nifti_header
from polypal.errors import DataError
from polypal.vocab import VOLUME_EXTENSIONS

# Frames and labels larger than this are refused before decoding (a 20 KB PNG can declare 400 MP).
# 4K endoscopy frames are 8.3 MP. Servers set it from ``--conf max_pixels``; POLYPAL_MAX_PIXELS overrides.
DEFAULT_MAX_PIXELS = 4096 * 4096


def _env_max_pixels() -> int:
    raw = os.environ.get("POLYPAL_MAX_PIXELS", "").strip()
    try:
        n = int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        n = 0
    if n < 4:  # a clear stop for every tool, not a traceback from an import
        raise SystemExit(f"POLYPAL_MAX_PIXELS must be a whole number of pixels >= 4, got {raw!r}")
    return n


MAX_PIXELS = _env_max_pixels()


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


# The formats of IMAGE_EXTENSIONS, whatever a file's name says: Pillow would otherwise open any format it
# knows (EPS among them, which runs Ghostscript where it is installed) from an uploaded file.
PIL_FORMATS = ("PNG", "JPEG", "TIFF")  # JPEG covers MPO (camera) files


MAX_JPEG_SCANS = 100  # a progressive JPEG has about 10; 3000 repeated scans made a 165 KB file take 30 s to decode


def _jpeg_scans(data: bytes) -> int | None:
    """The start-of-scan markers of a JPEG's first image, walking its segments from SOI to EOI: segments
    with a length (APPn with an EXIF thumbnail, tables) are skipped whole, a scan's entropy-coded data runs
    to the next marker (0xFF not followed by 0x00 or a restart marker); what follows EOI (a motion photo's
    video, an MPO's second frame) is not read. None: more than 4 * MAX_SEGMENTS marker segments (a real
    file has tens; each costs a step here and in the decoder)."""
    n, i, size, segments = 0, 2, len(data), 0
    while i + 4 <= size:
        if data[i] != 0xFF:
            return n  # not a marker where one must be: Pillow says what is wrong
        m = data[i + 1]
        segments += 1  # a segment, a fill byte or a marker without a length: each a step
        if segments > 4 * MAX_SEGMENTS:  # (as many scans as could pass, each with its tables, and more)
            return None
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0xD9:
            return n
        if 0xD0 <= m <= 0xD7 or m == 0x01:  # markers without a length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if m == 0xDA:
            n += 1
            found = _NEXT_MARKER.search(data, i)  # past the entropy-coded data (stuffed 0xFF00s, restarts)
            if found is None:
                return n
            i = found.start()
    return n


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # in C: a scan of stuffed bytes was a step each


def _check_jpeg_scans(path: Path) -> None:
    """Refuse a JPEG of more than MAX_JPEG_SCANS scans (or 4 * MAX_SEGMENTS segments) before decoding it."""
    with open(path, "rb") as f:
        n = _jpeg_scans(f.read())
    if n is None:
        raise DataError(path, f"JPEG of more than {4 * MAX_SEGMENTS} marker segments: refused before decoding")
    if n > MAX_JPEG_SCANS:
        raise DataError(path, f"JPEG of {n} scans (more than {MAX_JPEG_SCANS}): refused before decoding")


_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}  # by EXIF orientation, as ImageOps.exif_transpose turns them


def _open(path: Path, expected_hw=None, what: str = "image") -> Image.Image:
    """Open, check (pixel cap, the expected (H, W) when given, JPEG scans), then decode."""
    try:
        check_image_file(path, _check_pixels)  # what Pillow would parse in Python, bounded first
        img = Image.open(path, formats=PIL_FORMATS)
        _check_pixels(path, *img.size)
        w, h = img.size
        # shown rotated by 90 degrees (transposed below); a PNG's EXIF only when read with its header (Pillow
        # would decode the whole file to look for one after the image data)
        exif = img.getexif() if img.format != "PNG" or "exif" in img.info else {}
        orientation = exif.get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        if expected_hw is not None and (h, w) != tuple(expected_hw):
            raise DataError(path, f"{what} size {w}x{h} (WxH) differs from its image's "
                                  f"{expected_hw[1]}x{expected_hw[0]}")
        if img.format in ("JPEG", "MPO"):
            _check_jpeg_scans(path)
        img.load()
        turn = _TURNS.get(orientation)  # (the one the size was checked with: a PNG's EXIF chunk after its image
        # data, seen only once loaded, turned a mask checked as W x H into H x W)
        if turn is not None:  # EXIF orientation: read as every viewer shows it (masks alike). Not with
            # ImageOps.exif_transpose, which writes the whole EXIF out again, value by value (a PNG's 40 MB
            # EXIF array: 13 s and 3.6 GB)
            img = img.transpose(turn)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (PNG, JPEG or TIFF expected: another format, or corrupt)") from None
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


def _read_volume_rgb(path: Path) -> np.ndarray:
    """An RGB frame stored as a volume, as MONAI Label's DICOMweb datastore converts one:
    NIfTI shaped (W, H, 1, 1, 3) in ITK's x, y order. Returned as (H, W, 3) uint8."""
    try:
        import nibabel as nib

        check_nifti_header(path)  # before nibabel reads header extensions of any declared size
        vol = nib.load(str(path))
        shape = [int(x) for x in vol.shape]
        _check_pixels(path, shape[0], int(np.prod(shape[1:])) // 3 if len(shape) >= 3 and shape[-1] == 3 else
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
    if arr.size == 0:
        raise DataError(path, f"empty image volume: shape {arr.shape}")
    # a 2-D volume is always grey (W, H), even 3 pixels high; an RGB frame has a last axis of 3 after (W, H)
    if arr.dtype == np.uint8 and arr.ndim >= 2 and (arr.ndim == 2 or arr.shape[-1] != 3) and np.squeeze(arr).ndim == 2:
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
