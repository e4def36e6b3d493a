#!/usr/bin/env bash
# Mutation testing of the sampler (lib/polypal/sampler: selection.py, registry.py, strategies.py, kcenter.py),
# the metrics (learner/metrics.py, sampler/uncertainty.py) and the data readers (data/images.py, masks.py,
# folders.py) with cosmic-ray, in a scratch copy (cosmic-ray edits files in place: never the working tree), one core.
#
# Usage: bash scripts/mutation_test.sh [group ...]     groups: sampler kcenter metrics uncertainty data
#        (default: all; sampler = selection.py, registry.py, strategies.py; kcenter = kcenter.py)
# Env:   OUT=results/test-audit (reports), WORK=/tmp/polypal-mutation (scratch), CR_VENV=/tmp/crvenv
#        (a separate venv for cosmic-ray, so the project's .venv is not changed)
# Output: $OUT/mutation-<group>.txt (cr-report: every surviving mutant with its diff, and the totals);
#         then scripts/mutation_report.py writes $OUT/mutation.md.
#        QUIET=/tmp/polypal-quiet: no group starts while this file exists (a shared machine).
#        COUNT_ONLY=1: create and filter the sessions, print how many mutants each would run, stop.
#        RESUME=1: continue the group's unfinished session in $WORK (a run that was killed): its copy of lib/
#        is first restored from lib.orig, since a killed cosmic-ray leaves its last mutant applied.
# Takes 7-13 s per mutant on one core of this 2-core machine (about 320 sampler, 50 metrics, 120 uncertainty
# mutants after the operator filter below): 1 h 45 min in all.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/results/test-audit}
WORK=${WORK:-/tmp/polypal-mutation}
CR_VENV=${CR_VENV:-/tmp/crvenv}
QUIET=${QUIET:-/tmp/polypal-quiet}
PY=$REPO/.venv/bin/python
GROUPS_=("$@")
[ ${#GROUPS_[@]} -eq 0 ] && GROUPS_=(sampler kcenter metrics uncertainty data)

if [ ! -x "$CR_VENV/bin/cosmic-ray" ]; then
  python3 -m venv "$CR_VENV"
  "$CR_VENV/bin/python" -m pip install --quiet "cosmic-ray==8.7.0"
fi
mkdir -p "$OUT"

for group in "${GROUPS_[@]}"; do
  skip_defs=""  # module:def,def ... top-level functions/classes whose mutants are not run ("<module>": module level)
  # tests in the order that kills most mutants first (pytest -x stops at the first failure)
  case $group in
    sampler)
      modules='["lib/polypal/sampler/selection.py", "lib/polypal/sampler/registry.py", "lib/polypal/sampler/strategies.py"]'
      tests="tests/test_algorithm1_reference.py tests/test_strategies.py tests/test_strategy_properties.py tests/test_registry.py";;
    kcenter)
      # the exact greedy, both paths (the one-pass version is live for small or non-contiguous inputs) and the
      # pruning; not run, for time (about 400 of its 970 mutants, 7-35 s each on this machine): the BLAS-layout
      # emulation (_OldLayout, _blas_threads: last-bit agreement of dot products), the rounding margin
      # (_rounding_bound) and the module's size/threshold constants (chunk sizes, when to prune).
      # Tests: test_kcenter.py (brute force, pruned = one-pass) and the Algorithm 1 reference (k-center with
      # candidates); the strategy tests reach k-center only through the one-pass path these already compare.
      modules='["lib/polypal/sampler/kcenter.py"]'
      skip_defs="lib/polypal/sampler/kcenter.py:_OldLayout,_blas_threads,_rounding_bound,<module>"
      tests="tests/test_kcenter.py tests/test_algorithm1_reference.py";;
    metrics)
      modules='["lib/polypal/learner/metrics.py"]'
      tests="tests/test_metrics_reference.py tests/test_uncertainty_metrics.py";;
    uncertainty)
      modules='["lib/polypal/sampler/uncertainty.py"]'
      tests="tests/test_metrics_reference.py tests/test_uncertainty_metrics.py";;
    data)
      # the fast reader tests only (no server; test_data.py's real-data test skips in the scratch copy)
      modules='["lib/polypal/data/images.py", "lib/polypal/data/masks.py", "lib/polypal/data/folders.py"]'
      tests="tests/test_data.py tests/test_data_readers.py";;
    *) echo "unknown group $group (sampler, kcenter, metrics, uncertainty, data)" >&2; exit 2;;
  esac
  # a shared machine: while $QUIET exists (someone measures latency), no group starts
  while [ -e "$QUIET" ]; do echo "waiting: $QUIET exists" >&2; sleep 30; done
  w=$WORK/$group
  if [ -n "${RESUME:-}" ]; then
    # continue, never restart: a session without its pristine source or its filters cannot be resumed safely
    if [ ! -f "$w/session.sqlite" ] || [ ! -d "$w/lib.orig" ] || [ ! -f "$w/filtered" ]; then
      echo "$group: no resumable session in $w (needs session.sqlite, lib.orig and the filtered mark);" \
           "run without RESUME to start it again" >&2
      exit 1
    fi
    rm -rf "$w/lib"
    cp -r "$w/lib.orig" "$w/lib"
    (
      cd "$w"
      "$CR_VENV/bin/cosmic-ray" baseline cosmic-ray.toml || { echo "$group: baseline failed in $w" >&2; exit 1; }
      "$CR_VENV/bin/cosmic-ray" exec cosmic-ray.toml session.sqlite
      "$CR_VENV/bin/cr-report" --surviving-only --show-diff session.sqlite > "$OUT/mutation-$group.txt" || true
    )
    tail -n 3 "$OUT/mutation-$group.txt"
    continue
  fi
  rm -rf "$w"
  mkdir -p "$w"
  cp -r lib tests pyproject.toml "$w/"
  find "$w" -name __pycache__ -prune -exec rm -rf {} +
  cp -r "$w/lib" "$w/lib.orig"  # pristine source, for RESUME and for scripts/mutation_report.py's rechecks
  cat > "$w/cosmic-ray.toml" <<EOF
