"""Report of a scripts/mutation_test.sh run: recheck survivors against today's tests, list equivalents.

Usage: .venv/bin/python scripts/mutation_report.py [--out results/test-audit/mutation.md] [group ...]

For every mutant that survived a group's cosmic-ray session (in $WORK/<group>/session.sqlite), the
mutant is applied again to a fresh copy of the session's lib/ (the source it was numbered on) and the
group's tests as they are NOW are run
(one core): a survivor killed by a test added after the session counts as killed. The mutants still
alive are either listed in EQUIVALENT below, with the reason no test can tell them apart, or are
real holes. Score = killed / (all mutants run - equivalent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("WORK", "/tmp/polypal-mutation"))
CR = Path(os.environ.get("CR_VENV", "/tmp/crvenv")) / "bin"
TESTS = {
    "sampler": ["tests/test_algorithm1_reference.py", "tests/test_strategies.py", "tests/test_kcenter.py",
                "tests/test_strategy_properties.py"],
    "metrics": ["tests/test_uncertainty_metrics.py", "tests/test_metrics_reference.py"],
    "uncertainty": ["tests/test_uncertainty_metrics.py", "tests/test_metrics_reference.py"],
}

# (module, operator, occurrence) -> why the mutant cannot change any result. The modules are named as they
# were when results/test-audit was made (commit cbcc6e5, before the library moved into packages in 4ab922b):
# a new run (scripts/mutation_test.sh, new paths) numbers its mutants anew, so these must be argued again.
EQUIVALENT = {
    ("lib/polypal/strategies.py", "core/ReplaceComparisonOperator_Eq_LtE", 0):
        "`len(available) <= 0`: a length is never negative",
    ("lib/polypal/strategies.py", "core/ReplaceComparisonOperator_Eq_LtE", 4):
        "`name <= 'pca_coreset'` in the elif chain: only 'pca_coreset' and 'unc_ta_coreset' reach it "
        "(names are checked first), and 'unc_ta_coreset' > 'pca_coreset'",
    ("lib/polypal/strategies.py", "core/NumberReplacer", 1):
        "`k <= -1` in top_uncertain: k = 0 slices `order[:0]`, empty either way",
    ("lib/polypal/strategies.py", "core/NumberReplacer", 8):
        "`reshape(n, -2)`: numpy 1.26 takes any negative size as 'infer'",
    ("lib/polypal/strategies.py", "core/ReplaceUnaryOperator_USub_Invert", 1):
        "`reshape(n, ~1)` is reshape(n, -2): numpy 1.26 takes any negative size as 'infer'",
    ("lib/polypal/kcenter.py", "core/ReplaceComparisonOperator_LtE_Lt", 0):
        "`budget < 0`: with budget 0 the loop runs zero times and returns the same empty array",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 45):
        "`budget <= -1`: as above, budget 0 returns the same empty array",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 1):
        "DEFAULT_CHUNK 8191: a chunk size, results are identical",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 12):
        "`chunk_c = max(2, ...)`: a chunk size (slicing past the end is harmless)",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 13):
        "`chunk_c = max(0, ...)`: there is at least one center here (an empty set returned earlier)",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 16):
        "`row_chunk = max(2, ...)`: a chunk size",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 15):
        "`min(len(centers), 1023)`: a chunk size",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 18):
        "`chunk * 129`: a chunk size (a 1% larger block)",
    ("lib/polypal/kcenter.py", "core/ReplaceBinaryOperator_Mul_Add", 0):
        "`(chunk + 128) // chunk_c`: smaller blocks, same distances",
    ("lib/polypal/kcenter.py", "core/ReplaceComparisonOperator_Eq_LtE", 0):
        "`len(centers) <= 0`: a length is never negative",
    ("lib/polypal/kcenter.py", "core/ReplaceComparisonOperator_Eq_LtE", 2):
        "`len(labeled) <= 0`: a length is never negative",
    ("lib/polypal/strategies.py", "core/ReplaceComparisonOperator_Lt_NotEq", 0):
        "`while len(chosen) != budget`: a round adds at most the shortfall, so the count never passes B",
    ("lib/polypal/strategies.py", "core/ReplaceTrueWithFalse", 0):
        "`setdiff1d(..., assume_unique=False)`: both inputs are unique, same sorted result",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 0):
        "DEFAULT_CHUNK 8193: a chunk size",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 14):
        "`min(len(centers), 1025)`: a chunk size",
    ("lib/polypal/kcenter.py", "core/ReplaceBinaryOperator_Mul_Sub", 0):
        "`(chunk - 128) // chunk_c`: smaller blocks (at least one row), same distances",
    ("lib/polypal/kcenter.py", "core/ReplaceComparisonOperator_Eq_Lt", 0):
        "`len(centers) < 0`: with no centers the loops run zero times and every distance stays inf, "
        "as the early return gives",
    ("lib/polypal/kcenter.py", "core/ReplaceComparisonOperator_Eq_LtE", 1):
        "`k <= 0` for the pick counter: k is never negative",
    ("lib/polypal/strategies.py", "core/ReplaceComparisonOperator_Eq_GtE", 2):
        "`name >= 'uncertainty'` in the elif chain: of the names left, only 'uncertainty' sorts at or "
        "after it ('unc_ta_coreset' < 'uncertainty')",
    ("lib/polypal/strategies.py", "core/ReplaceComparisonOperator_LtE_Lt", 0):
        "`k < 0` in top_uncertain: k = 0 slices `order[:0]`, empty either way",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 11):
        "`len(centers) == -1`: as `< 0`, no centers leave every distance at inf",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 52):
        "sentinel -2 instead of -1 for non-candidates: any negative value is below every squared distance",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 19):
        "`chunk * 127`: a chunk size",
    ("lib/polypal/metrics.py", "core/ReplaceTrueWithFalse", 0):
        "`include_background=False` for MONAI's confusion matrix: with one channel MONAI keeps it anyway "
        "(it can only drop a background channel when there are two or more)",
    ("lib/polypal/metrics.py", "core/ReplaceTrueWithFalse", 1):
        "`include_background=False` for MONAI's compute_iou: with one channel MONAI keeps it (checked: "
        "same values)",
    ("lib/polypal/metrics.py", "core/ReplaceTrueWithFalse", 2):
        "`include_background=False` for MONAI's compute_dice: as for compute_iou, one channel is kept",
    ("lib/polypal/uncertainty.py", "core/NumberReplacer", 53):
        "`area.clamp(min=0)`: only an empty region divides by 0, and torch.where then takes the topk "
        "branch (no gradient flows here, so the unused NaN never shows)",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 29):
        "clamp at -1 instead of 0 after the initial distances: only squared distances that are 0 up to "
        "float rounding go below 0; their order is rounding noise either way (module docstring)",
    ("lib/polypal/kcenter.py", "core/NumberReplacer", 37):
        "clamp at -1 instead of 0 in the updates: as above, only distances that are 0 up to rounding",
}


def survivors(group: str) -> tuple[int, list[dict]]:
    sess = WORK / group / "session.sqlite"
    out = subprocess.run([str(CR / "cosmic-ray"), "dump", str(sess)], capture_output=True, text=True,
                         check=True).stdout
    total, alive = 0, []
    for line in out.splitlines():
        w, r = json.loads(line)
        if not r or r.get("worker_outcome") == "skipped":  # not run yet (an unfinished session), or filtered
            continue
        total += 1
        if r.get("test_outcome") == "survived":
            m = w["mutations"][0]
            alive.append({"module": m["module_path"], "operator": m["operator_name"],
                          "occurrence": m["occurrence"], "line": m["start_pos"][0], "diff": r.get("diff") or ""})
    return total, alive


def recheck(group: str, mut: dict) -> bool:
    """True when today's tests kill the mutant."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # the session's own copy of lib/: the source the occurrences were numbered on (lib/ may have moved on)
        shutil.copytree(WORK / group / "lib", t / "lib", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "tests", t / "tests", ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        shutil.copy(REPO / "pyproject.toml", t)
        subprocess.run([str(CR / "cosmic-ray"), "apply", mut["module"], mut["operator"], str(mut["occurrence"])],
                       cwd=t, check=True, capture_output=True)
        env = dict(os.environ, PYTHONPATH="lib", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONDONTWRITEBYTECODE="1")
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            "--hypothesis-seed=0", *TESTS[group]], cwd=t, env=env, capture_output=True, text=True)
        return r.returncode != 0


