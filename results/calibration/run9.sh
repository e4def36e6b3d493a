#!/bin/bash
# Session 14 (2026-12-06). Tests a threshold written down before these replays: in collapse-replay.md (commit
# 03f2f72, from four CVC v3 stages) "retry when the labeled-set Dice is under about 0.55" caught the two large
# drops (0.41, 0.51) and spared a 4.2-point drop and a healthy stage (0.68, 0.70). The prediction tested here:
# a stage whose returned (EMA) model scores under 0.55 Dice on its own labeled frames is a failed training,
# and healthy stages score above it. Replayed here, each a plain replay of the recorded training:
#  - every other stage of results/{cvc,kvasir}-v3 that fell more than 3 paper-mIoU points from the stage
#    before it (6 on CVC, 1 on Kvasir; the other 3 CVC drops are in collapse-replay.md);
#  - a random sample of the stages that did not (run9-sample.py, random.seed(14); 7 of 131 on CVC, 3 of 119 on Kvasir; stage
#    1 on, the 4 already replayed left out).
# Lane A: the drops, then one Kvasir healthy stage; lane B: the other healthy stages.
#   nohup nice -n 10 bash results/calibration/run9.sh A > /dev/null 2>&1 &
#   nohup nice -n 10 bash results/calibration/run9.sh B > /dev/null 2>&1 &
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
OUT=results/calibration/labeled-dice-$1.txt
one() {  # $1 dataset folder, $2 run label, $3 seed, $4 stage, $5 data folder
  cmd=".venv/bin/python benchmarks/replay_stage.py results/$1-v3 $2 $3 $4 --data ../shared/datasets/$5"
  echo "\$ OMP_NUM_THREADS=1 $cmd" >> $OUT
  $cmd >> $OUT 2>&1
}
echo "# run9.sh $1 started $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
if [ "$1" = A ]; then
  one cvc pca_coreset 1 1 cvc-clinicdb
  one cvc pca_coreset 2 3 cvc-clinicdb
  one cvc unc_ta_coreset@g0.5 1 1 cvc-clinicdb
  one cvc unc_ta_coreset@g0.75 0 4 cvc-clinicdb
  one cvc unc_ta_coreset@g0.75 1 4 cvc-clinicdb
  one cvc uncertainty 1 1 cvc-clinicdb
  one kvasir uncertainty 1 1 kvasir-seg
  one kvasir random 4 5 kvasir-seg
else
  one cvc random 2 5 cvc-clinicdb
  one cvc unc_ta_coreset@g0.25 2 2 cvc-clinicdb
  one cvc unc_ta_coreset@g0.5 0 3 cvc-clinicdb
  one cvc unc_ta_coreset@g0.25 2 4 cvc-clinicdb
  one cvc unc_ta_coreset@g0.5 1 4 cvc-clinicdb
  one cvc random 1 1 cvc-clinicdb
  one cvc vaal 0 1 cvc-clinicdb
  one kvasir ta_coreset 4 1 kvasir-seg
  one kvasir uncertainty 0 1 kvasir-seg
fi
echo "# run9.sh $1 done $(date -u '+%Y-%m-%d %H:%M UTC')" >> $OUT