[cosmic-ray]
module-path = $modules
timeout = 120.0
excluded-modules = []
test-command = "env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=lib PYTHONDONTWRITEBYTECODE=1 $PY -m pytest -x -q -p no:cacheprovider -p no:randomly --hypothesis-seed=0 $tests"

[cosmic-ray.distributor]
name = "local"

# Operator subset, to keep a run near an hour on one core: replacements into bitwise, shift, power,
# modulo and floor-division operators, and into identity comparisons (is / is not), are left out
# (on float arrays they crash at once, so they only cost time). Mutants of a '|' inside a type annotation
# (postponed by 'from __future__ import annotations', never evaluated) are skipped by the step below;
# a '|' in code (kcenter's 'rem | one') is mutated.
[cosmic-ray.filters.operators-filter]
exclude-operators = [
  "core/ReplaceBinaryOperator_.*_(BitOr|BitAnd|BitXor|LShift|RShift|Pow|Mod|FloorDiv)$",
  "core/ReplaceComparisonOperator_.*_(Is|IsNot)$",
]
EOF
  (
    cd "$w"
    "$CR_VENV/bin/cosmic-ray" init cosmic-ray.toml session.sqlite
    "$CR_VENV/bin/cr-filter-operators" session.sqlite cosmic-ray.toml
    SKIP_DEFS="$skip_defs" "$CR_VENV/bin/python" - session.sqlite <<'PYEOF'
# skip mutants that lie inside a type annotation (a postponed annotation is never evaluated), and those
# inside the top-level definitions named in SKIP_DEFS (module:name,name; "<module>" = outside every def)
import os
import ast, sys
from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult
spans = {}
def ann_spans(path):
    if path not in spans:
        tree, out = ast.parse(open(path).read()), []
        for node in ast.walk(tree):
            anns = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                anns = [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]
                        if x is not None and x.annotation is not None] + ([node.returns] if node.returns else [])
            elif isinstance(node, ast.AnnAssign):
                anns = [node.annotation]
            out += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in anns]
        spans[path] = out
    return spans[path]
skip = {}
if os.environ.get("SKIP_DEFS"):
    mod, names = os.environ["SKIP_DEFS"].split(":")
    skip[mod] = set(names.split(","))
def top_def(path, line):
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if first <= line <= node.end_lineno:
                return node.name
    return "<module>"
n = n_def = 0
with use_db(sys.argv[1]) as db:
    for item in list(db.pending_work_items):
        m = item.mutations[0]
        path = str(m.module_path)
        if any(a <= tuple(m.start_pos) and tuple(m.end_pos) <= b for a, b in ann_spans(path)):
            db.set_result(item.job_id, WorkResult(output="in a type annotation", worker_outcome=WorkerOutcome.SKIPPED))
            n += 1
        elif path in skip and top_def(path, m.start_pos[0]) in skip[path]:
            db.set_result(item.job_id, WorkResult(output="in a definition not run (SKIP_DEFS)",
                                                  worker_outcome=WorkerOutcome.SKIPPED))
            n_def += 1
    left = {}
    for item in db.pending_work_items:
        left[str(item.mutations[0].module_path)] = left.get(str(item.mutations[0].module_path), 0) + 1
print(f"{n} mutants in type annotations and {n_def} in definitions not run skipped; {sum(left.values())} to run:",
      ", ".join(f"{k} {v}" for k, v in sorted(left.items())))
PYEOF
    touch filtered  # init and filters done: the session can be resumed from here
    [ -n "${COUNT_ONLY:-}" ] && exit 0  # COUNT_ONLY=1: stop after counting (no baseline, no run)
    # the unmutated copy must pass, or every mutant would count as killed
    "$CR_VENV/bin/cosmic-ray" baseline cosmic-ray.toml
    "$CR_VENV/bin/cosmic-ray" exec cosmic-ray.toml session.sqlite
    "$CR_VENV/bin/cr-report" --surviving-only --show-diff session.sqlite > "$OUT/mutation-$group.txt" || true
  )
  [ -n "${COUNT_ONLY:-}" ] || tail -n 3 "$OUT/mutation-$group.txt"
done
