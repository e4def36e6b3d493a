"""The live AL state (polypal.serving.state) without a server."""

import os

import numpy as np

from polypal.serving import ActiveLearningState, NO_MODEL


def setup_state(tmp_path, n=30, batch=5, with_scores=True, version="v1"):
    st = ActiveLearningState(tmp_path / "st", batch_size=batch, gamma=0.5, lease_seconds=100)
    ids = [f"f{i:02d}" for i in range(n)]
    rng = np.random.default_rng(0)
    st.add_thumbs(ids, rng.integers(0, 255, (n, 32 * 32 * 3), dtype=np.uint8))
    if with_scores:
        st.add_scores(version, ids, rng.random(n), rng.standard_normal((n, 8)).astype(np.float32))
    return st, ids


def test_cold_start_falls_back_to_pca(tmp_path):
    st, ids = setup_state(tmp_path, with_scores=False)
    s = st.next_frame("bvsb_ta_coreset", "a", ids, set(), NO_MODEL)
    assert "fell back to pca_coreset" in s.note and s.cycle == 1 and s.batch_size == 5


def test_batch_served_in_order_and_leased(tmp_path):
    st, ids = setup_state(tmp_path)
    plan = st.plan("bvsb", ids, set(), "v1")
    order = [r[1] for r in plan["rows"]]
    a = st.next_frame("bvsb", "a", ids, set(), "v1")
    b = st.next_frame("bvsb", "b", ids, set(), "v1")
    assert [a.id, b.id] == order[:2] and a.picked_by == "uncertainty"
    assert a.score >= b.score  # most uncertain first


def test_a_batch_cut_short_still_holds_gammas_mix(tmp_path):
    """The server serves a batch from its start and plans anew when a newer model is scored, so a batch
    may be cut short. Its first frames now hold both samplers' shares (before: every uncertainty pick came
    first, and frequent retraining turned gamma 0.5 into uncertainty alone). The batch is Algorithm 1's."""
    from polypal.sampler import PoolInfo, select
    from polypal.sampler.selection import serving_order

    for gamma, batch in ((0.5, 6), (0.25, 8), (0.75, 8)):
        st, ids = setup_state(tmp_path / f"g{gamma}", batch=batch)
        st.gamma = gamma
        rows = st.plan("bvsb_ta_coreset", ids, set(), "v1")["rows"]
        by = [r[3] for r in rows]
        for m in range(1, batch + 1):  # every first m: uncertainty's share of them within one frame
            share = sum(p in ("uncertainty", "both") for p in by) / batch
            assert abs(sum(p in ("uncertainty", "both") for p in by[:m]) - share * m) < 1, (gamma, by)
    sc, lat = np.random.default_rng(1).random(40), np.random.default_rng(2).standard_normal((40, 4))
    sel = select("unc_ta_coreset", PoolInfo(n=40, scores=sc, latents=lat), [0, 1], 10, gamma=0.3)
    out = serving_order(sel)
    assert sorted(zip(out.indices.tolist(), out.picked_by)) == sorted(zip(sel.indices.tolist(), sel.picked_by))
    for kind in ("uncertainty", "diversity"):  # each sampler's own order is kept
        assert [j for j, p in zip(out.indices, out.picked_by) if p == kind] == \
            [j for j, p in zip(sel.indices, sel.picked_by) if p == kind]
    # training after every label serves only each plan's first frame: which sampler leads is drawn with
    # its share (a probe of the live cycle: with a fixed tie-break, uncertainty led every plan)
    sel = select("unc_ta_coreset", PoolInfo(n=40, scores=sc, latents=lat), [0, 1], 10, gamma=0.5)
    first = [serving_order(sel, seed=k).picked_by[0] for k in range(400)]
    assert 0.4 < sum(p in ("uncertainty", "both") for p in first) / 400 < 0.6
    assert serving_order(sel, seed=7).indices.tolist() == serving_order(sel, seed=7).indices.tolist()


