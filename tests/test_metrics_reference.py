"""Metrics and BvSB against independent numpy references on random data.

The hand-computed cases in test_uncertainty_metrics pin the definitions; these
check the same definitions over many random batches (empty masks, empty
predictions, probabilities exactly at the threshold included).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polypal.learner.metrics import evaluate, paper_miou, per_image_scores, pooled_confusion
from polypal.sampler import aggregate, bvsb_binary, bvsb_multiclass, image_scores


def ref_paper_miou(pred, target):
    """The original code's "mIoU": one 2x2 confusion matrix over every pixel, mean of both classes' IoU."""
    p, t = np.asarray(pred, bool).ravel(), np.asarray(target, bool).ravel()
    ious = []
    for cls in (False, True):
        inter = np.sum((p == cls) & (t == cls))
        union = np.sum((p == cls) | (t == cls))
        ious.append(inter / union if union else 0.0)
    return float(np.mean(ious))


def ref_per_image(pred, target):
    iou, dice = [], []
    for p, t in zip(np.asarray(pred, bool), np.asarray(target, bool)):
        inter, union, total = np.sum(p & t), np.sum(p | t), p.sum() + t.sum()
        iou.append(inter / union if union else 1.0)
        dice.append(2 * inter / total if total else 1.0)
    return np.array(iou), np.array(dice)


def random_batch(seed):
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(1, 6)), int(rng.integers(3, 12)), int(rng.integers(3, 12))
    probs = rng.choice([0.0, 0.2, 0.5, 0.5000001, 0.8, 1.0], size=(n, h, w)).astype(np.float32)
    target = rng.random((n, h, w)) < rng.uniform(0, 0.5)
    if seed % 4 == 0:
        target[0] = False  # an empty mask
    if seed % 3 == 0:
        probs[-1] = 0.0  # an empty prediction
    return probs, target


@pytest.mark.parametrize("seed", range(30))
def test_metrics_match_numpy_reference(seed):
    probs, target = random_batch(seed)
    pred = probs > 0.5  # the threshold: exactly 0.5 is background
    ev = evaluate(probs, target)
    assert ev["paper_miou"] == pytest.approx(ref_paper_miou(pred, target), abs=1e-12)
    iou, dice = ref_per_image(pred, target)
    s = per_image_scores(pred, target)
    np.testing.assert_allclose(s["iou"], iou, atol=1e-6)
    np.testing.assert_allclose(s["dice"], dice, atol=1e-6)
    assert ev["polyp_iou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert ev["polyp_dice"] == pytest.approx(dice.mean(), abs=1e-6)
    c = pooled_confusion(pred, target)
    assert c == {"tp": int(np.sum(pred & target)), "fp": int(np.sum(pred & ~target)),
                 "tn": int(np.sum(~pred & ~target)), "fn": int(np.sum(~pred & target))}
    assert ev["pooled"] == c


def test_threshold_is_strict_and_configurable():
    probs = np.array([[[0.5, 0.5000001], [0.49, 0.9]]], dtype=np.float32)
    target = np.array([[[True, True], [False, False]]])
    ev = evaluate(probs, target)
    assert ev["pooled"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert evaluate(probs, target, threshold=0.3)["pooled"] == {"tp": 2, "fp": 2, "tn": 0, "fn": 0}


def test_paper_miou_all_background_and_all_polyp():
    z = np.zeros((2, 4, 4), bool)
    assert paper_miou(z, z) == pytest.approx(0.5)  # background IoU 1, polyp IoU 0/0 counted as 0
    o = np.ones((2, 4, 4), bool)
    assert paper_miou(o, o) == pytest.approx(0.5)
    assert paper_miou(o, z) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_bvsb_and_aggregations_match_numpy(seed):
    rng = np.random.default_rng(seed)
    p = rng.random((3, 9, 7)).astype(np.float32)
    p[0] = 0.1  # nothing predicted: region falls back to topk
    px = 1.0 - np.abs(2 * p - 1)
    np.testing.assert_allclose(bvsb_binary(torch.from_numpy(p)).numpy(), px, atol=1e-6)
    np.testing.assert_allclose(image_scores(p, "mean"), px.reshape(3, -1).mean(1), atol=1e-6)
    k = max(1, round(0.1 * 63))
    topk = np.sort(px.reshape(3, -1), axis=1)[:, ::-1][:, :k].mean(1)
    np.testing.assert_allclose(image_scores(p, "topk", topk_frac=0.1), topk, atol=1e-6)
    # region: predicted polyp (p > 0.5) dilated by a square band of 1 px
    from scipy.ndimage import binary_dilation

    want = []
    for i in range(3):
        reg = binary_dilation(p[i] > 0.5, structure=np.ones((3, 3), bool))
        want.append(px[i][reg].mean() if reg.any() else topk[i])
    got = aggregate(torch.from_numpy(px), torch.from_numpy(p), "region", topk_frac=0.1, band=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_bvsb_multiclass_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 5, 6))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    s = np.sort(probs, axis=1)
    want = 1 - (s[:, -1] - s[:, -2])
    got = bvsb_multiclass(torch.from_numpy(probs), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_aggregation_defaults_are_the_documented_ones():
    """topk: the 5% most uncertain pixels; region: the predicted polyp dilated by 3 px (README)."""
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(3)
    p = rng.random((2, 20, 20)).astype(np.float32) * 0.4  # nothing above 0.5 ...
    p[1, 8:11, 8:11] = 0.9  # ... except a 3x3 polyp in the second frame
    px = 1.0 - np.abs(2 * p - 1)
    k = 20  # 5% of 400 pixels
    topk = np.sort(px.reshape(2, -1), axis=1)[:, ::-1][:, :k].mean(1)
    np.testing.assert_allclose(image_scores(p, "topk"), topk, atol=1e-6)
    region = binary_dilation(p[1] > 0.5, structure=np.ones((7, 7), bool))
    np.testing.assert_allclose(image_scores(p, "region"), [topk[0], px[1][region].mean()], atol=1e-6)
    # at least one pixel, however small the frame
    q = np.full((1, 2, 2), 0.3, np.float32)
    q[0, 0, 0] = 0.5
    assert image_scores(q, "topk")[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs the probability map"):
        aggregate(torch.from_numpy(px), None, "region")


def test_paper_miou_single_pixel_classes():
    """One polyp pixel (or one background pixel) predicted right: that class's IoU is 1, not a fraction."""
    one = np.zeros((1, 3, 3), bool)
    one[0, 1, 1] = True
    assert paper_miou(one, one) == 1.0
    assert paper_miou(~one, ~one) == 1.0
    assert per_image_scores(one, one)["mean_iou"] == 1.0


