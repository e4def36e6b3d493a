"""The learner's network: MONAI's UNet, returning logits and a pooled bottleneck latent."""

from __future__ import annotations

import os
import threading

import torch
from monai.networks.nets import UNet
from monai.networks.layers.simplelayers import SkipConnection
from torch import nn

from polypal.durable import fsync_dir
from polypal.errors import PolypalError
from polypal.learner.profiles import Profile


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
        self._latents: dict[int, torch.Tensor] = {}  # per thread: a served model runs several at once
        _bottleneck(self.unet).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._latents[threading.get_ident()] = output

    def forward(self, x: torch.Tensor):
        logits = self.unet(x)
        z = self._latents.pop(threading.get_ident()).mean(dim=(2, 3))
        return logits, z

    @classmethod
    def from_profile(cls, profile: Profile) -> "PolypUNet":
        return cls(profile.channels, profile.strides, profile.num_res_units)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CheckpointError(PolypalError):
    """A checkpoint that cannot be served: unreadable, not ours, or another architecture."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def save_checkpoint(path, model: PolypUNet, profile: Profile, extra: dict | None = None) -> None:
    """Write a self-describing checkpoint atomically (tmp file, then rename).

    Tensors and plain data only (dicts, lists, str, numbers), so that it loads with
    ``weights_only=True``: a checkpoint can never carry code."""
    payload = {"state_dict": model.state_dict(), "profile": _plain(profile.to_dict()), "extra": _plain(extra or {})}
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before it is renamed in: a power cut never leaves an empty model
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _plain(x):
    """Numbers, strings, lists and dicts only (numpy scalars and tuples converted)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (str, bool, int, float)) or x is None:
        return x
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    raise TypeError(f"checkpoint metadata must be plain data, got {type(x).__name__}")


MAX_ARCHIVE_ENTRIES = 10_000  # a polyp-al checkpoint has one per tensor: about 100
MAX_DIRECTORY_BYTES = 4 << 20  # its zip directory: about 10 KB


def _check_archive(path) -> None:
    """A checkpoint is a zip of stored (uncompressed) entries (``torch.save``): one whose entries would
    inflate past twice the file, or that has more than MAX_ARCHIVE_ENTRIES of them, is refused before
    ``torch.load`` inflates anything (a 195 KB upload of deflated zeros made it allocate 200 MB)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # torch.load's own refusal (or the legacy format, read with weights_only)
    size = os.path.getsize(path)
    with open(path, "rb") as f:  # the directory's size from its end record, before zipfile parses it whole:
        end = zipfile._EndRecData(f)  # about 400 bytes of memory per 46-byte entry (1 GB upload: 9 GB)
    if end and end[zipfile._ECD_SIZE] > MAX_DIRECTORY_BYTES:
        raise CheckpointError(path, f"archive directory of {end[zipfile._ECD_SIZE]} bytes (over "
                                    f"{MAX_DIRECTORY_BYTES}): not a polyp-al checkpoint")
    with zipfile.ZipFile(path) as z:
        entries = z.infolist()
        if len(entries) > MAX_ARCHIVE_ENTRIES:
            raise CheckpointError(path, f"archive of {len(entries)} entries: not a polyp-al checkpoint")
        inflated = sum(e.file_size for e in entries)
        if inflated > 2 * size + (1 << 20):
            raise CheckpointError(path, f"archive whose entries inflate to {inflated} bytes from {size}: refused "
                                        f"before reading (torch.save stores its entries uncompressed)")


def _unloadable(path, e: Exception) -> str:
    """Why torch.load refused a file, in a sentence. torch's own text for a file holding code objects advises
    loading it with weights_only=False, which would run that code: it is never passed on."""
    import pickle
    import zipfile

    try:  # (a pickle protocol 2+ starts with 0x80). Unreadable (permissions, a folder, a disk error): no
        # verdict on its contents (torch raises OSError for a cut zip too, so its error cannot tell)
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip (a pickle in the old format)
        return "not a loadable polyp-al checkpoint: not a PyTorch checkpoint file at all (save one with torch.save " \
               "or take the .pt a polyp-al training wrote)"
    if isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e).lower():
        return "not a loadable polyp-al checkpoint: it holds objects other than tensors and plain data, refused " \
               "unread (loading them could run code); a polyp-al checkpoint holds its weights, profile and numbers"
    if head == b"PK" and not zipfile.is_zipfile(path):
        return "not a loadable polyp-al checkpoint: damaged or cut short (its zip archive has no end record)"
    first = str(e).split(". ")[0].strip()[:160]
    return f"not a loadable polyp-al checkpoint: damaged or cut short ({type(e).__name__}{': ' + first if first else ''})"


def load_checkpoint(path, device=None, expect: Profile | None = None) -> tuple[PolypUNet, Profile, dict]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs) into a fresh PolypUNet.

    Raises CheckpointError naming the file when it is not a polyp-al checkpoint, when its weights
    do not fit its profile's U-Net, or (with ``expect``) when its architecture differs from that profile's.
    """
    try:
        _check_archive(path)
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "file not found") from None
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - pickle's UnpicklingError, zip errors, ...: all mean "refused"
        raise CheckpointError(path, _unloadable(path, e)) from None
    if not isinstance(ck, dict) or not isinstance(ck.get("state_dict"), dict) or not isinstance(ck.get("profile"), dict):
        raise CheckpointError(path, "not a polyp-al checkpoint (needs 'state_dict' and 'profile')")
    try:
        pd = {k: tuple(v) if isinstance(v, list) else v for k, v in ck["profile"].items()}
        known = set(Profile.__dataclass_fields__)
        profile = Profile(**{k: v for k, v in pd.items() if k in known})
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(path, f"bad profile in checkpoint ({type(e).__name__}: {e})") from None
    if expect is not None:  # before building anything: a hostile profile could ask for a huge network
        arch = ("channels", "strides", "num_res_units")
        if any(getattr(profile, a) != getattr(expect, a) for a in arch):
            raise CheckpointError(path, f"architecture {[getattr(profile, a) for a in arch]} differs from this "
                                        f"server's profile {expect.name!r} {[getattr(expect, a) for a in arch]}")
    try:
        model = PolypUNet.from_profile(profile)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(path, f"bad profile in checkpoint ({type(e).__name__}: {e})") from None
    try:
        model.load_state_dict(ck["state_dict"], strict=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(path, f"weights do not fit the U-Net of its profile: {str(e)[:300]}") from None
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # a diverged training or a hostile upload: every prediction would be NaN
        raise CheckpointError(path, f"weights hold NaN or infinite values ({len(bad)} tensors, e.g. {bad[0]})")
    extra = ck.get("extra", {})
    model.to(device or default_device()).eval()
    return model, profile, extra if isinstance(extra, dict) else {}
