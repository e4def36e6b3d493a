#!/bin/bash
# Session 15 (2026-12-06): run12.sh's ensemble check again at 160 CVC labels (stage 3 of Random's five runs in
# results/cvc-v3, 1200 steps as at 80), where the stage-to-stage steps still spread 2.3-2.5 points
# (drop-noise.md). Same four trainings per set: the recorded training seed (seed*1000+3) and 11, 12, 13.
# Started by a waiter once run12.sh's lane had finished. Output into the same build/ensemble-noise folder;
#   .venv/bin/python benchmarks/ensemble_noise.py analyse build/ensemble-noise --results results/cvc-v3 \
#       --data ../shared/datasets/cvc-clinicdb > results/calibration/ensemble-noise.txt
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
for s in 0 1 2 3 4; do
    if [ "$1" = A ]; then T="$((s * 1000 + 3)),11"; else T="12,13"; fi
    echo "== set: random seed $s stage 3, training seeds $T"
    .venv/bin/python benchmarks/ensemble_noise.py train results/cvc-v3 random $s 3 --train-seeds $T \
        --data ../shared/datasets/cvc-clinicdb --out build/ensemble-noise
done >> build/ensemble-noise-$1.log 2>&1
