#!/bin/bash
# Issue 16's evidence: the CVC protocol with near-duplicate grouping, calibrated cpu-lite recipe, the same
# split as results/cvc-v2 (its "without grouping" twin). Two processes of one thread each (a 2-core machine),
# disjoint (seed, strategy) jobs so they never write the same run file. Resumable: rerun to continue.
#   nohup bash results/video/grouped-queue.sh > results/video/grouped-queue.log 2>&1 &
set -x
export OMP_NUM_THREADS=1
mkdir -p results/video/cvc-grouped
[ -f results/video/cvc-grouped/split.json ] || cp results/cvc-v2/split.json results/video/cvc-grouped/split.json
# cpu-lite is the v3 recipe since 2026-12-05; these flags keep the v2 recipe of this folder and of its twin
V2="--min-steps 600 --max-steps 1500 --augment flips --collapse-retries 0"
G="--dataset cvc --data ../shared/datasets/cvc-clinicdb --profile cpu-lite $V2 --threads 1 --video-groups results/video/cvc_groups.json --out results/video/cvc-grouped"
S=.venv/bin/polypal-sim
( $S run $G --strategies random,unc_ta_coreset --seeds 0 && $S run $G --strategies random --seeds 2 ) &
( $S run $G --strategies random,unc_ta_coreset --seeds 1 && $S run $G --strategies unc_ta_coreset --seeds 2 ) &
wait
echo GROUPED DONE
