"""k-center greedy on a torch device (a GPU when one is present): the rule of ``polypal.sampler.kcenter``.

Same greedy rule, initial centers (the labeled set), seeded first center when nothing is labeled
(``numpy.random.default_rng(seed)`` over the candidates, as the numpy version), ties to the lowest index
(``torch.argmax`` returns the first maximum), and the same arithmetic: squared distances
|x|^2 - 2 x.c + |c|^2 with the norms in float64, clamped at 0. On float64 features the picks equal the
numpy version's except where two distances tie to the last bit (the dot products' summation order is the
device library's); float32 features run the dot products in float32, like the numpy float32 path.

For pools whose latents already live on the device; nothing in polyp-al calls it on a CPU-only machine
(``k_center_greedy`` stays the numpy one). Checked here on the CPU (float64 picks equal the numpy
version's); it has not run on a GPU yet (no device was available to this project's sessions).
"""

from __future__ import annotations

import numpy as np
import torch

from polypal.sampler.kcenter import _check_finite, seeded_first_center


def k_center_greedy_torch(features, labeled, budget: int, candidates=None, seed: int = 0, device=None,
                          chunk: int = 65536) -> np.ndarray:
    """Pick ``budget`` indices by k-center greedy on ``device`` (default: CUDA when available, else CPU).

    ``features``: (N, d) numpy array or tensor; the other arguments as ``polypal.sampler.k_center_greedy``.
    Returns the picked indices in pick order (numpy int64).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    x = x.to(device)
    n = x.shape[0]
    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    mask = np.ones(n, dtype=bool) if candidates is None else np.zeros(n, dtype=bool)
    if candidates is not None:
        mask[np.asarray(candidates, dtype=np.int64)] = True
    mask[labeled] = False
    budget = int(min(budget, mask.sum()))
    if budget <= 0:
        return np.empty(0, dtype=np.int64)
    x_sq = (x.double() ** 2).sum(dim=1) if x.dtype == torch.float64 else _sq_chunked(x, chunk)
    _check_finite(x_sq.cpu().numpy())
    best = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
    lab = torch.as_tensor(labeled, device=device)
    for cs in range(0, len(labeled), 1024):  # initial centers, in blocks of 1024 centers x chunk rows
        c = x[lab[cs : cs + 1024]]
        csq = x_sq[lab[cs : cs + 1024]]
        for s in range(0, n, chunk):
            d = x_sq[s : s + chunk, None] - 2.0 * (x[s : s + chunk] @ c.T).double() + csq[None, :]
            best[s : s + chunk] = torch.minimum(best[s : s + chunk], d.min(dim=1).values)
    best.clamp_(min=0.0)
    mask_t = torch.as_tensor(mask, device=device)
    picks = np.empty(budget, dtype=np.int64)
    for k in range(budget):
        if k == 0 and len(labeled) == 0:
            j = seeded_first_center(mask, seed)
        else:
            j = int(torch.argmax(torch.where(mask_t, best, torch.tensor(-1.0, dtype=best.dtype, device=device))))
        picks[k] = j
        mask_t[j] = False
        mask[j] = False
        d = x_sq - 2.0 * (x @ x[j]).double() + x_sq[j]
        best = torch.minimum(best, d.clamp_(min=0.0))
    return picks


def _sq_chunked(x: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([(x[s : s + chunk].double() ** 2).sum(dim=1) for s in range(0, x.shape[0], chunk)])
