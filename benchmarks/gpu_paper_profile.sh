#!/usr/bin/env bash
# Kvasir-SEG at the `paper` profile (256 px, 100 epochs per stage) on a GPU device machine, in one call.
#
# Two steps (read shared/docs/gpu-notes.md first):
#   1. here, once:   bash benchmarks/gpu_paper_profile.sh prepare
#      writes build/gpu/ (git-ignored, about 30 MB): Kvasir-SEG resized once to 256x256 with polypal.data's
#      own resize (images as JPEG quality 95, masks as PNG 0/255: the loader's resize is then the identity),
#      the sessile-test split file, and the monai wheel (the device has torch but no monai).
#   2. device call:  run(command="bash benchmarks/gpu_paper_profile.sh run", carry=["build/gpu"], timeout_s=540)
#      runs random and unc_ta_coreset (gamma 0.5) at seeds SEEDS (default 0,1) as parallel processes,
#      each stopped by `timeout` after BUDGET s (default 420) so that the tar still runs; every finished stage
#      is already appended to results/kvasir-paper-gpu/runs/*.jsonl. $OUT/kvasir-paper-gpu.tar.gz comes back:
#      tar xzf it at the repo root and commit. The runs RESUME: results/ travels with the tree, so the next
#      lease continues from the committed stages (selection is recorded; no checkpoint is needed).
#   CPU check of the whole path (tiny; the device's `python` is the one on PATH, so put the venv first):
#      PATH=$PWD/.venv/bin:$PATH PROFILE=smoke SEEDS=0 BUDGET=120 OUT=/tmp/gpu-out \
#      OUTDIR=/tmp/gpu-smoke bash benchmarks/gpu_paper_profile.sh run
#   (checked 2026-12-06 on this CPU: smoke path 33 s end to end with the tar; the paper profile with
#   BUDGET=45 reads the carried frames and the copied split and starts stage 0's 1300 steps.)
#
# Differences from the CPU runs, written into the results folder: the frames were re-encoded once as
# JPEG q95 at 256 px (the CPU path decodes the original JPEGs), and GPU training is not bit-reproducible.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=build/gpu
case "${1:-}" in
prepare)
  PY=.venv/bin/python
  DATA=${DATA:-../shared/datasets/kvasir-seg}
  SPLITS=${SPLITS:-../shared/datasets/splits}
  [ -d "$DATA/images" ] || { echo "no Kvasir-SEG at $DATA (set DATA=)" >&2; exit 2; }
  rm -rf "$GPU" && mkdir -p "$GPU/kvasir-256/images" "$GPU/kvasir-256/masks" "$GPU/splits" "$GPU/whl"
  cp "$SPLITS/kvasir_sessile.txt" "$GPU/splits/"
  "$PY" - "$DATA" "$GPU/kvasir-256" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
from polypal.data.folders import find_pairs, load_frame
from polypal.vocab import frame_id

src, dst = sys.argv[1], Path(sys.argv[2])
pairs = find_pairs(src)
for img, mask in pairs:
    im, m, _ = load_frame(img, mask, 256)
    Image.fromarray(im).save(dst / "images" / f"{frame_id(img)}.jpg", quality=95)
    Image.fromarray(m.astype("uint8") * 255).save(dst / "masks" / f"{frame_id(img)}.png")
print(f"{len(pairs)} frames resized to 256 into {dst}")
EOF
  MONAI=$("$PY" -c "import monai; print(monai.__version__)")
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$GPU/whl" "monai==$MONAI"
  du -sh "$GPU"
  ;;
run)
  OUT=${OUT:?set OUT (the device machine sets it)}
  PROFILE=${PROFILE:-paper}
  SEEDS=${SEEDS:-0,1}
  STRATEGIES=${STRATEGIES:-random,unc_ta_coreset}
  BUDGET=${BUDGET:-420}
  OUTDIR=${OUTDIR:-results/kvasir-paper-gpu}
  [ -d "$GPU/kvasir-256/images" ] || { echo "$GPU missing: run 'prepare' here and carry build/gpu" >&2; exit 2; }
  SITE=/tmp/polypal-site
  if ! python -c "import monai" 2>/dev/null; then
    python -m pip install --quiet --no-index --no-deps --target "$SITE" "$GPU"/whl/*.whl
  fi
  export PYTHONPATH=$SITE:$PWD/lib${PYTHONPATH:+:$PYTHONPATH}
  mkdir -p "$OUTDIR/runs" "$OUT"
  # the CPU runs' split (results/kvasir-v2): same pool, validation and sessile test frames
  [ -f "$OUTDIR/split.json" ] || [ "$PROFILE" = smoke ] || cp results/kvasir-v2/split.json "$OUTDIR/split.json"
  python - "$OUTDIR/device.txt" <<'EOF'
import sys, time, platform, torch
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA device)"
with open(sys.argv[1], "a") as f:
    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {dev}; torch {torch.__version__}; python {platform.python_version()}\n")
print(dev)
EOF
  t0=$(date +%s)
  pids=()
  IFS=, read -ra seeds <<< "$SEEDS"
  IFS=, read -ra strats <<< "$STRATEGIES"
  for seed in "${seeds[@]}"; do
    for s in "${strats[@]}"; do
      # one process per (strategy, seed); OMP 2 threads each for the CPU-side work (data, k-center)
      OMP_NUM_THREADS=2 timeout -s INT -k 30 "$BUDGET" python -m polypal.experiments.cli run --dataset kvasir \
        --data "$GPU/kvasir-256" --splits "$GPU/splits" --profile "$PROFILE" --threads 2 \
        --strategies "$s" --seeds "$seed" --out "$OUTDIR" > "$OUT/log-$s-$seed.txt" 2>&1 &
      pids+=($!)
    done
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  echo "ran $(( $(date +%s) - t0 )) s; stages now:"
  for f in "$OUTDIR"/runs/*.jsonl; do [ -f "$f" ] && echo "  $(basename "$f"): $(wc -l < "$f") stages"; done
  tail -n 3 "$OUT"/log-*.txt | tr '\r' '\n' | grep -v "step/s\|img/s" | tail -n 20 || true
  tar czf "$OUT/kvasir-paper-gpu.tar.gz" "$OUTDIR"
  ;;
*)
  echo "usage: bash benchmarks/gpu_paper_profile.sh prepare|run   (see the top of this file)" >&2; exit 2;;
esac