def test_client_asking_again_releases_its_previous_frame(tmp_path):
    st, ids = setup_state(tmp_path)
    a1 = st.next_frame("bvsb", "a", ids, set(), "v1")
    a2 = st.next_frame("bvsb", "a", ids, set(), "v1")
    assert a2.id == a1.id  # released and first in order again


def test_labeled_never_served_and_next_cycle_planned(tmp_path):
    st, ids = setup_state(tmp_path, n=12, batch=5)
    labeled, seen = set(), []
    while True:
        s = st.next_frame("ta_coreset", "a", ids, labeled, "v1")
        if s is None:
            break
        assert s.id not in labeled
        seen.append(s)
        labeled.add(s.id)
    assert len(seen) == 12 and len({s.id for s in seen}) == 12
    assert [s.cycle for s in seen] == [1] * 5 + [2] * 5 + [3] * 2


def test_lease_timeout_frees_frame(tmp_path):
    st, ids = setup_state(tmp_path)
    a = st.next_frame("bvsb", "a", ids, set(), "v1", now=0)
    b = st.next_frame("bvsb", "b", ids, set(), "v1", now=1)
    assert b.id != a.id
    c = st.next_frame("bvsb", "c", ids, set(), "v1", now=1000)  # a's and b's leases expired
    assert c.id == a.id


def test_leases_kept_over_a_restart_take_the_new_timeout(tmp_path):
    """Leases survive a restart (an annotator's open frame stays theirs), but under the new run's
    lease_timeout: restarted with 3 s instead of an hour, the old run's frames stayed held for the hour."""
    st, ids = setup_state(tmp_path)
    a = st.next_frame("bvsb", "a", ids, set(), "v1", now=0)  # held until 100
    again = ActiveLearningState(tmp_path / "st", batch_size=5, gamma=0.5, lease_seconds=3)
    assert again.leases.count(now=50) == 1
    assert again.leases.shorten_to_timeout(now=10) == 1  # (what the server does at start)
    assert again.leases.count(now=12) == 1 and again.leases.count(now=14) == 0
    assert again.next_frame("bvsb", "c", ids, set(), "v1", now=14).id == a.id
    longer = ActiveLearningState(tmp_path / "st", batch_size=5, gamma=0.5, lease_seconds=1000)
    assert longer.leases.shorten_to_timeout(now=14) == 0  # a longer timeout extends nothing


def test_new_model_replans_only_when_scored(tmp_path):
    st, ids = setup_state(tmp_path)
    first = st.next_frame("bvsb_ta_coreset", "a", ids, set(), "v1")
    # model v2 published but not scored: keep serving the v1 plan
    s = st.next_frame("bvsb_ta_coreset", "b", ids, set(), "v2")
    assert s.cycle == first.cycle and s.model_version == "v1"
    rng = np.random.default_rng(1)
    st.add_scores("v2", ids, rng.random(len(ids)), rng.standard_normal((len(ids), 8)).astype(np.float32))
    s = st.next_frame("bvsb_ta_coreset", "c", ids, set(), "v2")
    assert s.cycle == first.cycle + 1 and s.model_version == "v2"


def test_scores_of_older_model_never_used(tmp_path):
    st, ids = setup_state(tmp_path, version="old")
    p = st.plan("bvsb", ids, set(), "new")
    assert "not scored yet" in p["note"]
    assert all(r[2] is None for r in p["rows"])  # no (old) scores attached


def test_bad_frames_never_planned(tmp_path):
    st, ids = setup_state(tmp_path)
    st.mark_bad("f03", "corrupt")
    p = st.plan("random", ids, set(), "v1")
    assert "f03" not in [r[1] for r in p["rows"]]
    st.batch_size = 100
    p = st.plan("random", ids, set(), "v1")
    assert len(p["rows"]) == 29 and "only 29" in p["note"]


def test_empty_pool_answers_none(tmp_path):
    st, ids = setup_state(tmp_path, n=3)
    assert st.next_frame("random", "a", ids, set(ids), "v1") is None


