"""Plant known bugs in a scratch copy of lib/ and check the fast tests catch each one.

Usage: .venv/bin/python scripts/planted_bugs.py [--out report.md] [name ...]

Each bug is a literal text replacement in one module of a copy of lib/polypal
(the working tree is never touched). For each, the fast tests (no server, no
training) run against the copy with PYTHONPATH pointing at it, one thread;
the report lists which tests failed. A bug that fails no test is a hole in
the suite: the script exits 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST_TESTS = [
    "tests/test_algorithm1_reference.py", "tests/test_strategies.py", "tests/test_kcenter.py",
    "tests/test_strategy_properties.py", "tests/test_uncertainty_metrics.py", "tests/test_metrics_reference.py",
    "tests/test_splits.py",
]

# name -> (module, old text, new text, what it breaks)
BUGS = {
    "refill_forgets_chosen_centers": (
        "sampler/selection.py",
        "centers = np.concatenate([labeled, np.asarray(chosen, dtype=np.int64)])",
        "centers = labeled",
        "Algorithm 1: refill rounds leave this cycle's picks out of k-center's centers"),
    "b_u_rounds_half_up": (
        "sampler/selection.py",
        "b_u = int(round(gamma * need))",
        "b_u = int(np.floor(gamma * need + 0.5))",
        "Algorithm 1: B_u rounded half up instead of half to even"),
    "refill_splits_whole_budget": (
        "sampler/selection.py",
        "b_u = int(round(gamma * need))",
        "b_u = min(need, int(round(gamma * budget)))",
        "Algorithm 1: refill rounds reuse the first round's B_u instead of splitting the shortfall"),
    "both_reported_as_uncertainty": (
        "sampler/selection.py",
        "                by[j] = BOTH",
        "                by[j] = by[j]",
        "Algorithm 1: frames chosen by both samplers reported as 'uncertainty'"),
    "uncertainty_ties_to_higher_index": (
        "sampler/selection.py",
        "cand = np.sort(np.asarray(candidates, dtype=np.int64))",
        "cand = np.sort(np.asarray(candidates, dtype=np.int64))[::-1]",
        "top_uncertain: ties go to the higher index"),
    "random_with_replacement": (
        "sampler/strategies.py",
        "size=budget, replace=False)",
        "size=budget, replace=True)",
        "random draws with replacement (the original code's bug)"),
    "kcenter_ties_to_highest_index": (
        "sampler/kcenter.py",
        "j = int(np.argmax(masked))  # first index among equal maxima",
        "j = int(len(masked) - 1 - np.argmax(masked[::-1]))",
        "k-center: ties to the highest index"),
    "kcenter_candidates_may_return_labeled": (
        "sampler/kcenter.py",
        "        mask[np.asarray(candidates, dtype=np.int64)] = True\n        mask[labeled] = False",
        "        mask[np.asarray(candidates, dtype=np.int64)] = True",
        "k-center: a labeled frame listed in candidates can be picked (in both paths, one-pass and pruned)", 2),
    "kcenter_min_becomes_max": (
        "sampler/kcenter.py",
        "np.minimum(best[s : s + self.chunk], d, out=best[s : s + self.chunk])",
        "np.maximum(best[s : s + self.chunk], d, out=best[s : s + self.chunk])",
        "k-center: the nearest-center distance is not updated by new centers (farthest instead)"),
    "kcenter_first_center_unseeded": (
        "sampler/kcenter.py",
        "np.random.default_rng(seed).integers(len(cand_idx))",
        "np.random.default_rng().integers(len(cand_idx))",
        "k-center: the first center with no labeled set ignores the seed (in both code paths)", 2),
    "bvsb_half_scale": (
        "sampler/uncertainty.py",
        "return 1.0 - (2.0 * p - 1.0).abs()",
        "return 0.5 - (p - 0.5).abs()",
        "BvSB (eqn 4) off by a factor 2 (same ranking)"),
    "bvsb_squared": (
        "sampler/uncertainty.py",
        "return 1.0 - (2.0 * p - 1.0).abs()",
        "return 1.0 - (2.0 * p - 1.0) ** 2",
        "BvSB as 1 - (2p-1)^2 (same per-pixel ranking, different image means)"),
    "bvsb_multiclass_best_minus_third": (
        "sampler/uncertainty.py",
        "top2 = torch.topk(probs, k=2, dim=dim).values",
        "top2 = torch.topk(probs, k=min(3, probs.shape[dim]), dim=dim).values[:, [0, -1]]",
        "BvSB (eqn 3): best minus the lowest instead of the second best"),
    "paper_miou_bg_without_fp": (
        "learner/metrics.py",
        'iou_bg = c["tn"] / max(c["tn"] + c["fn"] + c["fp"], 1)',
        'iou_bg = c["tn"] / max(c["tn"] + c["fn"], 1)',
        "paper metric: background IoU without the false positives"),
    "paper_miou_is_polyp_iou": (
        "learner/metrics.py",
        'return 0.5 * (iou_fg + iou_bg)',
        'return iou_fg',
        "paper metric: polyp IoU only"),
    "paper_miou_per_image_mean": (
        "learner/metrics.py",
        "tp, fp, tn, fn = cm.sum(dim=(0, 1)).tolist()  # (N, C=1, 4)",
        "tp, fp, tn, fn = cm.mean(dim=(0, 1)).tolist()  # (N, C=1, 4)",
        "pooled confusion averaged over images instead of summed"),
    "threshold_ge": (
        "learner/metrics.py",
        "pred = np.asarray(probs) > threshold",
        "pred = np.asarray(probs) >= threshold",
        "evaluate: p = 0.5 counted as polyp"),
    "empty_image_scores_zero": (
        "learner/metrics.py",
        "ignore_empty=False).squeeze(1).numpy()\n    dice",
        "ignore_empty=True).squeeze(1).numpy()\n    dice",
        "per-image IoU: an empty mask with an empty prediction is not a perfect 1.0"),
    "cvc_split_frames_of_a_sequence_split": (
        "experiments/splits.py",
        "        if len(test) < n_test:\n            test += frames",
        "        if len(test) < n_test:\n            test += frames[: n_test - len(test)]\n            pool += frames[n_test - len(test):]",
        "CVC split: a sequence cut at the test-set boundary"),
    "kvasir_sessile_in_pool": (
        "experiments/splits.py",
        "rest = sorted(n for n in names if n not in sess)",
        "rest = sorted(names)",
        "Kvasir split: test frames leak into pool/val (the original code's leak)"),
}


def run_one(name: str, scratch: Path) -> tuple[list[str], float]:
    module, old, new = BUGS[name][:3]
    times = BUGS[name][4] if len(BUGS[name]) > 4 else 1  # a bug in an idiom two code paths share: planted in both
    src = REPO / "lib" / "polypal" / module
    dst = scratch / "polypal" / module
    text = src.read_text()
    if text.count(old) != times:
        raise SystemExit(f"{name}: the text to replace occurs {text.count(old)} times in {module} (expected {times}); "
                         "update the bug list")
    dst.write_text(text.replace(old, new))
    env = dict(os.environ, PYTHONPATH=str(scratch), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                        "-rf", *FAST_TESTS], cwd=REPO, env=env, capture_output=True, text=True)
    dst.write_text(text)  # revert
    failed = sorted({m.group(1).split("[")[0] for m in re.finditer(r"^FAILED (\S+)", r.stdout, re.M)})
    if r.returncode not in (0, 1):
        failed = failed or [f"(pytest exit {r.returncode}: {r.stdout[-300:]})"]
    return failed, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", help=f"bugs to plant (default: all {len(BUGS)})")
    ap.add_argument("--out", help="write a markdown report here")
    a = ap.parse_args()
    names = a.names or list(BUGS)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        shutil.copytree(REPO / "lib" / "polypal", scratch / "polypal",
                        ignore=shutil.ignore_patterns("__pycache__"))
        # the copy must be what the tests import
        check = subprocess.run([sys.executable, "-c", "import polypal; print(polypal.__file__)"],
                               env=dict(os.environ, PYTHONPATH=str(scratch)), capture_output=True, text=True)
        assert check.stdout.startswith(str(scratch)), check.stdout + check.stderr
        rows, holes = [], []
        for n in names:
            failed, secs = run_one(n, scratch)
            print(f"{n}: {len(failed)} failing tests ({secs:.0f} s)", flush=True)
            for f in failed:
                print(f"    {f}")
            rows.append((n, failed))
            if not failed:
                holes.append(n)
    if a.out:
        lines = ["# Planted bugs and the fast tests that catch them", "",
                 f"`{Path(sys.argv[0]).name}` plants each bug in a scratch copy of `lib/polypal` and runs:",
                 "", *[f"- `{t}`" for t in FAST_TESTS], "",
                 "| bug | module | what it breaks | failing tests |", "| --- | --- | --- | --- |"]
        for n, failed in rows:
            mod, what = BUGS[n][0], BUGS[n][3]
            shown = "<br>".join(f"`{f.split('::', 1)[1] if '::' in f else f}`" for f in failed[:6])
            more = f" (+{len(failed) - 6} more)" if len(failed) > 6 else ""
            lines.append(f"| `{n}` | {mod} | {what} | {shown or '**none**'}{more} |")
        Path(a.out).write_text("\n".join(lines) + "\n")
    if holes:
        print("NOT CAUGHT:", ", ".join(holes))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
