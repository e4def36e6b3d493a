"""Infer task ``polyp_seg``: a frame of any size in, a lossless polyp label at that size out."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Dict, Tuple

import numpy as np
import torch
from monai.inferers import Inferer
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from polypal.data import normalize, read_rgb, resize_prob, resize_rgb, write_label
from polypal.model import PolypUNet

logger = logging.getLogger(__name__)
LABEL_EXTENSIONS = (".png", ".nrrd", ".nii.gz", ".nii")


class LoadFramed:
    """Decode a frame with the library's reader (RGB, any size), resize and normalise it."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, data):
        d = dict(data)
        rgb = read_rgb(d["image"])
        d["original_hw"] = rgb.shape[:2]
        d["image"] = torch.from_numpy(normalize(resize_rgb(rgb, self.size)[None])[0])
        return d


class ToOriginalLabeld:
    """Sigmoid, back to the frame's original size, threshold 0.5: uint8 (H, W), polyp = 1."""

    def __call__(self, data):
        d = dict(data)
        prob = torch.sigmoid(d["pred"]).detach().cpu().numpy().reshape(d["image"].shape[-2:])
        d["pred"] = (resize_prob(prob, d["original_hw"]) > 0.5).astype(np.uint8)
        return d


class LogitsInferer(Inferer):
    """Our network returns (logits, latent); inference needs the logits."""

    def __call__(self, inputs, network, *args, **kwargs):
        return network(inputs)[0]


class PolypSegInfer(BasicInferTask):
    def __init__(self, model_path: str, profile, labels: dict):
        super().__init__(
            path=model_path,
            network=PolypUNet.from_profile(profile),
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description=f"Polyp segmentation U-Net ({profile.name} profile, {profile.size}x{profile.size})",
            model_state_dict="state_dict",
            config={"result_extension": ".png"},
        )
        self.profile = profile

    def is_valid(self) -> bool:  # listed in /info even before the first model is trained
        return True

    def pre_transforms(self, data=None):
        return [LoadFramed(self.profile.size)]

    def inferer(self, data=None):
        return LogitsInferer()

    def post_transforms(self, data=None):
        return [ToOriginalLabeld()]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Any, Any]:
        ext = (extension or data.get("result_extension") or ".png").lower()
        if not ext.startswith("."):
            ext = "." + ext
        if ext not in LABEL_EXTENSIONS:
            raise ValueError(f"result_extension {ext!r} not supported; use one of {', '.join(LABEL_EXTENSIONS)}")
        fd, path = tempfile.mkstemp(suffix=ext)
        os.close(fd)
        write_label(data["pred"], path)
        h, w = data["pred"].shape
        return path, {"label_names": self.labels, "width": w, "height": h,
                      "polyp_pixels": int(data["pred"].sum())}
