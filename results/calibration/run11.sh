#!/bin/bash
# Session 14 (2026-12-06): how often the candidate fit floor (profile.fit_floor 0.55, collapse-replay.md "The
# threshold tested") fires over whole CVC runs, and whether more often for Unc + TA-Coreset than for Random.
# The v3 CVC recipe (cpu-lite --max-steps 1500, seeding shared, as results/cvc-v3) plus --fit-floor 0.55, seeds
# 1-2 (seed 0 of cvc-v3's pair replays with a small difference). Same split, initial sets and training seeds
# as results/cvc-v3, so each run follows its v3 twin exactly until the floor first fires; every stage record
# keeps fit_dice. Resumable: rerun the same lane to continue.
#   nohup nice -n 10 bash results/calibration/run11.sh A > /dev/null 2>&1 &   (then B, once run.json exists)
# (The two .log files, tqdm progress bars only, were not kept; the records hold fit_dice and retries.)
cd "$(dirname "$0")/../.."
S=random; [ "$1" = B ] && S=unc_ta_coreset
.venv/bin/polypal-sim run --dataset cvc --data ../shared/datasets/cvc-clinicdb --profile cpu-lite --max-steps 1500 \
    --threads 1 --seeding shared --fit-floor 0.55 --out results/calibration/fit-floor-cvc --strategies $S --seeds 1,2 \
    >> results/calibration/fit-floor-cvc-$1.log 2>&1
