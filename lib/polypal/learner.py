"""The Learner: train the U-Net on labeled frames, predict a pool in one pass.

Training: BCE + Dice (MONAI's DiceCELoss with a sigmoid), Adam with the
profile's lr and betas, batch from the profile. The step budget is
``profile.steps_for(n_train)``; validation runs every ``val_every`` steps and at
the end, and the weights with the best validation polyp Dice are kept. Seeded
and deterministic on the CPU.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from monai.losses import DiceCELoss

from .data import normalize
from .metrics import evaluate
from .model import PolypUNet, default_device
from .profiles import Profile
from .uncertainty import aggregate, bvsb_binary

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    model: PolypUNet
    best_val: dict
    best_step: int
    steps: int
    seconds: float
    history: list = field(default_factory=list)


@dataclass
class PoolPrediction:
    """One eval-mode, no-grad pass over a set of frames."""

    probs: np.ndarray  # (N, S, S) float32 sigmoid probabilities
    latents: np.ndarray  # (N, d) float32
    scores: dict  # aggregation name -> (N,) BvSB image scores


def _to_tensor(images_uint8: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(normalize(images_uint8)).to(device)


@torch.no_grad()
def predict(model: PolypUNet, images_uint8: np.ndarray, batch_size: int = 32, device=None,
            aggregations=("mean",), keep_probs: bool = True, progress: Callable | None = None) -> PoolPrediction:
    """Probabilities, latents and BvSB image scores for every frame in one batched pass."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(images_uint8)
    size = images_uint8.shape[1:3]
    probs = np.empty((n, *size), dtype=np.float32) if keep_probs else None
    latents = np.empty((n, model.latent_dim), dtype=np.float32)
    scores = {a: np.empty(n, dtype=np.float32) for a in aggregations}
    for s in range(0, n, batch_size):
        x = _to_tensor(images_uint8[s : s + batch_size], device)
        logits, z = model(x)
        p = torch.sigmoid(logits)[:, 0]
        px = bvsb_binary(p)
        for a in aggregations:
            scores[a][s : s + len(x)] = aggregate(px, p, a).cpu().numpy()
        latents[s : s + len(x)] = z.cpu().numpy()
        if keep_probs:
            probs[s : s + len(x)] = p.cpu().numpy()
        if progress:
            progress(len(x))
    model.train(was_training)
    return PoolPrediction(probs=probs, latents=latents, scores=scores)


def validate(model: PolypUNet, images, masks, batch_size: int = 32) -> dict:
    pred = predict(model, images, batch_size=batch_size, aggregations=())
    return evaluate(pred.probs, masks)


def train(
    profile: Profile,
    train_images: np.ndarray,
    train_masks: np.ndarray,
    val_images: np.ndarray | None = None,
    val_masks: np.ndarray | None = None,
    seed: int = 0,
    device=None,
    init_state: dict | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a fresh U-Net (or continue from ``init_state``) and return the best-validation model.

    Without a validation set the last weights are returned.
    """
    if len(train_images) == 0:
        raise ValueError("cannot train on an empty labeled set")
    if train_masks is None or len(train_masks) != len(train_images):
        raise ValueError("every training image needs a mask")
    device = torch.device(device) if device else default_device()
    seed_everything(seed)
    model = PolypUNet.from_profile(profile).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    opt = torch.optim.Adam(model.parameters(), lr=profile.lr, betas=profile.betas)
    loss_fn = DiceCELoss(sigmoid=True)
    gen = torch.Generator().manual_seed(seed)
    n = len(train_images)
    steps = profile.steps_for(n)
    val_every = profile.val_every or max(1, int(np.ceil(n / profile.batch_size)))  # 0: once per epoch
    has_val = val_images is not None and len(val_images) > 0
    best_state, best_val, best_step = None, None, -1
    history = []
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=gen)
    pos = 0
    model.train()
    for step in range(1, steps + 1):
        if pos + profile.batch_size > n and pos > 0:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + profile.batch_size].numpy()
        pos += profile.batch_size
        x = _to_tensor(train_images[idx], device)
        y = torch.from_numpy(train_masks[idx].astype(np.float32)).unsqueeze(1).to(device)
        if profile.flips:
            if torch.rand(1, generator=gen).item() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if torch.rand(1, generator=gen).item() < 0.5:
                x, y = x.flip(-2), y.flip(-2)
        logits, _ = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step:
            on_step(step, steps, loss.item())
        last = step == steps or (should_stop is not None and should_stop())
        if has_val and (step % val_every == 0 or last):
            m = validate(model, val_images, val_masks)
            m.pop("pooled", None)
            history.append({"step": step, "loss": loss.item(), **m})
            if best_val is None or m["polyp_dice"] > best_val["polyp_dice"]:
                best_val, best_step = m, step
                best_state = copy.deepcopy(model.state_dict())
            model.train()
        if last:
            steps = step
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_step = steps
    model.eval()
    return TrainResult(model=model, best_val=best_val or {}, best_step=best_step, steps=steps,
                       seconds=time.perf_counter() - t0, history=history)
