"""Training augmentation for endoscopy frames, built from MONAI transforms.

``flips``: random horizontal and vertical flips (the old recipe).
``rot``: flips and 90-degree rotations.
``endo``: flips, 90-degree rotations (an endoscope has no "up"), a random
scale (0.8-1.2) with a random shift (a random scale/crop of the frame, reflected
at the border), then brightness, contrast, saturation and hue jitter (light and
white balance vary between endoscopes). Geometric transforms move the mask
with the image (nearest-neighbour for the mask); colour transforms touch the
image only. Seeded: the same seed gives the same augmented batches.

Images arrive normalised as (x/255 - 0.5)/0.5, i.e. in [-1, 1], shape (B, 3, H, W);
masks as float (B, 1, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAffined,
    RandFlipd,
    RandomizableTransform,
    RandRotate90d,
)

# RGB -> YIQ and back: a hue shift is a rotation of the (I, Q) chroma plane
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = torch.linalg.inv(_YIQ)


class RandColourJitterd(RandomizableTransform, MapTransform):
    """Brightness, contrast, saturation and hue jitter of one (3, H, W) image in [-1, 1]."""

    def __init__(self, keys, prob=0.8, brightness=0.1, contrast=0.2, saturation=0.2, hue=0.03):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self._f = (0.0, 1.0, 1.0, 0.0)

    def randomize(self, data=None):
        super().randomize(None)
        r = self.R
        self._f = (r.uniform(-self.brightness, self.brightness), r.uniform(1 - self.contrast, 1 + self.contrast),
                   r.uniform(1 - self.saturation, 1 + self.saturation), r.uniform(-self.hue, self.hue))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        b, c, s, h = self._f
        for k in self.keys:
            x = torch.as_tensor(d[k])
            rgb = (x + 1) / 2  # [0, 1]
            yiq = torch.einsum("ij,jhw->ihw", _YIQ.to(rgb.dtype), rgb)
            ang = 2 * np.pi * h
            cos, sin = float(np.cos(ang)) * s, float(np.sin(ang)) * s
            i, q = yiq[1] * cos - yiq[2] * sin, yiq[1] * sin + yiq[2] * cos
            y = (yiq[0] - yiq[0].mean()) * c + yiq[0].mean() + b
            rgb = torch.einsum("ij,jhw->ihw", _YIQ_INV.to(rgb.dtype), torch.stack([y, i, q]))
            d[k] = (rgb.clamp(0, 1) * 2 - 1).to(x.dtype)
        return d


def make_transforms(kind: str, size: int) -> Compose | None:
    keys = ["image", "label"]
    if kind in ("", "none"):
        return None
    t = [RandFlipd(keys, prob=0.5, spatial_axis=1), RandFlipd(keys, prob=0.5, spatial_axis=0)]
    if kind in ("rot", "endo"):
        t.append(RandRotate90d(keys, prob=0.5, max_k=3))
    if kind == "endo":
        t += [
            RandAffined(keys, prob=0.7, scale_range=(0.2, 0.2), translate_range=(size / 8, size / 8),
                        mode=("bilinear", "nearest"), padding_mode="reflection"),
            RandColourJitterd(["image"], prob=0.8),
        ]
    elif kind not in ("flips", "rot"):
        raise ValueError(f"unknown augmentation {kind!r}; choose none, flips, rot or endo")
    return Compose(t)


class Augmenter:
    """Applies a profile's augmentation to a batch, sample by sample, with its own seeded random state."""

    def __init__(self, kind: str, size: int, seed: int):
        self.tf = make_transforms(kind, size)
        if self.tf is not None:
            self.tf.set_random_state(seed=seed % (2**32))

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if self.tf is None:
            return x, y
        xs, ys = [], []
        for xi, yi in zip(x, y):
            d = self.tf({"image": xi, "label": yi})
            xs.append(torch.as_tensor(d["image"]).as_subclass(torch.Tensor))
            ys.append((torch.as_tensor(d["label"]).as_subclass(torch.Tensor) > 0.5).to(y.dtype))
        return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()


def augment_kind(profile) -> str:
    """The profile's augmentation: its ``augment`` field, or plain flips when only ``flips`` is set."""
    if profile.augment:
        return profile.augment
    return "flips" if profile.flips else "none"
