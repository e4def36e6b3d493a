"""The Learner's inference: one eval-mode pass over a set of frames.

Each frame is decoded and run through the U-Net once; from that pass come its
probability map, its bottleneck latent (TA-Coreset's feature) and any number
of image scores (the scorers, e.g. BvSB with an aggregation), so scoring a
pool never runs the network twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from polypal.data import normalize
from polypal.learner.metrics import evaluate, per_image_scores
from polypal.learner.model import PolypUNet
from polypal.sampler import BvSB


@dataclass
class PoolPrediction:
    """One eval-mode, no-grad pass over a set of frames."""

    probs: np.ndarray  # (N, S, S) float32 sigmoid probabilities
    latents: np.ndarray  # (N, d) float32
    scores: dict  # scorer name -> (N,) image scores


def _to_tensor(images_uint8: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(normalize(images_uint8)).to(device)


@torch.no_grad()
def predict(model: PolypUNet, images_uint8: np.ndarray, batch_size: int = 32, device=None,
            scorers: Sequence[Callable] = (BvSB("mean"),), keep_probs: bool = True,
            progress: Callable | None = None) -> PoolPrediction:
    """Probabilities, latents and image scores for every frame in one batched pass.

    ``scorers``: callables ``(probs (B, H, W) tensor) -> (B,) tensor`` with a ``name``; each gives
    ``PoolPrediction.scores[name]`` (BvSB with an aggregation is one: ``polypal.sampler.BvSB``).
    """
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ValueError(f"scorer names must differ, got {names}")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(images_uint8)
    size = images_uint8.shape[1:3]
    probs = np.empty((n, *size), dtype=np.float32) if keep_probs else None
    latents = np.empty((n, model.latent_dim), dtype=np.float32)
    scores = {s.name: np.empty(n, dtype=np.float32) for s in scorers}
    for s in range(0, n, batch_size):
        x = _to_tensor(images_uint8[s : s + batch_size], device)
        logits, z = model(x)
        p = torch.sigmoid(logits)[:, 0]
        for scorer in scorers:
            scores[scorer.name][s : s + len(x)] = scorer(p).cpu().numpy()
        latents[s : s + len(x)] = z.cpu().numpy()
        if keep_probs:
            probs[s : s + len(x)] = p.cpu().numpy()
        if progress:
            progress(len(x))
    model.train(was_training)
    return PoolPrediction(probs=probs, latents=latents, scores=scores)


def validate(model: PolypUNet, images, masks, batch_size: int = 32) -> dict:
    pred = predict(model, images, batch_size=batch_size, scorers=())
    return evaluate(pred.probs, masks)


def predicts_no_polyp(model: PolypUNet, images_uint8: np.ndarray, masks: np.ndarray, limit: int = 64) -> bool:
    """A collapsed training: the model marks no pixel as polyp on (up to ``limit``) frames whose masks have
    polyps. Measured on the training frames themselves, so it needs no validation set (the server's first
    cycles have none). False when those masks are empty."""
    masks = np.asarray(masks[:limit])
    if not masks.any():
        return False
    return not (predict(model, images_uint8[:limit], scorers=(), keep_probs=True).probs > 0.5).any()


def labeled_fit(model: PolypUNet, images_uint8: np.ndarray, masks: np.ndarray, chunk: int = 256) -> float | None:
    """How well a model fits the frames it was trained on: their mean polyp Dice, in eval mode, without
    augmentation. A failed training fits its own frames worst (results/calibration/collapse-replay.md).
    Taken ``chunk`` frames at a time, so a large labeled set never holds all its probability maps at once.
    None when those masks are empty."""
    masks = np.asarray(masks)
    if not masks.any():
        return None
    dice = [per_image_scores(predict(model, images_uint8[s : s + chunk], scorers=()).probs > 0.5,
                             masks[s : s + chunk])["dice"] for s in range(0, len(masks), chunk)]
    return float(np.mean(np.concatenate(dice)))
