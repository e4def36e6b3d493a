"""MONAI Label's DICOMweb datastore, with frame-shaped labels and checked uploads.

A client saves a label as for the local datastore (PNG/JPG mask, or a
single-slice NIfTI/NRRD as 3D Slicer writes): it is checked against the
frame's size with the library's reader, written as a NIfTI in the frame's own
geometry (the (W, H, 1) grid of MONAI Label's converted frame), and handed to
MONAI Label, which converts it to DICOM SEG (dcmqi) and stores it in the
DICOMweb server. If that store fails, the label stays on disk in
``<state>/pending-labels/`` and the client gets HTTP 502 saying where.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore

from polypal.data import DataError, read_mask, read_rgb

logger = logging.getLogger(__name__)


class PolypDICOMWebDatastore(DICOMWebDatastore):
    pending_dir: str = ""

    def save_label(self, image_id, label_filename, label_tag, label_info, label_id=""):
        image_uri = self.get_image_uri(image_id)
        if not image_uri:
            raise HTTPException(status_code=404, detail=f"unknown image id {image_id!r}")
        try:
            hw = read_rgb(image_uri).shape[:2]
            mask = read_mask(label_filename, expected_hw=hw)
        except DataError as e:
            raise HTTPException(status_code=422, detail=f"label for {image_id} rejected: {e.problem}") from None
        affine = nib.load(image_uri).affine
        fd, nii = tempfile.mkstemp(suffix=".nii.gz")
        os.close(fd)
        nib.save(nib.Nifti1Image(mask.T[:, :, None].astype(np.uint8), affine), nii)
        info = dict(label_info or {})
        info.setdefault("label_info", [{"name": "polyp", "idx": 1, "model_name": "polyp-al"}])
        try:
            return super().save_label(image_id, nii, label_tag, info, label_id)
        except Exception as e:  # noqa: BLE001 - keep the label, tell the client
            keep = os.path.join(self.pending_dir or tempfile.gettempdir(), f"{image_id}.{label_tag}.nii.gz")
            os.makedirs(os.path.dirname(keep), exist_ok=True)
            shutil.copy(nii, keep)
            logger.error(f"label for {image_id} could not be stored in the DICOMweb server ({e}); kept at {keep}")
            raise HTTPException(status_code=502, detail=f"the DICOMweb server did not store the label ({e}); "
                                                        f"it is kept at {keep}") from None
        finally:
            os.unlink(nii)
