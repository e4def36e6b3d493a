import numpy as np
import torch
import pytest

from polypal.learner.metrics import evaluate, paper_miou, per_image_scores, pooled_confusion
from polypal.sampler import aggregate, bvsb_binary, bvsb_multiclass, image_scores


def test_bvsb_binary_hand_values():
    p = torch.tensor([0.5, 0.9, 0.1, 1.0, 0.75])
    np.testing.assert_allclose(bvsb_binary(p).numpy(), [1.0, 0.2, 0.2, 0.0, 0.5], atol=1e-6)


def test_bvsb_multiclass_hand_values_and_binary_equivalence():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]).T.unsqueeze(0)  # (1, C=3, 2)
    np.testing.assert_allclose(bvsb_multiclass(probs, dim=1).numpy(), [[0.5, 0.95]], atol=1e-6)
    p = torch.rand(4, 5, 5)
    two = torch.stack([p, 1 - p], dim=1)
    np.testing.assert_allclose(bvsb_multiclass(two, 1).numpy(), bvsb_binary(p).numpy(), atol=1e-6)


def test_image_score_mean_and_focus():
    p = np.full((1, 10, 10), 0.0, dtype=np.float32)
    p[0, :2, :2] = 0.5  # 4 maximally uncertain pixels out of 100
    assert image_scores(p, "mean")[0] == pytest.approx(0.04)
    assert image_scores(p, "topk", topk_frac=0.04)[0] == pytest.approx(1.0)
    # region: nothing predicted as polyp -> falls back to topk
    assert image_scores(p, "region", topk_frac=0.04)[0] == pytest.approx(1.0)
    q = np.zeros((1, 10, 10), dtype=np.float32)
    q[0, 4:6, 4:6] = 0.9  # predicted polyp, confident-ish
    r = image_scores(q, "region", band=1)[0]
    # region = 4x4 block: 4 pixels at bvsb 0.2, 12 at 0
    assert r == pytest.approx(4 * 0.2 / 16, abs=1e-6)
    with pytest.raises(ValueError):
        aggregate(torch.zeros(1, 2, 2), None, "nope")


def test_metrics_hand_computed_confusion():
    target = np.zeros((2, 4, 4), dtype=bool)
    target[0, :2, :2] = True  # 4 polyp px
    target[1, 0, :] = True  # 4 polyp px
    pred = np.zeros_like(target)
    pred[0, :2, :3] = True  # tp 4, fp 2
    pred[1, 0, :2] = True  # tp 2, fn 2
    c = pooled_confusion(pred, target)
    assert c == {"tp": 6, "fp": 2, "tn": 22, "fn": 2}
    assert paper_miou(pred, target) == pytest.approx(0.5 * (6 / 10 + 22 / 26))
    s = per_image_scores(pred, target)
    np.testing.assert_allclose(s["iou"], [4 / 6, 2 / 4])
    np.testing.assert_allclose(s["dice"], [8 / 10, 4 / 6])
    ev = evaluate(pred.astype(np.float32) * 0.9, target)
    assert ev["polyp_iou"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert ev["paper_miou"] > ev["polyp_iou"]


def test_empty_mask_and_empty_prediction_is_perfect():
    z = np.zeros((1, 3, 3), dtype=bool)
    s = per_image_scores(z, z)
    assert s["mean_iou"] == 1.0 and s["mean_dice"] == 1.0