def test_background_replan_serves_the_old_batch_then_swaps(tmp_path):
    """Server mode: the request due for a re-plan is answered from the current batch at once; the new
    batch (the same one a synchronous re-plan picks) is swapped in when its thread finishes."""
    import time

    st, ids = setup_state(tmp_path)
    st.background = True
    first = st.next_frame("bvsb_ta_coreset", "a", ids, set(), "v1")  # no plan yet: planned before answering
    assert first.cycle == 1
    rng = np.random.default_rng(1)
    scores, lat = rng.random(len(ids)), rng.standard_normal((len(ids), 8)).astype(np.float32)
    st.add_scores("v2", ids, scores, lat)
    s = st.next_frame("bvsb_ta_coreset", "b", ids, set(), "v2")
    assert s.cycle == 1 and s.model_version == "v1"  # served from the old batch
    t0 = time.time()
    while st.planning() and time.time() - t0 < 30:
        time.sleep(0.01)
    assert not st.planning()
    s = st.next_frame("bvsb_ta_coreset", "c", ids, set(), "v2")
    assert s.cycle == 2 and s.model_version == "v2"
    new = [r[1] for r in st.current_plan("bvsb_ta_coreset")["rows"]]
    # the same batch as a synchronous re-plan of the same state
    ref, _ = setup_state(tmp_path / "ref")
    ref.next_frame("bvsb_ta_coreset", "a", ids, set(), "v1")
    ref.add_scores("v2", ids, scores, lat)
    ref.next_frame("bvsb_ta_coreset", "b", ids, set(), "v2")
    assert [r[1] for r in ref.current_plan("bvsb_ta_coreset")["rows"]] == new


def test_a_background_replan_waits_for_a_next_batch_selection(tmp_path):
    """A re-plan for a new model that falls due while a request is selecting the next batch waits for it,
    then judges the batch that request made (here: made for the new model, so no second selection). It
    selected beside it, and one of the two batches was thrown away."""
    import time

    st, ids = setup_state(tmp_path)
    st.background = True
    st.next_frame("bvsb_ta_coreset", "a", ids, set(), "v1")
    rng = np.random.default_rng(1)
    st.add_scores("v2", ids, rng.random(len(ids)), rng.standard_normal((len(ids), 8)).astype(np.float32))
    lock = st._next_batch_lock("bvsb_ta_coreset")
    labeled: set[str] = set()
    with lock:  # a request selecting the next batch, as next_frame does when its batch is used up
        s = st.next_frame("bvsb_ta_coreset", "b", ids, set(), "v2", relabel=lambda: set(labeled))  # re-plan due
        assert s.cycle == 1
        time.sleep(0.5)
        assert st.plans.last_cycle("bvsb_ta_coreset") == 1, "the re-plan selected beside the request"
        st.plan("bvsb_ta_coreset", ids, set(), "v2")  # the request's batch, for the new model
    t0 = time.time()
    while st.planning() and time.time() - t0 < 30:
        time.sleep(0.01)
    assert not st.planning()
    assert st.plans.last_cycle("bvsb_ta_coreset") == 2  # judged the request's batch: nothing thrown away
    # a re-plan that waited reads the labeled set again: frames labeled meanwhile are not in its batch
    st.add_scores("v3", ids, rng.random(len(ids)), rng.standard_normal((len(ids), 8)).astype(np.float32))
    with lock:
        st.next_frame("bvsb_ta_coreset", "c", ids, set(), "v3", relabel=lambda: set(labeled))
        time.sleep(0.3)
        labeled.update(ids[:20])  # labeled while the re-plan waited
    t0 = time.time()
    while st.planning() and time.time() - t0 < 30:
        time.sleep(0.01)
    p = st.current_plan("bvsb_ta_coreset")
    assert p["cycle"] == 3 and p["version"] == "v3"
    assert not {r[1] for r in p["rows"]} & labeled


def test_a_lease_of_a_frame_labeled_some_other_way_is_not_counted(tmp_path):
    """A frame labeled without a save through the server (its label put back from the trash; a save by an
    earlier version, which did not release leases, found by an upgrade probe) keeps its lease until it times
    out: /info's count of frames being labeled now leaves it out."""
    st, ids = setup_state(tmp_path)
    s = st.next_frame("random", "a", ids, set(), "v1")
    assert st.summary(set(), set(ids))["leases"] == 1
    assert st.summary({s.id}, set(ids))["leases"] == 0 and st.summary({s.id}, None)["leases"] == 0


