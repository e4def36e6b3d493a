#!/bin/bash
# Calibration, round 1 (sequential, 1 torch thread). Run from the repo root.
set -x
export OMP_NUM_THREADS=1
PY=.venv/bin/python
C="$PY benchmarks/calibrate_recipe.py --threads 1"
R=results/calibration/raw
$C --dataset cvc --data ../shared/datasets/cvc-clinicdb --n 80 --seeds 0,1,2,3 --config old --out $R/cvc-n80.jsonl
$C --dataset cvc --data ../shared/datasets/cvc-clinicdb --n 80 --seeds 0,1,2,3 --config cos-endo --out $R/cvc-n80.jsonl
$C --dataset cvc --data ../shared/datasets/cvc-clinicdb --n 80 --seeds 0,1,2,3 --config cos --out $R/cvc-n80.jsonl
$C --dataset kvasir --data ../shared/datasets/kvasir-seg --n 100 --seeds 0,1,2 --config old --out $R/kvasir-n100.jsonl
$C --dataset kvasir --data ../shared/datasets/kvasir-seg --n 100 --seeds 0,1,2 --config cos-endo --out $R/kvasir-n100.jsonl
echo DONE
