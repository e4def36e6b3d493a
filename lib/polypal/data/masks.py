"""Decoding masks as their authors meant them, refusing photographs, and writing labels losslessly.

See ``read_mask`` for the rules (half-max threshold on any channel, alpha-only masks, label
volumes in ITK's x, y order) and ``write_label`` for the stored formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from polypal.data.images import _check_compressed, _check_pixels, _is_volume, _open, _plane
from polypal.data.volume_checks import check_nifti_header, check_nrrd_data
from polypal.errors import DataError

MASK_THRESHOLD = 127  # Kvasir masks carry JPEG noise: foreground is > 127
# A mask whose pixels are more than this fraction "neither background nor polyp" (between 25% and 75%
# of its maximum) is a photograph, not a mask. Measured: real Kvasir-SEG/CVC-ClinicDB masks (JPEG noise
# included) <= 0.0001; their frames 0.10 to 0.78.
MAX_AMBIGUOUS_FRACTION = 0.02


def _check_volume_header(path: Path, shape, dtype: np.dtype, expected_hw) -> None:
    """From the header, before the data is read: a label map's type (integers, bool or float: a complex
    or 16-byte type would make a 4096 x 4096 label take 500 MB to decode), and the frame's size."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise DataError(path, f"label volume of dtype {dtype}: a label map holds integers")
    shape = [int(x) for x in shape]
    if expected_hw is not None and len(shape) >= 2 and (shape[1], shape[0]) != tuple(expected_hw):
        raise DataError(path, f"label volume size {shape[0]}x{shape[1]} (WxH) differs from its "
                              f"image's {expected_hw[1]}x{expected_hw[0]}")


def _read_volume_mask(path: Path, expected_hw=None) -> np.ndarray:
    """A single-slice label volume as 3D Slicer saves it: array (W, H[, 1]) in ITK's x, y order.

    Returned as (H, W) uint8, so that it overlays the frame it was drawn on. Its type and size are checked
    from the header (against ``expected_hw``, the frame's) before its data is read.
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
            dtype = np.dtype(nrrd.reader._determine_datatype(header))
            _check_volume_header(path, sizes, dtype, expected_hw)
            declared = int(np.prod(sizes)) * dtype.itemsize
            _check_compressed(path, declared)
            check_nrrd_data(path, declared)  # pynrrd inflates gzip/bzip2 data whole, whatever sizes say
            arr, _ = nrrd.read(str(path))  # index order F: arr[x, y, z]
        else:
            import nibabel as nib

            check_nifti_header(path)  # before nibabel reads header extensions of any declared size
            vol = nib.load(str(path))
            _check_pixels(path, *_plane(vol.shape), what="label volume")
            _check_volume_header(path, vol.shape, vol.get_data_dtype(), expected_hw)
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
        vol = _read_volume_mask(path, expected_hw)
        if expected_hw is not None and tuple(vol.shape) != tuple(expected_hw):
            raise DataError(path, f"label volume size {vol.shape[1]}x{vol.shape[0]} (WxH) differs from its "
                                  f"image's {expected_hw[1]}x{expected_hw[0]}")
        if vol.dtype.kind not in "biuf":  # complex, strings, objects: not a label map
            raise DataError(path, f"label volume of dtype {vol.dtype}: a label map holds integers")
        if vol.dtype.kind == "f" and not np.all(np.isfinite(vol) & (vol == np.round(vol))):
            raise DataError(path, "label volume has non-integer values: it looks like an image, not a label map")
        values = np.unique(vol)
        if len(values) > 16:
            raise DataError(path, f"label volume has {len(values)} distinct values: it looks like an image, "
                                  f"not a label map")
        return vol > 0
    img = _open(path, expected_hw=expected_hw, what="mask")  # its size is compared before it is decoded
    return mask_from_pixels(path, img)


def mask_from_pixels(path, img: Image.Image) -> np.ndarray:
    """The polyp mask an image means (see read_mask), or DataError naming the problem."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)[..., None]
        if np.isnan(arr).any():  # NaN compares False everywhere: it would read as an "empty" mask nobody drew
            raise DataError(path, "mask has NaN values: send 0/1 or 0/255 masks")
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