def test_a_plan_made_elsewhere_meanwhile_is_kept(tmp_path):
    """Two processes planning the same cycle: the first to commit wins, the other keeps its plan."""
    st, ids = setup_state(tmp_path)
    other = ActiveLearningState(tmp_path / "st", batch_size=5, gamma=0.5, lease_seconds=100)
    p1 = other.plan("random", ids, set(), "v1")
    real_last = st.plans.last_cycle
    st.plans.last_cycle = lambda strategy: 0  # as if st had read the cycle before `other` committed
    p2 = st.plan("random", ids, set(), "v1")
    st.plans.last_cycle = real_last
    assert p2["cycle"] == p1["cycle"] == 1 and p2["rows"] == p1["rows"]
    assert len(st._conn().execute("SELECT * FROM plan_meta").fetchall()) == 1


def test_random_fallback_is_replaced_once_thumbnails_exist(tmp_path):
    """First cycle: asked before any thumbnail exists, a plan falls back to random; once the thumbnails
    of the pool are computed the next request gets a PCA-Coreset plan, and the answer says which."""
    from polypal.serving import FALLBACK_PCA, FALLBACK_RANDOM

    st = ActiveLearningState(tmp_path / "st", batch_size=5, lease_seconds=100)
    ids = [f"f{i:02d}" for i in range(30)]
    s = st.next_frame("bvsb_ta_coreset", "a", ids, set(), NO_MODEL)
    assert s.model_version == FALLBACK_RANDOM and "random" in s.note and s.picked_by == "random"
    st.add_thumbs(ids[:10], np.zeros((10, 32 * 32 * 3), np.uint8))
    s = st.next_frame("bvsb_ta_coreset", "b", ids, set(), NO_MODEL)  # thumbnails incomplete: same plan
    assert s.model_version == FALLBACK_RANDOM and s.cycle == 1
    rng = np.random.default_rng(0)
    st.add_thumbs(ids[10:], rng.integers(0, 255, (20, 32 * 32 * 3), dtype=np.uint8))
    s = st.next_frame("bvsb_ta_coreset", "c", ids, set(), NO_MODEL)
    assert s.cycle == 2 and s.model_version == FALLBACK_PCA and "pca_coreset" in s.note
    assert s.picked_by != "random"


def test_a_model_free_strategy_on_the_random_fallback_is_not_replanned_by_a_model(tmp_path):
    """pca_coreset fell back to random (no thumbnails): a scored model must not re-plan it at every request."""
    st = ActiveLearningState(tmp_path / "st", batch_size=5, lease_seconds=100)
    ids = [f"f{i:02d}" for i in range(30)]
    rng = np.random.default_rng(0)
    st.add_scores("v1", ids, rng.random(30), rng.standard_normal((30, 8)).astype(np.float32))
    cycles = {st.next_frame("pca_coreset", f"c{k}", ids, set(), "v1").cycle for k in range(4)}
    assert cycles == {1}


def test_summary_counts_scored_frames_per_version_rescored_ones_once(tmp_path):
    st, ids = setup_state(tmp_path)  # 30 frames scored under v1
    rng = np.random.default_rng(1)
    st.add_scores("v1", ids[:10], rng.random(10), rng.standard_normal((10, 8)).astype(np.float32))  # re-scored
    st.add_scores("v2", ids[:7], rng.random(7), rng.standard_normal((7, 8)).astype(np.float32))
    assert st.summary()["versions"] == {"v1": 30, "v2": 7}


