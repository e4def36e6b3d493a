#!/bin/bash
# Session 15 (2026-12-06): run14.sh again with training seed 12 (a second 2400-step training per set, so the
# 2400-step recipe has a training-only std of its own, 5 df). Started by a waiter after run14.sh.
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
if [ "$1" = A ]; then SETS="3 4"; else SETS="0 1 2"; fi  # A had the longer share of run14
for s in $SETS; do
    echo "== set: random seed $s stage 1, 2400 steps, training seed 12"
    .venv/bin/python benchmarks/ensemble_noise.py train results/cvc-v3 random $s 1 --train-seeds 12 \
        --set min_steps=2400 --set max_steps=2400 --tag s2400 \
        --data ../shared/datasets/cvc-clinicdb --out build/ensemble-noise
done >> build/ensemble-noise-$1.log 2>&1
