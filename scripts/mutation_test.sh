#!/usr/bin/env bash
# Mutation testing of the sampler (strategies.py, kcenter.py) and the metrics (metrics.py, uncertainty.py)
# with cosmic-ray, in a scratch copy (cosmic-ray edits files in place: never the working tree), one core.
#
# Usage: bash scripts/mutation_test.sh [group ...]     groups: sampler metrics uncertainty (default: all)
# Env:   OUT=results/test-audit (reports), WORK=/tmp/polypal-mutation (scratch), CR_VENV=/tmp/crvenv
#        (a separate venv for cosmic-ray, so the project's .venv is not changed)
# Output: $OUT/mutation-<group>.txt (cr-report: every surviving mutant with its diff, and the totals);
#         then scripts/mutation_report.py writes $OUT/mutation.md.
# Takes 7-13 s per mutant on one core of this 2-core machine (about 320 sampler, 50 metrics, 120 uncertainty
# mutants after the operator filter below): 1 h 45 min in all.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/results/test-audit}
WORK=${WORK:-/tmp/polypal-mutation}
CR_VENV=${CR_VENV:-/tmp/crvenv}
PY=$REPO/.venv/bin/python
GROUPS_=("$@")
[ ${#GROUPS_[@]} -eq 0 ] && GROUPS_=(sampler metrics uncertainty)

if [ ! -x "$CR_VENV/bin/cosmic-ray" ]; then
  python3 -m venv "$CR_VENV"
  "$CR_VENV/bin/python" -m pip install --quiet "cosmic-ray==8.7.0"
fi
mkdir -p "$OUT"

for group in "${GROUPS_[@]}"; do
  case $group in
    sampler)
      modules='["lib/polypal/sampler/selection.py", "lib/polypal/sampler/registry.py", "lib/polypal/sampler/strategies.py", "lib/polypal/sampler/kcenter.py"]'
      tests="tests/test_algorithm1_reference.py tests/test_strategies.py tests/test_kcenter.py tests/test_strategy_properties.py tests/test_registry.py";;
    metrics)
      modules='["lib/polypal/learner/metrics.py"]'
      tests="tests/test_uncertainty_metrics.py tests/test_metrics_reference.py";;
    uncertainty)
      modules='["lib/polypal/sampler/uncertainty.py"]'
      tests="tests/test_uncertainty_metrics.py tests/test_metrics_reference.py";;
    *) echo "unknown group $group (sampler, metrics, uncertainty)" >&2; exit 2;;
  esac
  w=$WORK/$group
  rm -rf "$w"
  mkdir -p "$w"
  cp -r lib tests pyproject.toml "$w/"
  find "$w" -name __pycache__ -prune -exec rm -rf {} +
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
# (on float arrays they crash at once, so they only cost time); BitOr mutants are left out because
# every '|' in these modules is a type annotation (postponed by 'from __future__ import annotations').
[cosmic-ray.filters.operators-filter]
exclude-operators = [
  "core/ReplaceBinaryOperator_.*_(BitOr|BitAnd|BitXor|LShift|RShift|Pow|Mod|FloorDiv)$",
  "core/ReplaceBinaryOperator_BitOr_.*",
  "core/ReplaceComparisonOperator_.*_(Is|IsNot)$",
]
EOF
  (
    cd "$w"
    "$CR_VENV/bin/cosmic-ray" init cosmic-ray.toml session.sqlite
    "$CR_VENV/bin/cr-filter-operators" session.sqlite cosmic-ray.toml
    # the unmutated copy must pass, or every mutant would count as killed
    "$CR_VENV/bin/cosmic-ray" baseline cosmic-ray.toml
    "$CR_VENV/bin/cosmic-ray" exec cosmic-ray.toml session.sqlite
    "$CR_VENV/bin/cr-report" --surviving-only --show-diff session.sqlite > "$OUT/mutation-$group.txt" || true
  )
  tail -n 3 "$OUT/mutation-$group.txt"
done
