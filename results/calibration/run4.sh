#!/bin/bash
# A 1200-step floor at other CVC labeled-set sizes (2026-12-04, session 6): for Random seeds 0-4 of
# results/cvc-v2, stages 0 (40 labels, 600 steps recorded), 2 (120 labels, 600) and 3 (160 labels, 800),
# retrain the recorded labeled set with the recorded training seed (seed*1000+stage) and min_steps=1200.
# Same initialisation and batch order as the recorded run, so each pair measures the extra steps alone.
# Output: results/calibration/floor-1200.txt (appended). Niced beside the two queue lanes.
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
OUT=results/calibration/floor-1200.txt
for stage in 0 3 2; do
  for seed in 0 1 2 3 4; do
    ts=$((seed * 1000 + stage))
    cmd=".venv/bin/python benchmarks/replay_stage.py results/cvc-v2 random $seed $stage --data ../shared/datasets/cvc-clinicdb --train-seeds $ts --set min_steps=1200"
    echo "\$ OMP_NUM_THREADS=1 $cmd" >> $OUT
    $cmd >> $OUT 2>&1
  done
done
echo "# done $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
