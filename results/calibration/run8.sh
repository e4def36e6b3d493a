#!/bin/bash
# Session 8 (2026-12-05). Two things, on the two cells where the constant-lr 1200-step floor split the
# datasets (Kvasir-SEG 100 labels = stage 0 of Random; CVC-ClinicDB 120 labels = stage 2), seeds 0-4,
# each with the recorded training seed (seed*1000+stage):
#  base  the recorded recipe itself, retrained in today's venv. floor-1200.txt, run6 and run7 paired
#        today's candidate trainings with records made on 2026-11-28 in the venv before the rebuild
#        (env-drift.md), so their differences hold any shift between the two venvs. These give pairs
#        within one venv, and 10 more measurements of that shift.
#  endo  v3 candidate: the 1200-step floor at constant lr with the endoscopy augmentation (MONAI: flips,
#        90-degree rotations, random scale/shift, colour jitter): more steps without over-fitting the
#        100 Kvasir frames was the idea; never measured with the constant lr.
#  rot   v3 candidate: the 1200-step floor with flips and 90-degree rotations only.
# Lane A: base then rot; lane B: endo.   nohup nice -n 10 bash results/calibration/run8.sh A > /dev/null 2>&1 &
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
one() {  # $1 config, $2 dataset, $3 seed
  local OUT=results/calibration/v3-$1.txt
  local ARGS="--train-seeds $(($3 * 1000 + $4))"             # a candidate: same training seed as the record
  [ "$1" = base ] && ARGS=""                                  # base: plain replay of the recorded training
  [ "$1" = endo ] && ARGS="$ARGS --set min_steps=1200 --set augment=endo"
  [ "$1" = rot ] && ARGS="$ARGS --set min_steps=1200 --set augment=rot"
  cmd=".venv/bin/python benchmarks/replay_stage.py results/$2-v2 random $3 $4 --data ../shared/datasets/$5 $ARGS"
  echo "\$ OMP_NUM_THREADS=1 $cmd" >> $OUT
  $cmd >> $OUT 2>&1
}
lane() {
  echo "# run8.sh $1 started $(date -u '+%Y-%m-%d %H:%M UTC')" >> results/calibration/v3-$1.txt
  for seed in 0 1 2 3 4; do one $1 kvasir $seed 0 kvasir-seg; done
  for seed in 0 1 2 3 4; do one $1 cvc $seed 2 cvc-clinicdb; done
  echo "# run8.sh $1 done $(date -u '+%Y-%m-%d %H:%M UTC')" >> results/calibration/v3-$1.txt
}
if [ "$1" = A ]; then lane base; lane rot; else lane endo; fi