def changed_lines(diff: str) -> str:
    keep = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "<br>".join(f"`{ln[0]} {ln[1:].strip()}`" for ln in keep)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("groups", nargs="*", default=["sampler", "metrics", "uncertainty"])
    ap.add_argument("--out", default=str(REPO / "results" / "test-audit" / "mutation.md"))
    a = ap.parse_args()
    lines = ["# Mutation testing (cosmic-ray 8.7.0)", "",
             "Made by `scripts/mutation_test.sh` (the cosmic-ray sessions, one core, in a scratch copy) and",
             "`scripts/mutation_report.py` (this report: each survivor re-applied and run against the tests as",
             "they are now, so survivors killed by tests written after the session count as killed).",
             "Operator subset: see the filter in `scripts/mutation_test.sh`.", "",
             "| group | modules | mutants run | killed | equivalent | real survivors | score |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    detail, holes = [], 0
    for g in a.groups:
        if not (WORK / g / "session.sqlite").exists():
            lines.append(f"| {g} | | not run | | | | |")
            continue
        total, alive = survivors(g)
        eq, killed_later, real = [], [], []
        for m in alive:
            key = (m["module"], m["operator"], m["occurrence"])
            if key in EQUIVALENT:  # argued above; not re-run
                eq.append((m, EQUIVALENT[key]))
            elif recheck(g, m):
                killed_later.append(m)
            else:
                real.append(m)
            print(f"{g}: {key} -> {'killed now' if m in killed_later else 'equivalent' if key in EQUIVALENT else 'SURVIVES'}",
                  flush=True)
        killed = total - len(alive) + len(killed_later)
        score = killed / max(1, total - len(eq))
        mods = sorted({m["module"] for m in alive}) or ["see session"]
        lines.append(f"| {g} | {', '.join(Path(x).name for x in mods)} | {total} | {killed} "
                     f"({len(killed_later)} by tests added after the session) | {len(eq)} | {len(real)} | "
                     f"{100 * score:.1f}% |")
        holes += len(real)
        detail += [f"", f"## {g}", ""]
        if killed_later:
            detail += ["Survived the session, killed by tests added since:", "",
                       "| where | mutation |", "| --- | --- |"]
            detail += [f"| {Path(m['module']).name}:{m['line']} | {changed_lines(m['diff'])} |" for m in killed_later]
            detail.append("")
        if eq:
            detail += ["Equivalent (no test can tell them apart):", "", "| where | mutation | why |", "| --- | --- | --- |"]
            detail += [f"| {Path(m['module']).name}:{m['line']} | {changed_lines(m['diff'])} | {why} |" for m, why in eq]
            detail.append("")
        if real:
            detail += ["**Still surviving (holes):**", "", "| where | mutation |", "| --- | --- |"]
            detail += [f"| {Path(m['module']).name}:{m['line']} | {changed_lines(m['diff'])} |" for m in real]
            detail.append("")
    Path(a.out).write_text("\n".join(lines + detail) + "\n")
    print(f"wrote {a.out}; {holes} real survivors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
