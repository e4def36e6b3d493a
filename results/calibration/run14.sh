#!/bin/bash
# Session 15 (2026-12-06): the equal-compute rival of a two-model ensemble at 80 CVC labels: one training of
# 2400 steps (min_steps=max_steps=2400) instead of two of 1200, on the five labeled sets of run12.sh, training
# seed 11 (so its first steps follow run12's seed-11 training). `ensemble_noise.py analyse` sets it against
# the 1200-step training of the same seed and against the set's ensembles. Started by a waiter after run13.sh.
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
if [ "$1" = A ]; then SETS="0 1 2"; else SETS="3 4"; fi
for s in $SETS; do
    echo "== set: random seed $s stage 1, 2400 steps, training seed 11"
    .venv/bin/python benchmarks/ensemble_noise.py train results/cvc-v3 random $s 1 --train-seeds 11 \
        --set min_steps=2400 --set max_steps=2400 --tag s2400 \
        --data ../shared/datasets/cvc-clinicdb --out build/ensemble-noise
done >> build/ensemble-noise-$1.log 2>&1
