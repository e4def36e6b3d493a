"""One vocabulary for frames and labels: file extensions, frame ids, and what a valid id is.

Every reader, the studies folder, the app and the video ingester take their extensions and
ids from here, so that a frame has one id wherever it is seen.
"""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")  # 2D frames and masks
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")  # single-slice volumes (3D Slicer, DICOMweb)
FRAME_EXTENSIONS = IMAGE_EXTENSIONS + (".nii.gz", ".nii", ".nrrd")  # what a studies folder serves as frames
LABEL_EXTENSIONS = IMAGE_EXTENSIONS + VOLUME_EXTENSIONS  # what a label may be sent as
WRITE_EXTENSIONS = (".png", ".nrrd", ".nii.gz", ".nii")  # what labels and predictions are written as
_DOUBLE = (".nii.gz", ".seg.nrrd")  # extensions with two dots

MAX_NAME = 128
_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


class InvalidName(ValueError):
    """An id or tag that is not a plain file-name part."""


def patterns(extensions=FRAME_EXTENSIONS) -> tuple[str, ...]:
    """Glob patterns for a set of extensions (``*.png``, ...)."""
    return tuple("*" + e for e in extensions)


def split_name(filename: str) -> tuple[str, str]:
    """'a.nii.gz' -> ('a', '.nii.gz'); 'b.jpg' -> ('b', '.jpg'); 'c' -> ('c', '')."""
    low = filename.lower()
    for e in _DOUBLE:
        if low.endswith(e):
            return filename[: -len(e)], filename[-len(e):]
    stem, dot, ext = filename.rpartition(".")
    return (stem, "." + ext) if dot and stem else (filename, "")


def frame_id(path) -> str:
    """A frame's id: its file name without the (possibly double) extension, as MONAI Label names it."""
    return split_name(Path(path).name)[0]


def plain_name(value: str) -> bool:
    """True for a name made of letters, digits, '_', '-' and '.', without '..' (files found on disk)."""
    return bool(_NAME.fullmatch(value)) and ".." not in value


def check_name(kind: str, value) -> str:
    """``value`` if it is a valid id or tag (letters, digits, '_', '-', '.'; no '..'; <= MAX_NAME), else
    InvalidName saying why."""
    if isinstance(value, str) and len(value) > MAX_NAME:
        raise InvalidName(f"invalid {kind} {value[:40]!r}...: longer than {MAX_NAME} characters")
    if not isinstance(value, str) or not value or "\x00" in value or value in (".", "..") or ".." in value \
            or not _NAME.fullmatch(value):
        raise InvalidName(f"invalid {kind} {value!r}: use letters, digits, '_', '-' and '.' only "
                          f"(no path separators, '..' or NUL)")
    return value


def check_alias(image_id: str, ext: str) -> None:
    """Refuse an id + extension whose file name reads back as another id (``vol1.nii`` + ``.gz`` is
    ``vol1.nii.gz``, the file of id ``vol1``): one file, two ids, and a silent overwrite."""
    if split_name(image_id + ext) != (image_id, ext):
        raise InvalidName(f"id {image_id!r} with a {ext!r} file would be read back as "
                          f"{split_name(image_id + ext)[0]!r}: choose an id that does not end like an extension")


MAX_CLIENT = 128


def client_name(value) -> str | None:
    """A client's ``client_id`` (next-sample, label saves) as the text it is credited under; None when not
    sent (or blank). Raises ValueError unless it is a string or integer of 1 to MAX_CLIENT characters
    without control, format (bidi overrides, zero-width) or line-separator characters (a NUL, a bell or a
    terminal escape went into /info and the export's CSV as they were sent, and a list or a dict into the
    export's manifest)."""
    import unicodedata

    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # (a blank one is none, as next-sample always took it)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"client_id must be a string of 1 to {MAX_CLIENT} characters, not a {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_CLIENT:
        raise ValueError(f"client_id must be a string of 1 to {MAX_CLIENT} characters, got {len(text)}")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        raise ValueError("client_id must not hold control, format or line-separator characters")
    return text
