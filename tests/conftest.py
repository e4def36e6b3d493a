"""Shared fixtures: small generated datasets on disk and the real-data location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POLYP_DATA", REPO.parent / "shared" / "datasets"))


def synth_frame(rng: np.random.Generator, h: int, w: int):
    """A reddish frame with one bright ellipse 'polyp' and its mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.1, 0.25) * h, rng.uniform(0.1, 0.25) * w
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    img = np.empty((h, w, 3), dtype=np.float32)
    img[..., 0] = 150 + 30 * rng.standard_normal((h, w))
    img[..., 1] = 60 + 20 * rng.standard_normal((h, w))
    img[..., 2] = 50 + 20 * rng.standard_normal((h, w))
    img[mask] += np.array([80, 90, 60], dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_dataset(root: Path, n: int, seed: int = 0, layout: str = "kvasir", sizes=((72, 88), (60, 60), (96, 64))):
    """Write n generated frames with masks in the 'kvasir' (jpg) or 'cvc' (png) layout."""
    rng = np.random.default_rng(seed)
    ext = ".jpg" if layout == "kvasir" else ".png"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        img, mask = synth_frame(rng, h, w)
        name = f"frame{i:03d}"
        Image.fromarray(img).save(root / "images" / f"{name}{ext}", quality=95)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}{ext}", quality=95)
    return root


@pytest.fixture
def kvasir_like(tmp_path):
    return write_dataset(tmp_path / "kvasir", 24, seed=1, layout="kvasir")


def require_shared(sub: str) -> Path:
    """The real-data folder ``SHARED/sub``; skips with the reason when absent.

    With POLYPAL_REQUIRE_DATA=1 (a machine that is meant to have the data) a
    missing folder fails instead of skipping.
    """
    p = SHARED / sub
    if not p.exists():
        why = f"real data absent: {p} not found (set POLYP_DATA to the shared datasets folder)"
        if os.environ.get("POLYPAL_REQUIRE_DATA") == "1":
            pytest.fail(why + "; POLYPAL_REQUIRE_DATA=1 makes this an error")
        pytest.skip(why)
    return p


def always_polyp_model(path, profile: str = "smoke"):
    """A real checkpoint whose U-Net says "polyp" everywhere (its output convolutions: weight 0, bias 10),
    written atomically, e.g. over a model a server is serving."""
    import torch

    from polypal.learner import PolypUNet, get_profile, save_checkpoint

    path = Path(path)
    prof = get_profile(profile)
    m = PolypUNet.from_profile(prof)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and mod.out_channels == 1:
                mod.weight.zero_()
                mod.bias.fill_(10.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".test-tmp")
    save_checkpoint(tmp, m, prof)
    os.replace(tmp, path)

