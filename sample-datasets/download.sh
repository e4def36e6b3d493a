#!/usr/bin/env bash
# Download and unpack the full public Kvasir-SEG and CVC-ClinicDB, then verify them.
# Usage: bash sample-datasets/download.sh [DEST]   (default: ./datasets)
set -euo pipefail
DEST=${1:-datasets}
KVASIR_URL=${KVASIR_URL:-https://datasets.simula.no/downloads/kvasir-seg.zip}
CVC_URL=${CVC_URL:-https://www.dropbox.com/s/p5qe9eotetjnbmq/CVC-ClinicDB.rar?dl=1}
mkdir -p "$DEST"

fetch() {  # url file
  if ! curl -fL --retry 2 --connect-timeout 15 -o "$2.part" "$1"; then
    rm -f "$2.part"
    echo "ERROR: could not download $1 (are you offline, or did the site move?)." >&2
    echo "       Download it by hand, put it at $2 and rerun this script." >&2
    exit 1
  fi
  mv "$2.part" "$2"
}

count() { find "$1" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.png' -o -iname '*.tif' \) | wc -l; }

verify() {  # name dir expected
  local n_img n_mask
  n_img=$(count "$2/images"); n_mask=$(count "$2/masks")
  if [ "$n_img" -ne "$3" ] || [ "$n_mask" -ne "$3" ]; then
    echo "ERROR: $1 at $2 has $n_img images and $n_mask masks; expected $3 of each." >&2
    exit 1
  fi
  echo "$1 OK: $n_img images with masks in $2"
}

if [ ! -d "$DEST/kvasir-seg/images" ]; then
  [ -f "$DEST/kvasir-seg.zip" ] || fetch "$KVASIR_URL" "$DEST/kvasir-seg.zip"
  unzip -q -o "$DEST/kvasir-seg.zip" -d "$DEST/kvasir-tmp"
  mv "$DEST/kvasir-tmp/Kvasir-SEG" "$DEST/kvasir-seg" 2>/dev/null || mv "$DEST"/kvasir-tmp/* "$DEST/kvasir-seg"
  rm -rf "$DEST/kvasir-tmp"
fi
verify Kvasir-SEG "$DEST/kvasir-seg" 1000

if [ ! -d "$DEST/cvc-clinicdb/images" ]; then
  [ -f "$DEST/CVC-ClinicDB.rar" ] || fetch "$CVC_URL" "$DEST/CVC-ClinicDB.rar"
  command -v unrar >/dev/null || command -v bsdtar >/dev/null || {
    echo "ERROR: need unrar or bsdtar (apt-get install libarchive-tools) to unpack CVC-ClinicDB." >&2; exit 1; }
  mkdir -p "$DEST/cvc-tmp"
  if command -v unrar >/dev/null; then unrar x -o+ "$DEST/CVC-ClinicDB.rar" "$DEST/cvc-tmp/" >/dev/null
  else bsdtar -xf "$DEST/CVC-ClinicDB.rar" -C "$DEST/cvc-tmp"; fi
  mkdir -p "$DEST/cvc-clinicdb"
  orig=$(find "$DEST/cvc-tmp" -type d -iname 'Original' | head -1)
  gt=$(find "$DEST/cvc-tmp" -type d -iname 'Ground Truth' | head -1)
  [ -n "$orig" ] && [ -n "$gt" ] || { echo "ERROR: unexpected CVC-ClinicDB archive layout" >&2; exit 1; }
  mv "$orig" "$DEST/cvc-clinicdb/images"; mv "$gt" "$DEST/cvc-clinicdb/masks"
  rm -rf "$DEST/cvc-tmp"
fi
verify CVC-ClinicDB "$DEST/cvc-clinicdb" 612

# the benchmarks' split files (names only), where polypal-sim looks first: <data>/../splits
mkdir -p "$DEST/splits"
cp "$(dirname "$0")/splits/kvasir_sessile.txt" "$(dirname "$0")/splits/cvc_clinicdb_sequences.csv" "$DEST/splits/"
echo "split files in $DEST/splits"
