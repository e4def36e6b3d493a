"""Training profiles: every setting that changes cost or results, in one named place.

- ``paper``: the paper's settings (256x256, 512-d bottleneck, lr 2e-4, batch 8,
  100 epochs), plus what the cpu-lite calibration kept: the endoscopy
  augmentation, the EMA of the weights (decay 0.99) as the returned model and
  3 retries of a collapsed training (measured at cpu-lite's sizes only, not
  at 256 px on a GPU). Meant for a GPU:
  about 4 h per AL cycle on a 2-core CPU.
- ``cpu-lite``: 128x128, a 0.8M-parameter U-Net with a 256-d bottleneck, lr
  1e-3 at constant rate (with 2e-4 and few labels the model still predicts
  "all polyp" after a few hundred steps, shared/docs/calibration.md), the
  endoscopy augmentation (``polypal.learner.augment``: flips, 90-degree rotations,
  random scale/shift, colour jitter), a step budget that grows with the labeled
  set (40 epochs' worth, at least 1200 and at most 3000 steps: 1200 up to 240
  labels, 1520 at 300, 3000 at 600; a cap of 1500 under-trained Kvasir-SEG's
  larger stages with the augmentation), the EMA of the weights (decay 0.99) at the end of the
  cycle as the model, and up to 3 retries of a collapsed training. This is the
  v3 recipe (results/calibration/README.md, "v3"): the v2 recipe (flips only, a
  600-step floor and a 1500-step cap, no retries; ``results/*-v2``) is ``--min-steps 600 --max-steps 1500 --augment
  flips --collapse-retries 0``. A cosine schedule and best-validation selection
  were measured and not kept. A Kvasir-SEG run trains 11,440 steps (6
  trainings; its time on this machine's CPU is in the README's results).
- ``smoke``: 32x32, a tiny U-Net and a handful of steps, for tests.

``collapse_retries`` (cpu-lite: 3; the server's default too) redoes a training whose model
predicts no polyp on its own frames (results/calibration/collapse-replay.md). ``fit_floor``
(off everywhere by default) also redoes one whose model fits its own frames poorly (polyp Dice
under the floor): a candidate that catches CVC's two large v3 drops, not Kvasir's
(results/calibration/collapse-replay.md, "The threshold tested").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str
    size: int  # frames are resized to size x size
    channels: tuple[int, ...]  # U-Net widths; the last one is the latent dimension
    strides: tuple[int, ...]
    num_res_units: int
    lr: float
    batch_size: int
    epochs: int
    min_steps: int  # a cycle trains at least this many optimizer steps...
    max_steps: int | None  # ...and at most this many (None: epochs decide)
    val_every: int  # validate every this many steps (and at the end)
    flips: bool  # random horizontal/vertical flips in training
    betas: tuple[float, float] = (0.9, 0.999)
    vaal_steps: int = 300  # VAAL baseline: VAE + discriminator steps per cycle
    # the training recipe (results/calibration/ measures each of these)
    schedule: str = "constant"  # "constant", or "cosine": linear warm-up, then cosine decay to lr * min_lr
    warmup: float = 0.0  # warm-up length, as a fraction of the cycle's step budget
    min_lr: float = 0.0  # the cosine schedule's floor, as a fraction of lr
    augment: str = ""  # "": flips only (when `flips`); "rot": flips, 90-degree rotations; "endo": rot, scale/shift, colour
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: no EMA)
    select: str = "best_val"  # which weights a cycle returns: "best_val", "last", "ema" (EMA at the end),
    #                           "ema_best_val" (EMA weights at their best validation Dice)
    collapse_retries: int = 0  # retrain from scratch (next seed) when the returned weights predict no polyp on any
    #                            training frame although the masks have polyps; at most this many times
    fit_floor: float = 0.0  # with collapse_retries: also retrain when the returned weights' polyp Dice on their own
    #                         training frames is under this (0: off; a candidate, results/calibration/collapse-replay.md)

    @property
    def latent_dim(self) -> int:
        return self.channels[-1]

    def steps_for(self, n_train: int) -> int:
        """Optimizer steps for a training set of n_train frames."""
        per_epoch = max(1, math.ceil(n_train / self.batch_size))
        steps = max(self.epochs * per_epoch, self.min_steps)
        if self.max_steps is not None:
            steps = min(steps, self.max_steps)
        return steps

    def to_dict(self) -> dict:
        """Every field, except fields added after recipes were fingerprinted while they are off: a recipe
        that does not use them keeps its fingerprint (polypal.experiments.simulate.recipe_hash)."""
        d = asdict(self)
        for k, off in _ADDED_LATER.items():
            if d.get(k) == off:
                d.pop(k)
        return d


_ADDED_LATER = {"collapse_retries": 0, "fit_floor": 0.0}


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper", size=256, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2),
        num_res_units=2, lr=2e-4, batch_size=8, epochs=100, min_steps=0, max_steps=None,
        val_every=0, flips=True, vaal_steps=2000, augment="endo", ema=0.99, select="ema", collapse_retries=3,
    ),
    "cpu-lite": Profile(
        name="cpu-lite", size=128, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
        num_res_units=1, lr=1e-3, batch_size=8, epochs=40, min_steps=1200, max_steps=3000,
        val_every=100, flips=True, augment="endo", ema=0.99, select="ema", collapse_retries=3,
    ),
    "smoke": Profile(
        name="smoke", size=32, channels=(4, 8, 16), strides=(2, 2), num_res_units=0,
        lr=1e-3, batch_size=4, epochs=1, min_steps=4, max_steps=6, val_every=3, flips=True,
        vaal_steps=4,
    ),
}


def get_profile(name: str, **overrides) -> Profile:
    """A profile by name, optionally with fields overridden (e.g. epochs=2)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    p = PROFILES[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(p, **overrides) if overrides else p
