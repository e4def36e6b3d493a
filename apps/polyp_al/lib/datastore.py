"""The app's local datastore: MONAI Label's LocalDatastore plus input checks.

- image ids and label tags that would leave the studies folder are refused;
- an uploaded label must be an image or a single-slice volume of the frame's
  size, checked with the library's reader before anything is stored.
"""

from __future__ import annotations

import logging
import re

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

from polypal.data import DataError, read_mask, read_rgb

logger = logging.getLogger(__name__)
EXTENSIONS = ["*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.PNG", "*.JPG", "*.JPEG", "*.TIF", "*.TIFF"]
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_name(kind: str, value: str) -> str:
    """Reject ids/tags with path separators, '..', NUL or an absolute path (HTTP 400)."""
    if not value or "\x00" in value or "/" in value or "\\" in value or value in (".", "..") \
            or value.startswith(".") or not _SAFE.match(value):
        raise HTTPException(status_code=400, detail=f"invalid {kind} {value!r}: only letters, digits, '_', '-', '.'")
    return value


class PolypDatastore(LocalDatastore):
    def __init__(self, studies: str, **kw):
        super().__init__(studies, extensions=EXTENSIONS, **kw)

    def save_label(self, image_id, label_filename, label_tag, label_info):
        check_name("image id", image_id)
        check_name("label tag", label_tag)
        uri = self.get_image_uri(image_id)
        if not uri:
            raise HTTPException(status_code=404, detail=f"unknown image id {image_id!r}")
        try:
            hw = read_rgb(uri).shape[:2]
        except DataError as e:
            raise HTTPException(status_code=422, detail=f"frame {image_id} cannot be read: {e.problem}") from None
        try:
            mask = read_mask(label_filename, expected_hw=hw)
        except DataError as e:
            logger.warning(f"label for {image_id} rejected: {e.problem}")
            raise HTTPException(status_code=422, detail=f"label for {image_id} rejected: {e.problem}") from None
        logger.info(f"label for {image_id} accepted: {int(mask.sum())} polyp pixels")
        return super().save_label(image_id, label_filename, label_tag, label_info)
