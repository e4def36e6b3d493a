#!/bin/bash
# The long runs of issue 11 with the calibrated cpu-lite recipe (results/calibration/), one training
# process at a time, 1 torch thread. Resumable: rerun this script and every finished stage / ceiling
# seed is skipped (polypal-sim appends each finished stage to OUT/runs/*.jsonl).
#   nohup bash results/v2-queue.sh > results/v2-queue.log 2>&1 &
# A second lane (results/v2-queue-b.sh) runs Kvasir seeds 3-4 and the Kvasir ceilings 1-2 beside it, on the
# machine's second core; the two lanes write disjoint run files. Lane B also runs Kvasir's other strategies.
set -x
export OMP_NUM_THREADS=1
S=.venv/bin/polypal-sim
# cpu-lite is the v3 recipe since 2026-12-05; these flags keep v2's (added then; a rerun resumes, as before)
V2="--min-steps 600 --max-steps 1500 --augment flips --collapse-retries 0"
V="--dataset cvc --data ../shared/datasets/cvc-clinicdb --profile cpu-lite $V2 --threads 1 --out results/cvc-v2"
K="--dataset kvasir --data ../shared/datasets/kvasir-seg --profile cpu-lite $V2 --threads 1 --out results/kvasir-v2"
$S ceiling $V --seeds 0
$S run $V --strategies random,unc_ta_coreset --seeds 0,1,2
$S run $V --strategies random,unc_ta_coreset --seeds 3,4
$S ceiling $K --seeds 0
$S run $K --strategies random,unc_ta_coreset --seeds 0,1,2
$S ceiling $V --seeds 1,2
$S run $V --strategies uncertainty,ta_coreset,pca_coreset,vaal,unc_ta_coreset:mean:0.25,unc_ta_coreset:mean:0.75 --seeds 0,1,2
echo QUEUE DONE