def test_a_replaced_frame_is_forgotten_and_computed_again(tmp_path):
    """A frame whose file changed (replaced or deleted and re-added) keeps nothing of the old file: no
    score under any version, no thumbnail, no "undecodable" mark; the counts follow."""
    st, ids = setup_state(tmp_path)
    st.add_scores("v2", ids[:5], np.ones(5), np.ones((5, 8), np.float32))
    st.mark_bad("f01", "corrupt")
    st.features.forget("f01")
    assert st.unscored("v1", ids) == ["f01"] and st.unscored("v2", ids[:5]) == ["f01"]
    assert st.missing_thumbs(ids) == ["f01"] and st.bad_ids() == set()
    assert st.thumbs_for(ids) is None and st.scores_for("v1", ["f00", "f02"]) is not None
    assert st.summary()["versions"] == {"v1": 29, "v2": 4}
    st.features.forget("nosuch")  # nothing known: nothing happens
    assert st.summary()["versions"] == {"v1": 29, "v2": 4}


def test_a_store_made_before_the_version_count_is_migrated(tmp_path):
    """state.sqlite written by the code before `versions.n` existed: opened, it reports the same counts."""
    import sqlite3

    st, ids = setup_state(tmp_path)
    st.add_scores("v2", ids[:4], np.zeros(4), np.zeros((4, 8), np.float32))
    db = tmp_path / "st" / "state.sqlite"
    c = sqlite3.connect(db)
    c.executescript("CREATE TABLE v_old (version TEXT PRIMARY KEY, dim INTEGER);"
                    "INSERT INTO v_old SELECT version, dim FROM versions; DROP TABLE versions;"
                    "ALTER TABLE v_old RENAME TO versions;")
    c.commit()
    c.close()
    again = ActiveLearningState(tmp_path / "st", batch_size=5, gamma=0.5, lease_seconds=100)
    assert again.summary()["versions"] == {"v1": 30, "v2": 4}
    again.add_scores("v2", ids[4:6], np.zeros(2), np.zeros((2, 8), np.float32))
    assert again.summary()["versions"] == {"v1": 30, "v2": 6}


def test_a_cycle_planned_by_another_process_is_read_not_the_cached_one(tmp_path):
    st, ids = setup_state(tmp_path)
    first = st.plan("random", ids, set(), "v1")
    assert st.current_plan("random")["rows"] == first["rows"]  # now cached in this process
    other = ActiveLearningState(tmp_path / "st", batch_size=5, gamma=0.5, lease_seconds=100)
    second = other.plan("random", ids, {r[1] for r in first["rows"]}, "v1")
    assert second["cycle"] == 2 and second["rows"] != first["rows"]
    assert st.current_plan("random")["rows"] == second["rows"] and st.current_plan("random")["cycle"] == 2


def test_a_frame_replaced_while_the_pool_is_read_is_read_again(tmp_path):
    """refresh reads a chunk of frames, then stores their thumbnails (and scores). A frame replaced in between
    (an upload with replace, whose features the server drops) must not get the old file's back: it is left
    for the next refresh, which reads the new file."""
    from PIL import Image

    from polypal.data import read_rgb, resize_rgb
    from polypal.serving import refresh
    from polypal.serving.features import THUMB

    folder = tmp_path / "frames"
    folder.mkdir()
    for k, i in enumerate(("a", "b", "c")):
        Image.fromarray(np.full((24, 24, 3), 40 * k, np.uint8)).save(folder / f"{i}.png")
    new = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)

    class Frames:  # MONAI Label's datastore calls that refresh uses, over a folder
        replaced = False

        def list_images(self):
            return ["a", "b", "c"]

        def get_labeled_images(self):
            return []

        def get_image_uri(self, i):
            if i == "b" and not self.replaced:  # "a" was read already: another client replaces it now
                self.replaced = True
                tmp = folder / "a.tmp.png"
                Image.fromarray(new).save(tmp)
                os.replace(tmp, folder / "a.png")
            return str(folder / f"{i}.png")

    st = ActiveLearningState(tmp_path / "st", batch_size=2)
    refresh(st, Frames(), None, None)
    assert st.missing_thumbs(["a", "b", "c"]) == ["a"]
    refresh(st, Frames(), None, None)
    assert st.missing_thumbs(["a", "b", "c"]) == []
    assert np.array_equal(st.thumbs_for(["a"])[0], resize_rgb(read_rgb(str(folder / "a.png")), THUMB).reshape(-1))


