#!/usr/bin/env bash
# Swagger UI (swagger-ui-dist, pinned and checked) from the npm registry into build/api-docs/, for the API page
# the server shows at "/". MONAI Label's page loaded an unpinned swagger-ui from a public CDN into the API's
# origin (where a script has every right the API gives); polyp-al serves these files itself, or, where they
# are not installed, a page that says so (README "Security model"). Called by scripts/setup.sh with the OHIF
# install (npm); idempotent; exits non-zero when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=5.36.0
INTEGRITY='sha512-Lt6/Kb0gXmLdiabLhvso4VdJP9V7qJWB0zh0gzeXUV3+CMOTzMmvpJRSXN7EAjfwixwmoi9ezDbLHiexC7lA9A=='
DEST=build/api-docs
FILES="swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE"
complete=1
for f in $FILES; do [ -f "$DEST/$f" ] || complete=0; done
if [ "$complete" = 1 ] && [ -f "$DEST/.polypal-installed" ] && [ "$(cat "$DEST/.polypal-installed")" = "$VERSION" ]; then
  echo "swagger-ui $VERSION already installed in $DEST"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "error: npm not found; needed once to fetch swagger-ui-dist@$VERSION (the API page at /)." >&2
  exit 1
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
. scripts/npm_pack_checked.sh
npm_pack_checked "swagger-ui-dist@$VERSION" "swagger-ui-dist-$VERSION.tgz" "$INTEGRITY" "$TMP"
rm -rf "$DEST.new" && mkdir -p "$DEST.new"
for f in $FILES; do cp "$TMP/package/$f" "$DEST.new/$f"; done
echo "$VERSION" > "$DEST.new/.polypal-installed"
rm -rf "$DEST" && mv "$DEST.new" "$DEST"
echo "swagger-ui $VERSION installed in $DEST (the API page at /)"
