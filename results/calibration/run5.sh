#!/bin/bash
# After run4.sh (2026-12-04, session 6): the 1200-step floor on Kvasir-SEG at 100 labels (stage 0 of
# results/kvasir-v2, 600 steps recorded), then more steps at 240 CVC labels (stage 5, 1200 recorded ->
# 1800), each paired with the recorded run (same labeled set, training seed, initialisation, batch order).
# Output: results/calibration/floor-1200.txt (appended).
cd "$(dirname "$0")/../.."
while pgrep -f "results/calibration/run4.sh" > /dev/null; do sleep 30; done
export OMP_NUM_THREADS=1
OUT=results/calibration/floor-1200.txt
echo "# run5.sh started $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
for seed in 0 1 2 3 4; do
  cmd=".venv/bin/python benchmarks/replay_stage.py results/kvasir-v2 random $seed 0 --data ../shared/datasets/kvasir-seg --train-seeds $((seed * 1000)) --set min_steps=1200"
  echo "\$ OMP_NUM_THREADS=1 $cmd" >> $OUT
  $cmd >> $OUT 2>&1
done
for seed in 0 1 2 3 4; do
  cmd=".venv/bin/python benchmarks/replay_stage.py results/cvc-v2 random $seed 5 --data ../shared/datasets/cvc-clinicdb --train-seeds $((seed * 1000 + 5)) --set min_steps=1800 --set max_steps=1800"
  echo "\$ OMP_NUM_THREADS=1 $cmd" >> $OUT
  $cmd >> $OUT 2>&1
done
echo "# run5.sh done $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
