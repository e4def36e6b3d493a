"""The learner's network: MONAI's UNet, returning logits and a pooled bottleneck latent."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from monai.networks.layers.simplelayers import SkipConnection
from torch import nn

from .profiles import Profile


def _bottleneck(unet: UNet) -> nn.Module:
    """The innermost layer of MONAI's recursive UNet (its bottom block)."""
    block = unet.model
    while True:
        skip = next((m for m in block.children() if isinstance(m, SkipConnection)), None)
        if skip is None:
            raise RuntimeError("could not locate the UNet bottleneck")
        sub = skip.submodule
        if isinstance(sub, nn.Sequential) and any(isinstance(m, SkipConnection) for m in sub.children()):
            block = sub
        else:
            return sub


class PolypUNet(nn.Module):
    """U-Net whose forward returns (logits (B,1,H,W), latent (B, channels[-1])).

    The latent is the global-average-pooled output of the encoder's bottleneck:
    one vector per image, used by TA-Coreset. One forward pass gives both.
    """

    def __init__(self, channels, strides, num_res_units: int = 1):
        super().__init__()
        self.unet = UNet(
            spatial_dims=2, in_channels=3, out_channels=1, channels=tuple(channels),
            strides=tuple(strides), num_res_units=num_res_units,
        )
        self.latent_dim = int(channels[-1])
        self._latent = None
        _bottleneck(self.unet).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._latent = output

    def forward(self, x: torch.Tensor):
        logits = self.unet(x)
        z = self._latent.mean(dim=(2, 3))
        self._latent = None
        return logits, z

    @classmethod
    def from_profile(cls, profile: Profile) -> "PolypUNet":
        return cls(profile.channels, profile.strides, profile.num_res_units)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_checkpoint(path, model: PolypUNet, profile: Profile, extra: dict | None = None) -> None:
    """Write a self-describing checkpoint atomically (tmp file, then rename)."""
    import os

    payload = {"state_dict": model.state_dict(), "profile": profile.to_dict(), "extra": extra or {}}
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device=None) -> tuple[PolypUNet, Profile, dict]:
    from .profiles import Profile as P

    ck = torch.load(path, map_location="cpu", weights_only=False)
    pd = dict(ck["profile"])
    pd["channels"], pd["strides"], pd["betas"] = tuple(pd["channels"]), tuple(pd["strides"]), tuple(pd["betas"])
    profile = P(**pd)
    model = PolypUNet.from_profile(profile)
    model.load_state_dict(ck["state_dict"])
    model.to(device or default_device()).eval()
    return model, profile, ck.get("extra", {})
