#!/usr/bin/env bash
# Start polyp-al on the bundled 30-frame Kvasir-SEG sample, on 127.0.0.1:8000, offline.
# The frames are copied to runs/sample-studies/ (git-ignored) so labels never touch the repo.
# STUDIES=DIR serves another folder (relative to where you run this; a DICOMweb URL is passed on as it
# is). The sample frames are copied only into the default folder or into an empty folder you name: never
# into a folder with anything in it (a dataset with its frames under images/ is refused, named), and a
# folder that does not exist is refused (a mistyped path was made and filled with the sample).
# Extra arguments go to monailabel, e.g.:  bash scripts/serve-sample.sh --conf batch_size 10
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STUDIES_SET="${STUDIES:+1}"
STUDIES="${STUDIES:-$ROOT/runs/sample-studies}"
case "$STUDIES" in
  http://*|https://*) ;;
  *)
    if [ -z "${STUDIES_SET:-}" ]; then
      mkdir -p "$STUDIES"
    elif [ ! -d "$STUDIES" ]; then
      echo "error: STUDIES=$STUDIES: no such folder (a typo?); to serve the sample frames in a new folder," \
        "make it first: mkdir -p $STUDIES" >&2
      exit 2
    fi
    STUDIES="$(cd "$STUDIES" && pwd)"
    # any frame the server would serve (polypal.vocab.FRAME_EXTENSIONS), symlinks included; -print -quit
    # and no pipe: a pipe into grep -q failed under pipefail once find had more to write
    found="$(find -L "$STUDIES" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \
      -o -iname '*.tif' -o -iname '*.tiff' -o -iname '*.nii.gz' -o -iname '*.nii' -o -iname '*.nrrd' \) \
      -print -quit 2>/dev/null || true)"
    if [ -z "$found" ]; then
      # anything else in it (what the server makes, labels/ and .polypal/, aside): not a folder for the sample
      other="$(find "$STUDIES" -mindepth 1 -maxdepth 1 ! -name labels ! -name .polypal -print -quit 2>/dev/null || true)"
      if [ -n "$other" ]; then
        hint=""
        [ -d "$STUDIES/images" ] && hint=" Its frames are under images/: serve STUDIES=$STUDIES/images."
        echo "error: $STUDIES holds no frame at its top (the server serves only those) but is not empty" \
          "($(basename "$other"), ...); the sample frames are not copied into it.$hint" >&2
        exit 2
      fi
      cp -n "$ROOT"/sample-datasets/kvasir-seg-mini/images/*.jpg "$STUDIES"/ 2>/dev/null || true
    fi
    ;;
esac
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
exec monailabel start_server --app apps/polyp_al --studies "$STUDIES" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf profile "${PROFILE:-cpu-lite}" "$@"
