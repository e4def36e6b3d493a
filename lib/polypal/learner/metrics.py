"""Segmentation metrics, each named for what it is.

- ``paper_miou``: the number the original code reports as "mIoU". One confusion
  matrix is pooled over every pixel of the test set (threshold 0.5); the value
  is the mean of the background IoU and the polyp IoU. Because polyps cover
  ~8% of pixels, it runs far above polyp-only IoU.
- ``per_image_scores``: polyp IoU and Dice per image, averaged over images.

Both are built on MONAI's metric functions.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_iou, compute_dice, get_confusion_matrix


def _onehot_fg(x) -> torch.Tensor:
    """bool/0-1 array (N,H,W) -> float tensor (N,1,H,W)."""
    t = torch.as_tensor(np.asarray(x)).float()
    return t.unsqueeze(1)


def pooled_confusion(pred, target) -> dict:
    """tp/fp/tn/fn of the polyp class summed over every pixel of every image."""
    cm = get_confusion_matrix(_onehot_fg(pred), _onehot_fg(target), include_background=True)
    tp, fp, tn, fn = cm.sum(dim=(0, 1)).tolist()  # (N, C=1, 4)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def paper_miou(pred, target) -> float:
    """Mean of background IoU and polyp IoU from one pooled confusion matrix (in [0, 1])."""
    c = pooled_confusion(pred, target)
    iou_fg = c["tp"] / max(c["tp"] + c["fp"] + c["fn"], 1)
    iou_bg = c["tn"] / max(c["tn"] + c["fn"] + c["fp"], 1)
    return 0.5 * (iou_fg + iou_bg)


def per_image_scores(pred, target) -> dict:
    """Polyp IoU and Dice per image, and their means over images.

    An image where both prediction and mask are empty counts as a perfect 1.0.
    """
    p, t = _onehot_fg(pred), _onehot_fg(target)
    iou = compute_iou(p, t, include_background=True, ignore_empty=False).squeeze(1).numpy()
    dice = compute_dice(p, t, include_background=True, ignore_empty=False).squeeze(1).numpy()
    return {"iou": iou, "dice": dice, "mean_iou": float(np.mean(iou)), "mean_dice": float(np.mean(dice))}


def evaluate(probs, target, threshold: float = 0.5) -> dict:
    """All metrics for sigmoid probabilities (N,H,W) against bool masks, as fractions."""
    pred = np.asarray(probs) > threshold
    s = per_image_scores(pred, target)
    return {
        "paper_miou": paper_miou(pred, target),
        "polyp_iou": s["mean_iou"],
        "polyp_dice": s["mean_dice"],
        "pooled": pooled_confusion(pred, target),
    }
