#!/bin/bash
# Calibration, round 3 (sequential, 1 torch thread). Run from the repo root.
# run2.sh was stopped after `cos` x4 on CVC (cosine at 600 steps: worse than the old constant lr).
set -x
export OMP_NUM_THREADS=1
while kill -0 11022 2>/dev/null; do sleep 5; done   # wait for run2's last training
PY=.venv/bin/python
C="$PY benchmarks/calibrate_recipe.py --threads 1"
R=results/calibration/raw
# the old recipe plus an EMA of its weights (EMA does not change training: best_val/last must equal `old`)
$C --dataset cvc --data ../shared/datasets/cvc-clinicdb --n 80 --seeds 0,1,2,3 --config old+ema=0.99 --out $R/cvc-n80.jsonl
# the last CVC stage (240 labels) with the growing budget's 1200 steps: constant lr vs cosine, every selection rule
$C --dataset cvc --data ../shared/datasets/cvc-clinicdb --n 240 --seeds 0,1 --config old+ema=0.99,min_steps=1200,max_steps=1200 --out $R/cvc-n240.jsonl
$C --dataset cvc --data ../shared/datasets/cvc-clinicdb --n 240 --seeds 0,1 --config cos+min_steps=1200,max_steps=1200 --out $R/cvc-n240.jsonl
$C --dataset kvasir --data ../shared/datasets/kvasir-seg --n 100 --seeds 0,1,2 --config old+ema=0.99 --out $R/kvasir-n100.jsonl
echo DONE
