
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import REPO, require_shared, write_dataset
from polypal.data import load_folder
from polypal.learner import PolypUNet, get_profile, load_checkpoint, predict, save_checkpoint, train
from polypal.sampler import BvSB
from polypal.experiments.simulate import RunSpec, read_records, run


def test_model_returns_logits_and_pooled_latent():
    m = PolypUNet((8, 16, 32, 64), (2, 2, 2), num_res_units=1)
    logits, z = m(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 1, 32, 32) and z.shape == (2, 64)
    assert get_profile("paper").latent_dim == 512
    assert PolypUNet.from_profile(get_profile("paper"))(torch.zeros(1, 3, 64, 64))[1].shape == (1, 512)


def test_profiles_budget():
    lite = get_profile("cpu-lite")
    # the v3 recipe: a budget that grows with the labeled set (40 epochs' worth, at least 1200 and at most
    # 3000 steps), the endoscopy augmentation, the EMA of the weights, 3 retries of a collapsed training
    assert lite.steps_for(80) == 1200 and lite.steps_for(240) == 1200 and lite.steps_for(300) == 1520
    assert lite.steps_for(600) == 3000 and lite.steps_for(2000) == 3000
    assert lite.ema == 0.99 and lite.select == "ema" and lite.augment == "endo" and lite.collapse_retries == 3
    assert get_profile("paper").steps_for(100) == 100 * 13
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")


def test_training_is_deterministic_and_checkpoint_roundtrips(tmp_path, kvasir_like):
    fs = load_folder(kvasir_like, 32)
    prof = get_profile("smoke")
    a = train(prof, fs.images[:12], fs.masks[:12], fs.images[12:], fs.masks[12:], seed=3, device="cpu")
    b = train(prof, fs.images[:12], fs.masks[:12], fs.images[12:], fs.masks[12:], seed=3, device="cpu")
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k])
    # the reported validation metrics are those of the returned weights on the validation set
    from polypal.learner import validate

    again = validate(a.model, fs.images[12:], fs.masks[12:])
    assert a.best_val and set(a.best_val) <= set(again)
    for k, v in a.best_val.items():
        assert v == pytest.approx(again[k], abs=1e-6), k
    if prof.select == "best_val" and a.history:  # and they are the best seen during training
        assert a.best_val["polyp_dice"] == max(h["polyp_dice"] for h in a.history)
    pred = predict(a.model, fs.images, scorers=(BvSB("mean"), BvSB("topk"), BvSB("region")))
    assert pred.probs.shape == (24, 32, 32) and pred.latents.shape == (24, 16)
    assert set(pred.scores) == {"mean", "topk", "region"}
    assert np.all((pred.scores["mean"] >= 0) & (pred.scores["mean"] <= 1))
    save_checkpoint(tmp_path / "m.pt", a.model, prof)
    m2, p2, _ = load_checkpoint(tmp_path / "m.pt", device="cpu")
    assert p2 == prof
    np.testing.assert_allclose(predict(m2, fs.images[:4]).probs, pred.probs[:4], atol=1e-6)


def _smoke_loop(root, tmp_path, strategy):
    fs = load_folder(root, 32)
    pool, val, test = fs.subset(range(0, 28)), fs.subset(range(28, 34)), fs.subset(range(34, 40))
    out = tmp_path / f"{strategy}.jsonl"
    spec = RunSpec.parse(strategy)
    recs = run(pool, val, test, spec, get_profile("smoke"), seed=0, n_initial=6, budget=5, cycles=2,
               out_file=out, device="cpu")
    return pool, recs, out


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "ta_coreset", "pca_coreset", "unc_ta_coreset"])
def test_smoke_al_loop_generated(tmp_path, strategy):
    root = write_dataset(tmp_path / "d", 40, seed=2)
    pool, recs, out = _smoke_loop(root, tmp_path, strategy)
    assert [r["n_labeled"] for r in recs] == [6, 11, 16]
    seen = set(recs[0]["labeled"])
    for r in recs[:-1]:
        assert len(r["selected"]) == 5 and not set(r["selected"]) & set(r["labeled"])
        seen |= set(r["selected"])
    assert set(recs[-1]["labeled"]) == seen
    assert all(0 <= r["test"]["paper_miou"] <= 1 for r in recs)
    assert len(read_records(out)) == 3
    import torch  # every record says which software trained it (the recipe hash does not cover it)

    assert all(r["env"]["torch"] == torch.__version__ for r in read_records(out))
    assert {"python", "monai", "numpy", "pillow"} <= set(recs[0]["env"])


