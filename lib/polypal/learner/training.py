"""The Learner's training: the U-Net on the labeled frames, with the profile's recipe.

Training: BCE + Dice (MONAI's DiceCELoss with a sigmoid), Adam with the
profile's lr and betas, batch from the profile. The step budget is
``profile.steps_for(n_train)``; the learning rate follows ``profile.schedule``
(constant, or linear warm-up then cosine decay); augmentation follows
``profile.augment`` (``polypal.learner.augment``); an EMA of the weights is kept when
``profile.ema`` > 0. Validation runs every ``val_every`` steps and at the end,
and ``profile.select`` says which weights are returned (best validation Dice,
last, EMA). Seeded and deterministic on the CPU.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from monai.losses import DiceCELoss

from polypal.learner.augment import Augmenter, augment_kind
from polypal.learner.model import PolypUNet, default_device
from polypal.learner.inference import _to_tensor, labeled_fit, predicts_no_polyp, validate
from polypal.learner.profiles import Profile

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
    variants: dict = field(default_factory=dict)  # selection rule -> model (train(keep_variants=True))
    retries: int = 0  # trainings redone after a collapse (profile.collapse_retries)
    fit_dice: float | None = None  # polyp Dice on the training frames (measured only with profile.fit_floor)


def hash_validation(ids, fraction: int = 5, min_labels: int = 5) -> np.ndarray:
    """Which of ``ids`` validate (bool array): deterministic and independent of the labeling order.

    A frame validates when sha1(id) mod ``fraction`` is 0, so it stays on its side as labels are added.
    A small set can have none that way (2 of the 30 sample frames): it is topped up with the frames of
    the smallest hashes to ``len(ids) // fraction``. Fewer than ``min_labels`` labels: nothing validates.
    """
    import hashlib

    h = [int(hashlib.sha1(str(i).encode()).hexdigest(), 16) for i in ids]
    val = np.array([x % fraction == 0 for x in h], dtype=bool)
    if len(ids) < min_labels:
        return np.zeros(len(ids), dtype=bool)
    want = len(ids) // fraction
    for k in sorted(range(len(ids)), key=lambda k: h[k]):
        if val.sum() >= want:
            break
        val[k] = True
    if val.all():
        val[:] = False
    return val


def labels_to_validate(profile: Profile, ids) -> np.ndarray:
    """Which labeled frames a live training holds out (bool array): ``hash_validation`` when the profile
    picks its weights by validation (``best_val``, ``ema_best_val``), else none. A profile that keeps the
    EMA or the last weights never reads its validation, so holding a fifth of the annotators' labels out
    of training bought a number no one used (a correctness review)."""
    if profile.select in ("best_val", "ema_best_val"):
        return hash_validation(ids)
    return np.zeros(len(list(ids)), dtype=bool)


def lr_factor(profile: Profile, step: int, steps: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based) of ``steps``, as a fraction of ``profile.lr``."""
    if profile.schedule == "constant":
        return 1.0
    if profile.schedule != "cosine":
        raise ValueError(f"unknown lr schedule {profile.schedule!r}; choose constant or cosine")
    warm = int(round(profile.warmup * steps))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return profile.min_lr + (1 - profile.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


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
    keep_variants: bool = False,
) -> TrainResult:
    """Train a fresh U-Net (or continue from ``init_state``) and return the weights ``profile.select`` picks.

    ``best_val``: the weights with the best validation polyp Dice; ``last``: the final weights; ``ema``:
    the exponential moving average of the weights at the end; ``ema_best_val``: the EMA weights at their
    best validation Dice. Without a validation set the last (or EMA) weights are returned.
    ``keep_variants`` also returns every rule's model in ``TrainResult.variants`` (for calibration).
    With ``profile.collapse_retries`` > 0, a training whose weights predict no polyp on any training frame
    (``predicts_no_polyp``) is done again from a fresh network with seed ``seed + 1000003 * k``, at most that
    many times; ``TrainResult.retries`` says how many were needed. With ``profile.fit_floor`` > 0 as well,
    so is one whose polyp Dice on its own training frames is under the floor (``TrainResult.fit_dice``);
    when every try fails, the one that fits its frames best is returned.
    """
    args = (profile, train_images, train_masks, val_images, val_masks)
    res = _train_once(*args, seed=seed, device=device, init_state=init_state, on_step=on_step,
                      should_stop=should_stop, keep_variants=keep_variants)
    best = None  # of the tries that under-fit (fit_floor), the one that fits its frames best
    for k in range(1, profile.collapse_retries + 1):
        why = _failed(res, profile, train_images, train_masks)
        if why is None:
            break
        if res.fit_dice is not None and (best is None or res.fit_dice > best.fit_dice):
            best = res
        logger.warning(f"training {why}: retry {k} with a fresh network, seed {seed + 1000003 * k}")
        res = _train_once(*args, seed=seed + 1000003 * k, device=device, on_step=on_step, should_stop=should_stop,
                          keep_variants=keep_variants)
        res.retries = k
    else:  # every retry used (or none allowed): the last try is judged too
        if best is not None and _failed(res, profile, train_images, train_masks) is not None and \
                (res.fit_dice is None or res.fit_dice < best.fit_dice):
            logger.warning(f"every retry failed: keeping the try that fits its own frames best (polyp Dice "
                           f"{best.fit_dice:.3f})")
            best.retries, res = res.retries, best
    if profile.fit_floor > 0 and res.fit_dice is None:
        res.fit_dice = labeled_fit(res.model, train_images, train_masks)  # the last retry's, for the record
    return res


