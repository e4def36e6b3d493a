"""Best-vs-Second-Best (BvSB) uncertainty and image-level aggregations.

Per pixel, BvSB = 1 - (p_best - p_second) (eqn 3). For a single sigmoid output
p the two classes are p and 1-p, so BvSB = 1 - |2p - 1| (eqn 4). Higher means
more uncertain. The paper scores an image by the mean over all pixels
(``mean``). Because polyps cover ~8% of pixels, that mean is dominated by the
background; two aggregations focus on where the model hesitates:

- ``topk``: mean of the most uncertain ``topk_frac`` of pixels;
- ``region``: mean over the predicted polyp region dilated by a boundary band
  (falls back to ``topk`` when nothing is predicted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

AGGREGATIONS = ("mean", "topk", "region")


def bvsb_multiclass(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Eqn 3: 1 - (best - second best) over the class dimension of softmax probabilities."""
    top2 = torch.topk(probs, k=2, dim=dim).values
    return 1.0 - (top2.select(dim, 0) - top2.select(dim, 1))


def bvsb_binary(p: torch.Tensor) -> torch.Tensor:
    """Eqn 4: per-pixel BvSB of a sigmoid probability map."""
    return 1.0 - (2.0 * p - 1.0).abs()


def aggregate(pixel_scores: torch.Tensor, probs: torch.Tensor | None = None, method: str = "mean",
              topk_frac: float = 0.05, band: int = 3) -> torch.Tensor:
    """Image scores (B,) from per-pixel scores (B,[1,]H,W)."""
    s = pixel_scores.reshape(pixel_scores.shape[0], -1)
    if method == "mean":
        return s.mean(dim=1)
    k = max(1, int(round(topk_frac * s.shape[1])))
    topk = torch.topk(s, k=k, dim=1).values.mean(dim=1)
    if method == "topk":
        return topk
    if method == "region":
        if probs is None:
            raise ValueError("the 'region' aggregation needs the probability map")
        fg = (probs.reshape(probs.shape[0], 1, *probs.shape[-2:]) > 0.5).float()
        region = F.max_pool2d(fg, kernel_size=2 * band + 1, stride=1, padding=band).reshape(s.shape)
        area = region.sum(dim=1)
        mean_in = (s * region).sum(dim=1) / area.clamp(min=1)
        return torch.where(area > 0, mean_in, topk)
    raise ValueError(f"unknown aggregation {method!r}; choose one of {AGGREGATIONS}")


@dataclass(frozen=True)
class BvSB:
    """A scorer for ``polypal.learner.inference``: BvSB per pixel (eqn 4), aggregated per image.

    Its ``name`` keys ``PoolPrediction.scores``: the aggregation's name ("mean" is the paper's score).
    """

    aggregation: str = "mean"
    topk_frac: float = 0.05
    band: int = 3

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose one of {AGGREGATIONS}")

    @property
    def name(self) -> str:
        return self.aggregation

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        return aggregate(bvsb_binary(probs), probs, self.aggregation, self.topk_frac, self.band)


def image_scores(probs, method: str = "mean", **kw) -> np.ndarray:
    """Convenience: sigmoid probability maps (N,H,W) -> BvSB image scores (N,)."""
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    return aggregate(bvsb_binary(p), p, method, **kw).numpy()