def test_a_few_frames_added_since_scoring_wait_for_a_later_batch_not_the_whole_batch(tmp_path):
    """30 frames scored by v1, then 2 uploaded (no score, no thumbnail yet): the model's strategies plan over
    the 30 and say so; PCA-Coreset over the thumbnailed ones. With many new frames (more than a tenth of the
    unlabeled ones) the strategy waits on its fallback as before."""
    st, ids = setup_state(tmp_path)
    labeled = set(ids[:4])
    p = st.plan("bvsb_ta_coreset", ids + ["new1", "new2"], labeled, "v1")
    planned = [r[1] for r in p["rows"]]  # rows: (position, id, score, picked_by)
    assert p["version"] == "v1" and "2 new or changed frames not scored by this model yet" in p["note"]
    assert len(planned) == 5 and set(planned) <= set(ids) - labeled and all(r[2] is not None for r in p["rows"])
    q = st.plan("pca_coreset", ids + ["new1", "new2"], labeled, "v1")
    assert "2 new or changed frames not thumbnailed yet" in q["note"]
    assert len(q["rows"]) == 5 and {r[1] for r in q["rows"]} <= set(ids) - labeled
    many = ids + [f"new{k}" for k in range(4)]  # 4 of 30 unlabeled: over a tenth
    r = st.plan("bvsb_ta_coreset", many, labeled, "v1")
    assert r["version"].startswith("fallback") and "not scored yet" in r["note"]


def test_what_was_read_before_a_frame_changed_is_not_stored(tmp_path):
    """A reader notes when it started reading (read_since); a frame replaced (forget) after that gets neither
    its thumbnail, nor its scores, nor a bad mark from that read, checked in the storing transaction. A read
    that started after the change stores as usual."""
    import time

    st, ids = setup_state(tmp_path, n=4, with_scores=False)
    st.features.forget("f01")
    st.features.forget("f02")
    before = time.time()
    time.sleep(0.01)
    st.features.forget("f01")  # replaced while being read
    th = np.zeros((2, 32 * 32 * 3), np.uint8)
    st.add_thumbs(["f01", "f02"], th, read_since=before)
    assert st.missing_thumbs(ids) == ["f01"]
    st.add_scores("v1", ["f01", "f02"], np.ones(2), np.ones((2, 8), np.float32), read_since=before)
    assert st.unscored("v1", ids) == ["f00", "f01", "f03"]
    st.mark_bad("f01", "corrupt", read_since=before)
    assert st.bad_ids() == set()
    st.add_thumbs(["f01"], th[:1], read_since=time.time())
    st.mark_bad("f03", "corrupt", read_since=before)  # f03 did not change: marked
    assert st.missing_thumbs(ids) == [] and st.bad_ids() == {"f03"}


# -- found by a review of the live cycle (2026-12-06) ------------------------------------------------
def test_requests_without_a_client_id_get_different_frames(tmp_path):
    """Anonymous requests cannot say who moved on: each keeps its frame (until labeled or timed out), so
    two annotators whose clients send no client_id are not both given the first frame of the batch."""
    st, ids = setup_state(tmp_path)
    served = [st.next_frame("bvsb", None, ids, set(), "v1") for _ in range(3)]
    assert len({s.id for s in served}) == 3
    assert st.leases.count() == 3
    # a named client still gives its previous frame back when it asks again
    a1 = st.next_frame("bvsb", "a", ids, set(), "v1")
    a2 = st.next_frame("bvsb", "a", ids, set(), "v1")
    assert a1.id == a2.id and a1.id not in {s.id for s in served}


def test_frames_that_cannot_be_served_do_not_start_a_cycle_per_request(tmp_path):
    """The only unlabeled frame is gone from the datastore (``exists`` says no) without being marked bad:
    the request answers None and no new cycle is stored, however often it is asked."""
    st, ids = setup_state(tmp_path, n=6, batch=2)
    labeled = set(ids[:5])
    gone = ids[5]
    for _ in range(4):
        assert st.next_frame("bvsb", "a", ids, labeled, "v1", exists=lambda i: i != gone) is None
    assert st.plans.last_cycle("bvsb") <= 1
    # with a frame that can be served, it is served
    s = st.next_frame("bvsb", "a", ids, set(ids[:4]), "v1", exists=lambda i: i != gone)
    assert s is not None and s.id == ids[4]