def _failed(res: TrainResult, profile: Profile, train_images, train_masks) -> str | None:
    """Why the returned weights count as a failed training, or None: no polyp predicted on any training
    frame (a collapse), or, with ``profile.fit_floor``, a polyp Dice on the training frames under it."""
    if predicts_no_polyp(res.model, train_images, train_masks):
        return "collapsed (no polyp predicted on any training frame)"
    if profile.fit_floor > 0:
        res.fit_dice = labeled_fit(res.model, train_images, train_masks)
        if res.fit_dice is not None and res.fit_dice < profile.fit_floor:
            return f"under-fits its own frames (polyp Dice {res.fit_dice:.3f} under fit_floor {profile.fit_floor:g})"
    return None


def _train_once(profile: Profile, train_images, train_masks, val_images, val_masks, *, seed, device, on_step,
                should_stop, keep_variants, init_state=None) -> TrainResult:
    """One training run (``train`` adds the retry on collapse)."""
    if len(train_images) == 0:
        raise ValueError("cannot train on an empty labeled set")
    if train_masks is None or len(train_masks) != len(train_images):
        raise ValueError("every training image needs a mask")
    if profile.select not in ("best_val", "last", "ema", "ema_best_val"):
        raise ValueError(f"unknown selection rule {profile.select!r}")
    if profile.select.startswith("ema") and not profile.ema:
        raise ValueError(f"selection {profile.select!r} needs an EMA decay (profile.ema > 0)")
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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(profile, s, steps))
    aug_kind = augment_kind(profile)
    augmenter = Augmenter(aug_kind, profile.size, seed) if profile.augment else None
    ema_model = None
    if profile.ema:
        ema_model = copy.deepcopy(model)
        ema_params = [v for v in ema_model.state_dict().values() if v.dtype.is_floating_point]
        model_params = [v for v in model.state_dict().values() if v.dtype.is_floating_point]
    val_every = profile.val_every or max(1, int(np.ceil(n / profile.batch_size)))  # 0: once per epoch
    has_val = val_images is not None and len(val_images) > 0
    best = {"raw": (None, None, -1), "ema": (None, None, -1)}  # state, val metrics, step
    last_val = {}
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
        if augmenter is not None:
            x, y = augmenter(x.cpu(), y.cpu())
            x, y = x.to(device), y.to(device)
        elif aug_kind == "flips":  # the old recipe's flips, kept bit for bit
            if torch.rand(1, generator=gen).item() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if torch.rand(1, generator=gen).item() < 0.5:
                x, y = x.flip(-2), y.flip(-2)
        logits, _ = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema_model is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, model_params, 1.0 - profile.ema)
        if on_step:
            on_step(step, steps, loss.item())
        last = step == steps or (should_stop is not None and should_stop())
        if has_val and (step % val_every == 0 or last):
            entry = {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"]}
            for kind, m_ in (("raw", model), ("ema", ema_model)):
                if m_ is None:
                    continue
                m = validate(m_, val_images, val_masks)
                m.pop("pooled", None)
                entry.update(m if kind == "raw" else {f"ema_{k}": v for k, v in m.items()})
                if last:
                    last_val[kind] = m
                if best[kind][1] is None or m["polyp_dice"] > best[kind][1]["polyp_dice"]:
                    best[kind] = (copy.deepcopy(m_.state_dict()), m, step)
            history.append(entry)
            model.train()
        if last:
            steps = step
            break
    seconds = time.perf_counter() - t0

    def build(state):
        m = PolypUNet.from_profile(profile).to(device)
        m.load_state_dict(state)
        return m.eval()

    variants = {}
    if keep_variants:
        variants["last"] = build(model.state_dict())
        if best["raw"][0] is not None:
            variants["best_val"] = build(best["raw"][0])
        if ema_model is not None:
            variants["ema"] = build(ema_model.state_dict())
            if best["ema"][0] is not None:
                variants["ema_best_val"] = build(best["ema"][0])
    rule = profile.select
    if rule == "best_val" and best["raw"][0] is not None:
        model.load_state_dict(best["raw"][0])
        val, chosen_step = best["raw"][1], best["raw"][2]
    elif rule == "ema_best_val" and best["ema"][0] is not None:
        model.load_state_dict(best["ema"][0])
        val, chosen_step = best["ema"][1], best["ema"][2]
    elif rule.startswith("ema"):
        model.load_state_dict(ema_model.state_dict())
        val, chosen_step = last_val.get("ema", {}), steps
    else:
        val, chosen_step = last_val.get("raw", {}), steps
    model.eval()
    return TrainResult(model=model, best_val=val or {}, best_step=chosen_step, steps=steps,
                       seconds=seconds, history=history, variants=variants)
