#!/bin/bash
# Calibration, round 2 (sequential, 1 torch thread). Run from the repo root.
# (round 1, run1.sh, was stopped after `old` x4 and `cos-endo` x2 on CVC: cos-endo was clearly worse)
set -x
export OMP_NUM_THREADS=1
PY=.venv/bin/python
C="$PY benchmarks/calibrate_recipe.py --threads 1"
R=results/calibration/raw
$C --dataset cvc --data ../shared/datasets/cvc-clinicdb --n 80 --seeds 0,1,2,3 --config cos --out $R/cvc-n80.jsonl
$C --dataset kvasir --data ../shared/datasets/kvasir-seg --n 100 --seeds 0,1,2 --config old --out $R/kvasir-n100.jsonl
$C --dataset kvasir --data ../shared/datasets/kvasir-seg --n 100 --seeds 0,1,2 --config cos --out $R/kvasir-n100.jsonl
$C --dataset cvc --data ../shared/datasets/cvc-clinicdb --n 80 --seeds 0,1,2,3 --config cos-rot --out $R/cvc-n80.jsonl
$C --dataset kvasir --data ../shared/datasets/kvasir-seg --n 100 --seeds 0,1,2 --config cos-rot --out $R/kvasir-n100.jsonl
echo DONE
