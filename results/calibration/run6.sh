#!/bin/bash
# Session 7 (2026-12-04): the rest of run5.sh's CVC part, which session 6 stopped after 2 of 5 sets
# (its seed-2 command, the last line before this header in floor-1200.txt, was cut off without output).
# 1800 steps at 240 CVC labels (stage 5 of results/cvc-v2, 1200 recorded), paired with the recorded run.
# Run beside the v2 queue: nohup nice -n 10 bash results/calibration/run6.sh > /dev/null 2>&1 &
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
OUT=results/calibration/floor-1200.txt
echo "# run6.sh started $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
for seed in 2 3 4; do
  cmd=".venv/bin/python benchmarks/replay_stage.py results/cvc-v2 random $seed 5 --data ../shared/datasets/cvc-clinicdb --train-seeds $((seed * 1000 + 5)) --set min_steps=1800 --set max_steps=1800"
  echo "\$ OMP_NUM_THREADS=1 $cmd" >> $OUT
  $cmd >> $OUT 2>&1
done
echo "# run6.sh done $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