def test_region_of_one_pixel_is_that_pixel():
    p = np.full((1, 5, 5), 0.1, np.float32)
    p[0, 2, 2] = 0.8  # one predicted polyp pixel, no band: the region is that pixel alone
    p[0, 0, 0] = 0.45  # more uncertain, but outside the region (the topk fallback would take it)
    assert image_scores(p, "region", band=0)[0] == pytest.approx(1 - abs(2 * 0.8 - 1), abs=1e-6)


def test_bvsb_multiclass_default_class_dim_is_1():
    probs = torch.softmax(torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    np.testing.assert_allclose(bvsb_multiclass(probs).numpy(), bvsb_multiclass(probs, dim=1).numpy())
    assert bvsb_multiclass(probs).shape == (2, 4, 5)


@pytest.mark.parametrize("bad", ["bogus", "nope", "zzz", "Mean"])
def test_unknown_aggregation_is_refused_even_with_probabilities(bad):
    p = torch.full((1, 4, 4), 0.7)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(bvsb_binary(p), p, bad)


def test_bvsb_scorer_defaults_are_the_documented_ones():
    """The scorer the learner, polypal-sim and the server build (``BvSB(aggregation)``): the same defaults,
    topk = the 5% most uncertain pixels, region = the predicted polyp dilated by 3 px; named by its aggregation."""
    from scipy.ndimage import binary_dilation

    from polypal.sampler import BvSB

    rng = np.random.default_rng(4)
    p = rng.random((2, 20, 20)).astype(np.float32) * 0.4
    p[1, 5:8, 12:14] = 0.85  # a 3x2 polyp in the second frame
    px = 1.0 - np.abs(2 * p - 1)
    topk = np.sort(px.reshape(2, -1), axis=1)[:, ::-1][:, :20].mean(1)  # 5% of 400 pixels
    region = binary_dilation(p[1] > 0.5, structure=np.ones((7, 7), bool))
    t = torch.from_numpy(p)
    np.testing.assert_allclose(BvSB("mean")(t).numpy(), px.reshape(2, -1).mean(1), atol=1e-6)
    np.testing.assert_allclose(BvSB("topk")(t).numpy(), topk, atol=1e-6)
    np.testing.assert_allclose(BvSB("region")(t).numpy(), [topk[0], px[1][region].mean()], atol=1e-6)
    assert BvSB().name == "mean" and BvSB("topk").name == "topk" and BvSB("region").name == "region"
    with pytest.raises(ValueError, match="unknown aggregation"):
        BvSB("median")


def test_bvsb_scorers_are_frozen_values():
    import dataclasses

    from polypal.sampler import BvSB

    s = BvSB("topk")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.aggregation = "mean"
    assert len({BvSB("topk"), BvSB("topk", 0.05, 3), BvSB("region")}) == 2  # hashable, equal by value