def test_smoke_al_loop_real_frames(tmp_path):
    root = require_shared("kvasir-seg")
    # ~40 real frames copied as symlinks into a small dataset folder
    sub = tmp_path / "real"
    (sub / "images").mkdir(parents=True)
    (sub / "masks").mkdir()
    for p in sorted((root / "images").iterdir())[:40]:
        (sub / "images" / p.name).symlink_to(p)
        (sub / "masks" / p.name).symlink_to(root / "masks" / p.name)
    _, recs, _ = _smoke_loop(sub, tmp_path, "unc_ta_coreset")
    assert len(recs) == 3 and recs[-1]["n_labeled"] == 16


def test_lr_schedule_warmup_then_cosine():
    from polypal.learner.training import lr_factor

    p = get_profile("smoke", schedule="cosine", warmup=0.1, min_lr=0.05)
    f = [lr_factor(p, s, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # decays monotonically after the warm-up
    assert lr_factor(p, 100, 100) == pytest.approx(0.05)
    assert lr_factor(get_profile("smoke", schedule="constant"), 50, 100) == 1.0


@pytest.mark.parametrize("kind", ["flips", "rot", "endo"])
def test_augmentation_is_seeded_and_keeps_masks_binary(kind):
    from polypal.learner.augment import Augmenter

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    y = (torch.rand(4, 1, 32, 32, generator=g) > 0.7).float()
    a1, a2 = Augmenter(kind, 32, 5), Augmenter(kind, 32, 5)
    (x1, y1), (x2, y2) = a1(x, y), a2(x, y)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == x.shape and y1.shape == y.shape and set(y1.unique().tolist()) <= {0.0, 1.0}
    assert x1.min() >= -1 and x1.max() <= 1
    if kind != "endo":  # flips and rotations only permute pixels: the mask's area is unchanged
        assert torch.equal(y1.sum(dim=(1, 2, 3)), y.sum(dim=(1, 2, 3)))


def test_selection_rules_and_variants(kvasir_like):
    fs = load_folder(kvasir_like, 32)
    prof = get_profile("smoke", schedule="cosine", warmup=0.2, ema=0.9, select="ema", augment="rot")
    r = train(prof, fs.images[:12], fs.masks[:12], fs.images[12:], fs.masks[12:], seed=1, device="cpu",
              keep_variants=True)
    assert set(r.variants) == {"best_val", "last", "ema", "ema_best_val"}
    for k, v in r.model.state_dict().items():
        torch.testing.assert_close(v, r.variants["ema"].state_dict()[k])
    with pytest.raises(ValueError, match="needs an EMA"):
        train(get_profile("smoke", select="ema"), fs.images[:4], fs.masks[:4], device="cpu")


def test_hash_validation_yields_validation_frames_on_small_sets():
    """The live server's split: a fifth of the labels validate even on a small set, stably, order-free."""
    import hashlib

    from polypal.learner import hash_validation

    def by_hash(i):  # the split's first rule: sha1(id) mod 5 == 0
        return int(hashlib.sha1(i.encode()).hexdigest(), 16) % 5 == 0

    from polypal.data import find_pairs, frame_id

    sample = [frame_id(i) for i, _ in find_pairs(REPO / "sample-datasets" / "kvasir-seg-mini")]
    assert len(sample) == 30 and sum(map(by_hash, sample)) == 2  # the modulo alone: 2 of the 30 bundled frames
    for n in (5, 12, 20, 30):
        ids = sample[:n]
        val = hash_validation(ids)
        assert val.sum() >= n // 5 and not val.all(), n
        assert list(hash_validation(ids[::-1])[::-1]) == list(val)  # independent of the order
        # a frame that validates by its hash keeps validating as labels are added
        assert all(val[k] for k, i in enumerate(ids) if by_hash(i))
    assert not hash_validation(sample[:4]).any()  # too few labels: all train


def test_the_live_training_holds_labels_out_only_for_a_profile_that_reads_validation():
    """cpu-lite and paper keep the EMA weights and never read validation: every annotator's label trains.
    smoke picks its best-validation weights: a fifth validates, as hash_validation says."""
    from polypal.learner import get_profile, hash_validation, labels_to_validate

    ids = [f"frame{i:03d}" for i in range(40)]
    for name in ("cpu-lite", "paper"):
        assert get_profile(name).select == "ema" and not labels_to_validate(get_profile(name), ids).any()
    assert list(labels_to_validate(get_profile("smoke"), ids)) == list(hash_validation(ids))
    assert labels_to_validate(get_profile("smoke"), ids).sum() == 8
    assert labels_to_validate(get_profile("cpu-lite", select="ema_best_val"), ids).sum() == 8


def test_a_collapsed_training_is_redone_from_a_fresh_network(tmp_path):
    """profile.collapse_retries: weights that predict no polyp on their own frames are trained again."""
    from polypal.learner import predicts_no_polyp
    from polypal.experiments.simulate import recipe_hash

    fs = load_folder(write_dataset(tmp_path / "d", 8, seed=5), size=32)
    assert fs.masks.any()
    # lr 0: the weights stay where they start; a start whose output bias is -1000 predicts nothing anywhere
    frozen = get_profile("smoke", lr=0.0)
    dead = PolypUNet.from_profile(frozen).state_dict()
    out_bias = [k for k in dead if k.endswith("bias")][-1]
    dead[out_bias] = torch.full_like(dead[out_bias], -1000.0)
    res = train(frozen, fs.images, fs.masks, init_state=dead, seed=0, device="cpu")
    assert predicts_no_polyp(res.model, fs.images, fs.masks) and res.retries == 0  # off by default
    guarded = get_profile("smoke", lr=0.0, collapse_retries=2)
    res = train(guarded, fs.images, fs.masks, init_state=dead, seed=0, device="cpu")
    # the retry starts from a fresh network (seed + 1000003), which at lr 0 predicts polyp somewhere
    assert res.retries == 1 and not predicts_no_polyp(res.model, fs.images, fs.masks)
    assert not predicts_no_polyp(res.model, fs.images, np.zeros_like(fs.masks))  # empty masks: never "collapsed"
    # the guard off keeps a recipe's fingerprint; on, it is another recipe
    v2 = get_profile("cpu-lite", min_steps=600, max_steps=1500, augment="", collapse_retries=0)
    assert recipe_hash(v2) == "96c5035cda"  # the fingerprint of results/cvc-v2
    assert recipe_hash(replace(v2, collapse_retries=1)) != "96c5035cda"
    assert recipe_hash(replace(v2, fit_floor=0.55)) != "96c5035cda"


def test_a_training_that_fits_its_own_frames_poorly_is_redone_with_a_fit_floor(tmp_path, caplog):
    """profile.fit_floor: with collapse retries on, a model whose polyp Dice on its own training frames is under
    the floor is trained again (a model that predicts polyp somewhere, so not a collapse); the record keeps the
    Dice of the model returned. Off (0), the fit is not even measured."""
    import logging

    from polypal.experiments.simulate import recipe_hash
    from polypal.learner import evaluate, labeled_fit, predicts_no_polyp

    fs = load_folder(write_dataset(tmp_path / "d", 8, seed=5), size=32)
    frozen = get_profile("smoke", lr=0.0, collapse_retries=2)  # lr 0: an untrained network, which fits nothing well
    res = train(frozen, fs.images, fs.masks, seed=0, device="cpu")
    assert res.retries == 0 and res.fit_dice is None  # the floor off: no retry, nothing measured
    fit = labeled_fit(res.model, fs.images, fs.masks)
    assert fit is not None and 0 < fit < 0.9 and not predicts_no_polyp(res.model, fs.images, fs.masks)
    # taken in chunks, the same mean polyp Dice as one evaluation of every frame
    whole = evaluate(predict(res.model, fs.images, scorers=()).probs, fs.masks)["polyp_dice"]
    assert labeled_fit(res.model, fs.images, fs.masks, chunk=3) == pytest.approx(whole) == pytest.approx(fit)
    with caplog.at_level(logging.WARNING):
        res = train(replace(frozen, fit_floor=0.9), fs.images, fs.masks, seed=0, device="cpu")
    assert res.retries == 2  # every fresh untrained network fits under 0.9: both retries used
    assert res.fit_dice == pytest.approx(labeled_fit(res.model, fs.images, fs.masks)) and res.fit_dice < 0.9
    # every try failed: the one that fits its frames best is returned (the tries: seeds 0, +1000003, +2000006)
    fits = [labeled_fit(train(frozen, fs.images, fs.masks, seed=t, device="cpu").model, fs.images, fs.masks)
            for t in (0, 1000003, 2000006)]
    assert res.fit_dice == pytest.approx(max(fits)) and fits[-1] != max(fits), fits
    assert sum("under-fits its own frames" in r.getMessage() for r in caplog.records) == 2
    # a floor under what the first training reaches: no retry, and the fit is recorded
    res = train(replace(frozen, fit_floor=fit / 2), fs.images, fs.masks, seed=0, device="cpu")
    assert res.retries == 0 and res.fit_dice == pytest.approx(fit)
    # measured without retries too (collapse_retries 0): recorded, nothing redone
    res = train(replace(frozen, collapse_retries=0, fit_floor=0.9), fs.images, fs.masks, seed=0, device="cpu")
    assert res.retries == 0 and res.fit_dice == pytest.approx(fit)
    assert labeled_fit(res.model, fs.images, np.zeros_like(fs.masks)) is None  # no polyp to fit
    assert recipe_hash(replace(frozen, fit_floor=0.9)) != recipe_hash(frozen)
