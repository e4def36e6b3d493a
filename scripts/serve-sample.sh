#!/usr/bin/env bash
# Start polyp-al on the bundled 30-frame Kvasir-SEG sample, on 127.0.0.1:8000, offline.
# The frames are copied to runs/sample-studies/ (git-ignored) so labels never touch the repo.
# Extra arguments go to monailabel, e.g.:  bash scripts/serve-sample.sh --conf batch_size 10
set -euo pipefail
cd "$(dirname "$0")/.."
STUDIES=${STUDIES:-runs/sample-studies}
mkdir -p "$STUDIES"
cp -n sample-datasets/kvasir-seg-mini/images/*.jpg "$STUDIES"/ 2>/dev/null || true
export PATH="$PWD/.venv/bin:$PATH"
exec monailabel start_server --app apps/polyp_al --studies "$STUDIES" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf profile "${PROFILE:-cpu-lite}" "$@"
