#!/bin/bash
# The long runs of issue 11 with the v3 cpu-lite recipe (results/calibration/README.md, "v3": a 1200-step
# floor, the endoscopy augmentation, EMA weights, 3 retries of a collapsed training), in today's venv, into
# new folders (the v2 folders keep the v2 recipe). Resumable: rerun it and every finished stage / ceiling
# seed is skipped. Pairs first (Random and Unc + TA-Coreset gamma 0.5, seed by seed), then the ceilings, then
# the other strategies. Two lanes, one per core, writing disjoint folders:
#   nohup nice -n 10 bash results/v3-queue.sh cvc > results/v3-queue-cvc.log 2>&1 &
#   nohup nice -n 10 bash results/v3-queue.sh kvasir > results/v3-queue-kvasir.log 2>&1 &
cd "$(dirname "$0")/.."
set -x
export OMP_NUM_THREADS=1
S=.venv/bin/polypal-sim
if [ "$1" = cvc ]; then
  # --max-steps 1500: the folder was started (2026-12-05 02:20) when v3's cap was 1500 steps; it was raised to
  # 3000 at 03:20 because it bound Kvasir-SEG's larger stages. No CVC stage (40 to 240 labels: 1200 steps) and
  # no ceiling (trained uncapped) reaches either cap, so every CVC training is the same under both.
  A="--dataset cvc --data ../shared/datasets/cvc-clinicdb --profile cpu-lite --max-steps 1500 --threads 1 --out results/cvc-v3"
  OTHERS=uncertainty,ta_coreset,pca_coreset,vaal,unc_ta_coreset:mean:0.25,unc_ta_coreset:mean:0.75
else
  A="--dataset kvasir --data ../shared/datasets/kvasir-seg --profile cpu-lite --threads 1 --out results/kvasir-v3"
  OTHERS=uncertainty,ta_coreset,pca_coreset,vaal
fi
$S ceiling $A --seeds 0
for seed in 0 1 2 3 4; do
  $S run $A --strategies random,unc_ta_coreset --seeds $seed
done
$S ceiling $A --seeds 1,2
$S run $A --strategies $OTHERS --seeds 0,1,2
echo "V3 $1 DONE"
