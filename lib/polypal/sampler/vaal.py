"""VAAL baseline (Sinha et al. 2019), sized for the CPU.

A small VAE embeds every frame (downsampled to ``size``); a discriminator on
the VAE's latent learns to tell labeled from unlabeled frames while the VAE
learns to fool it. The frames the discriminator rates least likely to be
labeled are picked. Trained from scratch each cycle, scored in eval mode.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polypal.data import normalize
from polypal.sampler.selection import Selection


class _VAE(nn.Module):
    def __init__(self, z: int = 32, size: int = 64):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Flatten(),
        )
        self.s = size // 8
        self.mu = nn.Linear(128 * self.s * self.s, z)
        self.logvar = nn.Linear(128 * self.s * self.s, z)
        self.fc = nn.Linear(z, 128 * self.s * self.s)
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        rec = self.dec(self.fc(z).view(-1, 128, self.s, self.s))
        return rec, mu, logvar


def vaal_select(images_uint8: np.ndarray, labeled, budget: int, seed: int = 0, size: int = 64,
                steps: int = 300, batch: int = 16, z: int = 32, beta: float = 1.0, adv: float = 1.0) -> Selection:
    """Pick ``budget`` unlabeled frames the VAAL discriminator finds least 'labeled'."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(normalize(images_uint8))
    if x_all.shape[-1] != size:
        x_all = F.interpolate(x_all, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    n = len(x_all)
    lab = np.unique(np.asarray(labeled, dtype=np.int64))
    mask = np.ones(n, dtype=bool)
    mask[lab] = False
    unl = np.flatnonzero(mask)
    budget = min(budget, len(unl))
    vae = _VAE(z, size)
    disc = nn.Sequential(nn.Linear(z, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
    opt_v = torch.optim.Adam(vae.parameters(), lr=5e-4)
    opt_d = torch.optim.Adam(disc.parameters(), lr=5e-4)
    for _ in range(steps):
        xl = x_all[rng.choice(lab, size=min(batch, len(lab)), replace=len(lab) < batch)]
        xu = x_all[rng.choice(unl, size=min(batch, len(unl)), replace=len(unl) < batch)]
        vae.train()
        rl, mul, lvl = vae(xl)
        ru, muu, lvu = vae(xu)
        kl = lambda mu, lv: -0.5 * torch.mean(1 + lv - mu.pow(2) - lv.exp())
        loss_v = F.mse_loss(rl, xl) + F.mse_loss(ru, xu) + beta * (kl(mul, lvl) + kl(muu, lvu))
        # VAE tries to make the discriminator call everything "labeled"
        dl, du = disc(mul), disc(muu)
        loss_v = loss_v + adv * (F.binary_cross_entropy_with_logits(dl, torch.ones_like(dl))
                                 + F.binary_cross_entropy_with_logits(du, torch.ones_like(du)))
        opt_v.zero_grad()
        loss_v.backward()
        opt_v.step()
        with torch.no_grad():
            _, mul, _ = vae(xl)
            _, muu, _ = vae(xu)
        dl, du = disc(mul), disc(muu)
        loss_d = (F.binary_cross_entropy_with_logits(dl, torch.ones_like(dl))
                  + F.binary_cross_entropy_with_logits(du, torch.zeros_like(du)))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
    vae.eval()
    disc.eval()
    with torch.no_grad():
        probs = []
        for s in range(0, len(unl), 64):
            mu = vae.mu(vae.enc(x_all[unl[s : s + 64]]))
            probs.append(torch.sigmoid(disc(mu)).squeeze(1))
        p = torch.cat(probs).numpy()
    order = np.argsort(p, kind="stable")[:budget]  # least likely labeled first
    return Selection(unl[order].astype(np.int64), ["vaal"] * budget)
