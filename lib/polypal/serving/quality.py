"""Model quality measured on the annotators' own work, and a signal for when labels stopped helping.

When an annotator saves a final label for a frame the current model never trained
on, the Dice between the model's prediction for that frame and the label is a free
and honest measurement of that model. Grouped by model (one per AL cycle), these
form a learning curve with no extra annotation.

Limits, said where the numbers are shown: the frames measured are the ones the
strategy chose (with uncertainty sampling: the hard ones), so the values are
lower than on a random test set, and two models are measured on different frames.
The stopping rule compares the last two models only; it says "may have stopped",
never more.
"""

from __future__ import annotations

import math

import numpy as np

MIN_LABELS = 10  # a model needs this many measured labels before it enters the stopping rule


def label_dice(pred_mask, label_mask) -> float:
    """Polyp Dice of one predicted mask against one label (both empty counts as 1.0)."""
    from polypal.learner import per_image_scores  # torch: only where a prediction is measured, not for /info

    return float(per_image_scores(np.asarray(pred_mask)[None], np.asarray(label_mask)[None])["dice"][0])


def summarize(records) -> list[dict]:
    """Per model, in the order the models were first measured: n, mean Dice, its standard error.

    ``records``: (model version, dice, time) tuples."""
    by: dict[str, list] = {}
    for version, dice, ts in records:
        g = by.setdefault(version, [0, 0.0, 0.0, ts])
        g[0], g[1], g[2], g[3] = g[0] + 1, g[1] + float(dice), g[2] + float(dice) ** 2, min(g[3], ts)
    return summarize_groups([(v, *g) for v, g in by.items()])


def summarize_groups(groups) -> list[dict]:
    """``summarize`` from per-model sums: (version, n, sum of Dice, sum of squares, first time[, model number])
    tuples, as one SQL GROUP BY gives them (next-sample asks for the curve on every request: no Python pass
    over every label). ``model`` is the training's model number when every group has one (recorded with
    the measurement; before, models were numbered by their rank among the measured ones, which drifted from
    the server's own numbers once a model went unmeasured), else the rank."""
    groups = sorted(groups, key=lambda g: g[4])
    numbers = [g[5] if len(g) > 5 else None for g in groups]
    known = all(isinstance(x, int) for x in numbers) and len(set(numbers)) == len(numbers)
    out = []
    for k, (g, number) in enumerate(zip(groups, numbers), start=1):
        v, n, s1, s2, first = g[:5]
        mean = s1 / n
        se = math.sqrt(max(s2 - s1 * s1 / n, 0.0) / (n - 1) / n) if n > 1 else None
        out.append({"model": number if known else k, "version": v, "labels": int(n), "mean_dice": round(mean, 4),
                    "se": None if se is None else round(se, 4), "first_measured": first})
    return out


def stopping_signal(curve: list[dict], min_labels: int = MIN_LABELS) -> str | None:
    """A sentence when the last two models (both measured on at least ``min_labels`` labels) differ by no
    more than two standard errors of the difference: labels may have stopped helping. When the last one
    is lower by more than that, a sentence saying so instead (before, that case was also called "within
    twice its standard error", which it was not). None when the last model is clearly better."""
    ready = [c for c in curve if c["labels"] >= min_labels and c["se"] is not None]
    if len(ready) < 2:
        return None
    prev, last = ready[-2], ready[-1]
    diff = last["mean_dice"] - prev["mean_dice"]
    se = math.sqrt(prev["se"] ** 2 + last["se"] ** 2)
    if diff > 2 * se:
        return None
    scores = (f"model {last['model']} scores Dice {last['mean_dice']:.3f} on {last['labels']} new labels, "
              f"model {prev['model']} {prev['mean_dice']:.3f} on {prev['labels']}")
    if diff < -2 * se:
        return (f"the last model scores lower than the one before: {scores} (difference {diff:+.3f}, more than "
                f"twice its standard error {se:.3f}); they were measured on different frames, which may be "
                f"harder now, but look at the last training (train_stats) before labeling on")
    return (f"labels may have stopped helping: {scores} (difference {diff:+.3f}, within twice its standard "
            f"error {se:.3f})")


def plot_quality(curve: list[dict], path, stopping: str | None = None) -> bool:
    """The curve as a PNG: mean Dice per model with ± 2 standard errors, labels measured under each point.
    False (nothing written) when no model has been measured yet."""
    if not curve:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [c["model"] for c in curve]
    ys = [c["mean_dice"] for c in curve]
    err = [2 * c["se"] if c["se"] is not None else 0.0 for c in curve]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=4)
    for c in curve:
        ax.annotate(f"{c['labels']} labels", (c["model"], c["mean_dice"]), textcoords="offset points",
                    xytext=(0, -16), ha="center", fontsize=7)
    ax.set_xticks(xs)
    ax.set_xlabel("model (one per training)")
    ax.set_ylabel("polyp Dice on newly labeled frames")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    title = "Model quality from the annotators' labels (± 2 SE)"
    ax.set_title(title + ("\n" + stopping[:90] + ("..." if len(stopping) > 90 else "") if stopping else ""),
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