def noise_frames(tmp_path, n: int):
    """(folder, ids): ``n`` 32 x 32 frames of random pixels, f00, f01..."""
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    ids = [f"f{i:02d}" for i in range(n)]
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder, ids


def test_labels_saved_while_the_pool_is_scored_are_not_planned(tmp_path):
    """refresh reads the labeled set, scores the pool (minutes on a large one), then plans: labels saved
    meanwhile are read again before planning, so the batch holds none of them."""
    import torch

    from polypal.learner import get_profile
    from polypal.learner.model import PolypUNet, save_checkpoint
    from polypal.serving import refresh

    folder, ids = noise_frames(tmp_path, 12)
    prof = get_profile("smoke")
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    save_checkpoint(model, PolypUNet.from_profile(prof), prof)

    class Frames:  # MONAI Label's datastore calls that refresh uses; labels arrive after the first read
        def __init__(self, later: set[str]):
            self.reads, self.later = 0, later

        def list_images(self):
            return list(ids)

        def get_labeled_images(self):
            self.reads += 1
            return [] if self.reads == 1 else sorted(self.later)

        def get_image_uri(self, i):
            return str(folder / f"{i}.png")

    ref = ActiveLearningState(tmp_path / "ref", batch_size=4)
    refresh(ref, Frames(set()), str(model), prof, chunk=4)
    first = [r[1] for r in ref.current_plan("bvsb")["rows"]]
    st = ActiveLearningState(tmp_path / "st", batch_size=4)
    refresh(st, Frames(set(first[:3])), str(model), prof, chunk=4)
    planned = [r[1] for r in st.current_plan("bvsb")["rows"]]
    assert len(planned) == 4 and not set(planned) & set(first[:3]), (first, planned)


def test_frames_with_nan_latents_wait_and_the_rest_is_planned(tmp_path):
    """A model that outputs NaN on some frames: k-center refuses NaN (it would follow index order), so the
    planner leaves those frames out with a note instead of failing next-sample."""
    st = ActiveLearningState(tmp_path / "st", batch_size=5, gamma=0.5, lease_seconds=100)
    ids = [f"f{i:02d}" for i in range(20)]
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((20, 8)).astype(np.float32)
    lat[7, 3] = np.nan
    scores = rng.random(20)
    scores[11] = np.nan
    st.add_scores("v1", ids, scores, lat)
    for strategy in ("ta_coreset", "bvsb_ta_coreset", "bvsb"):
        p = st.plan(strategy, ids, set(ids[:3]), "v1")
        planned = [r[1] for r in p["rows"]]
        assert len(planned) == 5 and not {"f07", "f11"} & set(planned), (strategy, planned)
        assert "2 frames with non-finite" in p["note"], p["note"]


def test_a_model_with_only_nan_outputs_falls_back_instead_of_failing(tmp_path):
    st, ids = setup_state(tmp_path, with_scores=False)
    st.add_scores("v1", ids, np.full(len(ids), np.nan), np.full((len(ids), 8), np.nan, np.float32))
    p = st.plan("bvsb_ta_coreset", ids, set(ids[:3]), "v1")
    assert p is not None and len(p["rows"]) == 5 and "gave no finite scores" in p["note"], p
    assert p["version"].startswith("fallback")


