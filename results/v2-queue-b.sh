#!/bin/bash
# Second lane of the issue-11 queue (see results/v2-queue.sh): runs disjoint from lane A. Resumable.
#   nohup bash results/v2-queue-b.sh > results/v2-queue-b.log 2>&1 &
set -x
export OMP_NUM_THREADS=1
S=.venv/bin/polypal-sim
# cpu-lite is the v3 recipe since 2026-12-05; these flags keep v2's (added then; a rerun resumes, as before)
V2="--min-steps 600 --max-steps 1500 --augment flips --collapse-retries 0"
K="--dataset kvasir --data ../shared/datasets/kvasir-seg --profile cpu-lite $V2 --threads 1 --out results/kvasir-v2"
$S run $K --strategies random,unc_ta_coreset --seeds 3,4
$S ceiling $K --seeds 1,2
$S run $K --strategies uncertainty,ta_coreset,pca_coreset,vaal --seeds 0,1,2
echo LANE B DONE
