#!/bin/bash
# Session 7 (2026-12-04): the v3 candidate the calibration README names, "a longer budget with a decaying
# learning rate": a 1200-step floor with linear warm-up (5%) and cosine decay to 2% of lr, on the two
# cells where the constant-lr 1200-step floor split the datasets (Kvasir-SEG at 100 labels: -2.23 mIoU;
# CVC-ClinicDB at 120 labels: +4.19), paired with the recorded 600-step trainings (same labeled set,
# training seed, initialisation and batch order; floor-1200.txt has the constant-lr pairs).
# Lane A: Kvasir, lane B: CVC; each waits for its lane of v2-extra.sh.
#   nohup nice -n 10 bash results/calibration/run7.sh A > /dev/null 2>&1 &   (and B)
cd "$(dirname "$0")/../.."
while pgrep -f "results/v2-extra.sh $1" > /dev/null; do sleep 30; done
export OMP_NUM_THREADS=1
OUT=results/calibration/floor-cosine-$1.txt
SET="--set min_steps=1200 --set schedule=cosine --set warmup=0.05 --set min_lr=0.02"
echo "# run7.sh $1 started $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
for seed in 0 1 2 3 4; do
  if [ "$1" = A ]; then
    cmd=".venv/bin/python benchmarks/replay_stage.py results/kvasir-v2 random $seed 0 --data ../shared/datasets/kvasir-seg --train-seeds $((seed * 1000)) $SET"
  else
    cmd=".venv/bin/python benchmarks/replay_stage.py results/cvc-v2 random $seed 2 --data ../shared/datasets/cvc-clinicdb --train-seeds $((seed * 1000 + 2)) $SET"
  fi
  echo "\$ OMP_NUM_THREADS=1 $cmd" >> $OUT
  $cmd >> $OUT 2>&1
done
echo "# run7.sh $1 done $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
