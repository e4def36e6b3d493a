#!/usr/bin/env bash
# One-command set-up: creates .venv/ at the repo root with everything polyp-al needs.
# Usage: bash scripts/setup.sh      (idempotent; safe to rerun)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# polyp-al is tested on Python 3.11 (pyproject allows 3.10 and later): said before anything is installed
if [ ! -x .venv/bin/python ]; then
  pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
  case "$pyver" in
    3.1[0-9]) [ "$pyver" = 3.11 ] || echo "note: $PY is Python $pyver; polyp-al is tested on 3.11 (PYTHON=python3.11 picks it)" >&2 ;;
    *) echo "error: $PY is Python ${pyver:-?}; polyp-al needs 3.10 or later (tested on 3.11): set PYTHON=python3.11" >&2
       exit 1 ;;
  esac
fi
# Orthanc + its DICOMweb plugin (Debian packages) for the DICOMweb path, and Chromium for the
# OHIF browser tests. Installed when running as root with apt-get (POLYPAL_SKIP_APT=1 opts out;
# without root or apt-get those tests skip and say why). When the install is attempted and fails,
# set-up fails: CI must not pass with the DICOMweb and browser tests silently skipped.
have_dicomweb_stack() {
  [ -x /usr/sbin/Orthanc ] && command -v chromium >/dev/null \
    && { [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || [ -e /usr/lib/orthanc/plugins/libOrthancDicomWeb.so ]; }
}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${POLYPAL_SKIP_APT:-0}" != 1 ] \
   && ! have_dicomweb_stack; then
  echo "installing Orthanc and Chromium (apt-get install orthanc orthanc-dicomweb chromium)..."
  APT_LOG=$(mktemp)
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb chromium) \
       >"$APT_LOG" 2>&1; then
    tail -n 30 "$APT_LOG" >&2
    echo "error: could not install Orthanc/Chromium (log above); the DICOMweb and browser tests would skip." \
         "Fix the install, or set POLYPAL_SKIP_APT=1 to go on without them." >&2
    exit 1
  fi
  rm -f "$APT_LOG"
  if ! have_dicomweb_stack; then
    echo "error: apt-get succeeded but Orthanc, its DICOMweb plugin or Chromium is still missing" >&2
    exit 1
  fi
fi
# The OHIF Viewer for the annotator's page (/annotate/): @ohif/app's prebuilt dist from the npm registry,
# pinned and checked in ohif/install.sh, into build/ohif/ (git-ignored); npm (Debian's) only for that
# download, nothing runs under Node. A failed install fails set-up (POLYPAL_SKIP_OHIF=1 opts out).
if [ "${POLYPAL_SKIP_OHIF:-0}" != 1 ]; then
  if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing npm (apt-get install nodejs npm) to fetch the OHIF viewer..."
    NPM_LOG=$(mktemp)
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >"$NPM_LOG" 2>&1; then
      tail -n 30 "$NPM_LOG" >&2
      echo "error: could not install npm (log above); set POLYPAL_SKIP_OHIF=1 to go on without OHIF." >&2
      exit 1
    fi
    rm -f "$NPM_LOG"
  fi
  bash ohif/install.sh
  bash scripts/install_api_docs.sh  # the API page's Swagger UI (served by the server, not from a CDN)
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# sam2 (a monailabel dependency) is an sdist whose build needs torch. Building it
# against the venv's torch (no build isolation) avoids a second multi-GB torch
# download into a temporary build environment; no CUDA kernels are compiled.
export SAM2_BUILD_CUDA=0
$PIP install --quiet --upgrade "setuptools>=70" wheel
# torch/torchvision first, so later resolution keeps these exact versions.
$PIP install --quiet "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
$PIP install --quiet --no-build-isolation -r requirements.txt
$PIP install --quiet --no-build-isolation --no-deps -e .
.venv/bin/python -c "import monailabel, monai, torch, polypal; print('polyp-al environment OK: monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__)"
