"""polypal.serving.quality: the per-model curve and the stopping rule, against hand-computed values."""

import math

import numpy as np

from polypal.serving.quality import label_dice, stopping_signal, summarize


def test_label_dice_hand_computed():
    p = np.zeros((4, 4), bool)
    t = np.zeros((4, 4), bool)
    p[:2] = True  # 8 pixels
    t[1:3] = True  # 8 pixels, 4 shared
    assert math.isclose(label_dice(p, t), 2 * 4 / 16)
    assert label_dice(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0


def test_summarize_orders_models_by_first_measurement():
    recs = [("b", 0.5, 20.0), ("a", 0.2, 10.0), ("a", 0.4, 11.0), ("b", 0.7, 21.0), ("b", 0.6, 22.0)]
    c = summarize(recs)
    assert [x["version"] for x in c] == ["a", "b"] and [x["model"] for x in c] == [1, 2]
    assert c[0]["labels"] == 2 and math.isclose(c[0]["mean_dice"], 0.3)
    assert math.isclose(c[0]["se"], round(np.std([0.2, 0.4], ddof=1) / math.sqrt(2), 4))
    assert math.isclose(c[1]["mean_dice"], 0.6) and math.isclose(c[1]["se"], round(0.1 / math.sqrt(3), 4))


def test_stopping_rule():
    def model(k, mean, se, n=10):
        return {"model": k, "version": str(k), "labels": n, "mean_dice": mean, "se": se}

    # improvement 0.10 > 2 * sqrt(0.02^2 + 0.02^2) = 0.0566: keep going
    assert stopping_signal([model(1, 0.50, 0.02), model(2, 0.60, 0.02)]) is None
    # improvement 0.05 < 0.0566: may have stopped
    msg = stopping_signal([model(1, 0.50, 0.02), model(2, 0.55, 0.02)])
    assert msg and "model 2" in msg and "+0.050" in msg
    # too few labels on the last model: the rule looks at the two last models with enough labels
    assert stopping_signal([model(1, 0.50, 0.02), model(2, 0.55, 0.02, n=9)]) is None
    assert stopping_signal([model(1, 0.5, 0.02)]) is None
    # a drop of 0.05 is within 0.0566: may have stopped; a drop of 0.40 is not, and is said as a drop (a
    # probe: it read "difference -0.400, within twice its standard error 0.028")
    assert "may have stopped" in stopping_signal([model(1, 0.55, 0.02), model(2, 0.50, 0.02)])
    drop = stopping_signal([model(1, 0.60, 0.02), model(2, 0.20, 0.02)])
    assert "scores lower than the one before" in drop and "-0.400" in drop and "within" not in drop, drop


def test_models_keep_their_training_numbers(tmp_path):
    """by_model numbered the models by their rank among the measured ones: after a model that no label
    measured (two trainings in a row), "model 12" was the server's model 13. The number the training gave
    is now kept with each measurement; records without one (older ones) fall back to the rank."""
    from polypal.serving.annotations import SCHEMA, AnnotationLog
    from polypal.serving.sqlite_db import SQLiteDB

    log = AnnotationLog(SQLiteDB(tmp_path / "s.sqlite", SCHEMA))
    log.add_quality("f1", "v-a", 0.5, ts=1.0, model_number=12)
    log.add_quality("f2", "v-b", 0.6, ts=2.0, model_number=14)
    assert [(c["model"], c["version"]) for c in log.quality()["by_model"]] == [(12, "v-a"), (14, "v-b")]
    log.add_quality("f3", "v-c", 0.7, ts=3.0)  # no number known: ranks for all
    assert [c["model"] for c in log.quality()["by_model"]] == [1, 2, 3]
    # a state database written before the numbers were kept (read by the export as it is), and one an older
    # version writes again after this one (a rollback): its quality insert has the table's four columns
    import sqlite3

    old = tmp_path / "old.sqlite"
    c = sqlite3.connect(old)
    c.execute("CREATE TABLE quality (image_id TEXT, version TEXT, dice REAL, ts REAL, PRIMARY KEY (image_id, version))")
    c.execute("INSERT INTO quality VALUES ('f1', 'v-a', 0.5, 1.0)")
    c.commit()
    c.close()
    assert [c["labels"] for c in AnnotationLog(SQLiteDB(old)).quality()["by_model"]] == [1]
    log2 = AnnotationLog(SQLiteDB(old, SCHEMA))
    log2.add_quality("f2", "v-b", 0.6, ts=2.0, model_number=3)
    assert [c["labels"] for c in log2.quality()["by_model"]] == [1, 1]
    with sqlite3.connect(old) as c:
        c.execute("INSERT OR IGNORE INTO quality VALUES (?, ?, ?, ?)", ("f3", "v-b", 0.7, 3.0))


def test_the_servers_curve_from_sql_sums_equals_numpy_on_every_label(tmp_path):
    """next-sample reads the curve from one GROUP BY (sums), not every label: same numbers as numpy's mean and
    standard error over the labels themselves."""
    from polypal.serving.annotations import SCHEMA, AnnotationLog
    from polypal.serving.sqlite_db import SQLiteDB

    log = AnnotationLog(SQLiteDB(tmp_path / "s.sqlite", SCHEMA))
    rng = np.random.default_rng(3)
    dice = {v: rng.beta(5, 2, size=n) for v, n in (("m1", 1), ("m2", 7), ("m3", 2000))}
    for k, (v, xs) in enumerate(dice.items()):
        for i, x in enumerate(xs):
            log.add_quality(f"f{i}", v, float(x), ts=100.0 * k + i)
    curve = log.quality()["by_model"]
    assert [c["version"] for c in curve] == ["m1", "m2", "m3"] and curve[0]["se"] is None
    for c in curve:
        xs = dice[c["version"]]
        assert c["labels"] == len(xs) and c["mean_dice"] == round(float(xs.mean()), 4)
        if len(xs) > 1:
            assert c["se"] == round(float(xs.std(ddof=1) / math.sqrt(len(xs))), 4)


def test_the_stopping_signal_alone_is_the_curves(tmp_path):
    """Next-sample reads only the stopping sentence (a copy of the whole per-model curve at every request
    grew with every model); it is the one the curve gives, and follows a new measurement."""
    from polypal.serving import ActiveLearningState

    st = ActiveLearningState(tmp_path / "st", batch_size=2)
    assert st.stopping() is None
    rng = np.random.default_rng(0)
    for k, (version, mean) in enumerate((("v1", 0.50), ("v2", 0.51))):
        for i in range(12):
            st.add_quality(f"{version}-f{i}", version, float(mean + rng.normal(0, 0.05)), ts=100.0 * k + i,
                           model_number=k + 1)
    assert st.stopping() == st.quality()["stopping"] and "may have stopped" in st.stopping()
    for i in range(12):
        st.add_quality(f"v3-f{i}", "v3", 0.95, ts=300.0 + i, model_number=3)
    assert st.stopping() is None and st.quality()["stopping"] is None


def test_info_shows_the_newest_models_and_the_stopping_signal_of_all(tmp_path):
    """/info (read at every next-sample) grew by one entry per model; ``last`` keeps the newest ones, says
    how many were left out, and the stopping signal still reads the last two models."""
    from polypal.serving.annotations import SCHEMA, AnnotationLog
    from polypal.serving.sqlite_db import SQLiteDB

    log = AnnotationLog(SQLiteDB(tmp_path / "s.sqlite", SCHEMA))
    for k in range(1, 8):
        for j in range(10):
            log.add_quality(f"f{k}-{j}", f"v{k}", 0.5 + 0.001 * j, ts=k * 100.0 + j, model_number=k)
    full, short = log.quality(), log.quality(last=3)
    assert [c["model"] for c in full["by_model"]] == list(range(1, 8)) and full["models"] == 7
    assert "earlier_not_shown" not in full
    assert [c["model"] for c in short["by_model"]] == [5, 6, 7]
    assert short["models"] == 7 and short["earlier_not_shown"] == 4
    assert short["stopping"] == full["stopping"] and "model 7" in short["stopping"]
    short["by_model"].clear()  # a copy: the cached curve is not changed
    assert len(log.quality(last=3)["by_model"]) == 3 and log.quality(last=10)["by_model"] == full["by_model"]
