#!/usr/bin/env bash
# Install the OHIF Viewer (@ohif/app, prebuilt dist/, pinned) from the npm registry into build/ohif/,
# patched to be served by the polyp-al server under /annotate/ (see README "Annotating in OHIF").
# Called by scripts/setup.sh; idempotent; exits non-zero (so set-up fails) when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.13.2
INTEGRITY='sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=='
DEST=build/ohif
STAMP="$DEST/dist/.polypal-installed"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION" ]; then
  echo "OHIF $VERSION already installed in $DEST/dist"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "error: npm not found (apt-get install nodejs npm); needed once to fetch @ohif/app@$VERSION." \
       "To set up without the OHIF page (/annotate/), run set-up with POLYPAL_SKIP_OHIF=1." >&2
  exit 1
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
. scripts/npm_pack_checked.sh
npm_pack_checked "@ohif/app@$VERSION" "ohif-app-$VERSION.tgz" "$INTEGRITY" "$TMP"
# The prebuilt dist expects to be served at "/": move it under /annotate/ (page, chunk loader, router).
python3 - "$TMP/package/dist" <<'PY'
import re, sys
from pathlib import Path

dist = Path(sys.argv[1])
index = dist / "index.html"
html = index.read_text()
assert html.count('window.PUBLIC_URL="/"') == 2, "index.html layout changed: cannot move PUBLIC_URL"
html = html.replace('window.PUBLIC_URL="/"', 'window.PUBLIC_URL="/annotate/"')
html, n = re.subn(r'(src|href)="/(?!/)', r'\1="/annotate/', html)
assert n > 5, "index.html layout changed: cannot move its links"
# our annotation bar, before OHIF's bundle
html = html.replace('<script defer src="/annotate/app.bundle',
                    '<script src="/annotate/polypal/annotate.js"></script><script defer src="/annotate/app.bundle', 1)
assert "/annotate/polypal/annotate.js" in html, "index.html layout changed: cannot add the annotation bar"
index.write_text(html)
bundles = list(dist.glob("app.bundle.*.js"))
assert len(bundles) == 1, bundles
src = bundles[0].read_text()
assert src.count('__webpack_require__.p = "/";') == 1, "bundle layout changed: cannot move the chunk path"
bundles[0].write_text(src.replace('__webpack_require__.p = "/";', '__webpack_require__.p = "/annotate/";'))
# no service worker: it would cache an old viewer across set-ups
for name in ("sw.js", "init-service-worker.js"):
    (dist / name).write_text("")
PY
rm -rf "$DEST.new" && mkdir -p "$DEST.new"
mv "$TMP/package/dist" "$DEST.new/dist"
cp "$TMP/package/LICENSE" "$DEST.new/LICENSE"
echo "$VERSION" > "$DEST.new/dist/.polypal-installed"
rm -rf "$DEST" && mv "$DEST.new" "$DEST"
echo "OHIF $VERSION installed in $DEST/dist (served at /annotate/)"
