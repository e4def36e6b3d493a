#!/bin/bash
# Issue 16's evidence: the CVC protocol with near-duplicate grouping, calibrated cpu-lite recipe, the same
# split as results/cvc-v2 (its "without grouping" twin). Resumable: rerun to continue.
#   nohup bash results/video/grouped-queue.sh > results/video/grouped-queue.log 2>&1 &
set -x
export OMP_NUM_THREADS=1
mkdir -p results/video/cvc-grouped
[ -f results/video/cvc-grouped/split.json ] || cp results/cvc-v2/split.json results/video/cvc-grouped/split.json
.venv/bin/polypal-sim run --dataset cvc --data ../shared/datasets/cvc-clinicdb --profile cpu-lite --threads 1 \
  --strategies random,unc_ta_coreset --seeds 0,1,2 --video-groups results/video/cvc_groups.json \
  --out results/video/cvc-grouped
echo GROUPED DONE
