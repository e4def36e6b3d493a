#!/bin/bash
# Session 14 (2026-12-06), after run9.sh: the two CVC v3 stages whose model fits its own labeled frames under
# 0.55 (the partial collapse, Unc + TA seed 3 at 240 labels, 0.406; Uncertainty seed 2 at 120 labels, 0.513),
# retrained with the candidate guard (collapse retries 3, fit_floor 0.55) from the recorded training seed:
# does a retry land on the run's curve? (run9.sh found no other stage under 0.55, so nowhere else would it fire.)
#   nohup nice -n 10 bash results/calibration/run10.sh A > /dev/null 2>&1 &   (and B)
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
OUT=results/calibration/fit-floor-$1.txt
one() {
  cmd=".venv/bin/python benchmarks/replay_stage.py results/cvc-v3 $1 $2 $3 --data ../shared/datasets/cvc-clinicdb --collapse-retries 3 --fit-floor 0.55 --guard-only"
  echo "\$ OMP_NUM_THREADS=1 $cmd" >> $OUT
  $cmd >> $OUT 2>&1
}
echo "# run10.sh $1 started $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
if [ "$1" = A ]; then one unc_ta_coreset@g0.5 3 5; else one uncertainty 2 2; fi
echo "# run10.sh $1 done $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
