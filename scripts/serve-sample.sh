#!/usr/bin/env bash
# Start polyp-al on the bundled 30-frame Kvasir-SEG sample, on 127.0.0.1:8000, offline.
# The frames are copied to runs/sample-studies/ (git-ignored) so labels never touch the repo.
# STUDIES=DIR serves another folder (relative to where you run this; a DICOMweb URL is passed on as it
# is): the sample frames are copied into it only when it holds no frame yet, never into a folder of
# your own frames.
# Extra arguments go to monailabel, e.g.:  bash scripts/serve-sample.sh --conf batch_size 10
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STUDIES="${STUDIES:-$ROOT/runs/sample-studies}"
case "$STUDIES" in
  http://*|https://*) ;;
  *)
    mkdir -p "$STUDIES"
    STUDIES="$(cd "$STUDIES" && pwd)"
    # any frame the server would serve (polypal.vocab.FRAME_EXTENSIONS), symlinks included; -print -quit
    # and no pipe: a pipe into grep -q failed under pipefail once find had more to write
    found="$(find -L "$STUDIES" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \
      -o -iname '*.tif' -o -iname '*.tiff' -o -iname '*.nii.gz' -o -iname '*.nii' -o -iname '*.nrrd' \) \
      -print -quit 2>/dev/null || true)"
    if [ -z "$found" ]; then
      cp -n "$ROOT"/sample-datasets/kvasir-seg-mini/images/*.jpg "$STUDIES"/ 2>/dev/null || true
    fi
    ;;
esac
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
exec monailabel start_server --app apps/polyp_al --studies "$STUDIES" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf profile "${PROFILE:-cpu-lite}" "$@"
