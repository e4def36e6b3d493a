#!/bin/bash
# After the queue (2026-12-04, session 7): two more seeds (3, 4) for the two rows that the 3-seed reports
# singled out: CVC's gamma 0.75 (ahead on 3 of 3, t interval holding 0) and Kvasir's PCA-Coreset (behind
# on 3 of 3 in Dice). Chosen after looking at the 3-seed results, so the 5-seed figures are a follow-up
# check, not the pre-set comparison (that stays Unc + TA-Coreset at gamma 0.5). Random has seeds 0-4.
# Two lanes, one per core:  nohup nice -n 10 bash results/v2-extra.sh A > results/v2-extra-A.log 2>&1 &
#                           nohup nice -n 10 bash results/v2-extra.sh B > results/v2-extra-B.log 2>&1 &
set -x
export OMP_NUM_THREADS=1
S=.venv/bin/polypal-sim
# cpu-lite is the v3 recipe since 2026-12-05; these flags keep v2's (added then; a rerun resumes, as before)
V2="--min-steps 600 --max-steps 1500 --augment flips --collapse-retries 0"
V="--dataset cvc --data ../shared/datasets/cvc-clinicdb --profile cpu-lite $V2 --threads 1 --out results/cvc-v2"
K="--dataset kvasir --data ../shared/datasets/kvasir-seg --profile cpu-lite $V2 --threads 1 --out results/kvasir-v2"
seed=3; [ "$1" = B ] && seed=4
$S run $V --strategies unc_ta_coreset:mean:0.75 --seeds $seed
$S run $K --strategies pca_coreset --seeds $seed
echo "EXTRA $1 DONE"