def test_older_model_versions_scores_and_latents_are_dropped(tmp_path):
    """Each model version's scores and latents (about 1 KiB a frame) were kept for ever, though only the
    current model's are read: retraining ten times a day filled a unit's disk within months (a review).
    A scoring run of a new model now drops the older ones, files included; a frame change no longer scans
    every score row ever written."""
    import sqlite3

    import torch

    from polypal.learner import get_profile
    from polypal.learner.model import PolypUNet, save_checkpoint
    from polypal.serving import model_version, refresh

    folder, ids = noise_frames(tmp_path, 10)

    class Frames:
        def list_images(self):
            return list(ids)

        def get_labeled_images(self):
            return ids[:2]

        def get_image_uri(self, i):
            return str(folder / f"{i}.png")

    prof = get_profile("smoke")
    model = tmp_path / "model.pt"
    st = ActiveLearningState(tmp_path / "st", batch_size=3)
    latents = tmp_path / "st" / "latents"
    versions = []
    for k in range(3):  # three trainings publish three models, each scored in turn
        torch.manual_seed(k)
        save_checkpoint(model, PolypUNet.from_profile(prof), prof)
        os.utime(model, ns=(10**18 + k, 10**18 + k))  # (a distinct version even within one mtime tick)
        versions.append(model_version(model))
        assert refresh(st, Frames(), str(model), prof, chunk=4)["scored"] == 10
        assert st.features.summary()["versions"] == {versions[-1]: 10}
        assert sorted(os.listdir(latents)) == [f"{versions[-1]}.f32"]
        assert st.scores_for(versions[-1], ids) is not None
    assert st.scores_for(versions[0], ids) is None and st.features.scored_ids(versions[0]) == set()
    with sqlite3.connect(tmp_path / "st" / "state.sqlite") as c:
        assert c.execute("SELECT DISTINCT version FROM scores").fetchall() == [(versions[-1],)]
    # a frame changed: its scores go and the count follows; the others are still served from the store
    st.features.forget("f05")
    assert st.features.summary()["versions"] == {versions[-1]: 9}
    assert st.unscored(versions[-1], ids) == ["f05"] and st.scores_for(versions[-1], ids[:5]) is not None
    # another profile's model beside it (a server of that profile on the same folder reads its scores): kept
    other = tmp_path / "other.pt"
    save_checkpoint(other, PolypUNet.from_profile(prof), prof)
    st.add_scores(model_version(other), ids[:2], np.zeros(2), np.zeros((2, 4), np.float32))
    assert refresh(st, Frames(), str(model), prof, chunk=4)["scored"] == 1  # (f05, forgotten above)
    assert sorted(st.features.summary()["versions"]) == sorted([versions[-1], model_version(other)])
    assert st.features.prune({versions[-1]}) == [model_version(other)]
    assert sorted(os.listdir(latents)) == [f"{versions[-1]}.f32"]


def test_scores_of_a_version_pruned_while_they_were_written_are_not_stored(tmp_path, monkeypatch):
    """Two servers on one folder: one's scoring run prunes a version while the other appends its latents.
    Rows committed after that pointed into a file that was gone, and the next append started a new file at
    row 0, under other frames' rows (a review reproduced wrong latents). The prune and the commit each
    check under the write lock: nothing is stored, and the frames are scored again."""
    from polypal.serving.features import RowStore

    st = ActiveLearningState(tmp_path / "st", batch_size=3)
    ids = [f"f{i}" for i in range(6)]
    lat = np.arange(24, dtype=np.float32).reshape(6, 4)
    st.add_scores("v1", ids[:2], np.zeros(2), lat[:2])
    real = RowStore.append

    def append_then_pruned(self, rows):
        start = real(self, rows)
        st.features.prune({"v2"})  # the other server's run ends just now
        return start

    monkeypatch.setattr(RowStore, "append", append_then_pruned)
    st.add_scores("v1", ids[2:4], np.zeros(2), lat[2:4])
    monkeypatch.undo()
    assert st.unscored("v1", ids) == ids
    st.add_scores("v1", ids[4:], np.zeros(2), lat[4:])  # a new file: rows 0-1
    st.add_scores("v1", ids[:2], np.zeros(2), lat[:2])  # rows 2-3, where f2, f3's rows pointed
    assert np.array_equal(st.scores_for("v1", ids[4:] + ids[:2])[1], np.concatenate([lat[4:], lat[:2]]))
    assert st.scores_for("v1", ids[2:4]) is None  # (before: f0 and f1's latents)
