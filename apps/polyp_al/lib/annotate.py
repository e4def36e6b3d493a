"""The annotator's page: OHIF Viewer 3.13.2 (installed by ohif/install.sh) served read-only under /annotate/.

- ``/annotate/`` is the one address an annotator opens (``ohif/start.html``): it asks
  ``/activelearning/<strategy>`` for the next frame with this browser's client id and opens it in
  OHIF's segmentation mode, where ``ohif/annotate.js`` adds Save / Next / Train.
- ``/annotate/app-config.js`` and ``/annotate/polypal/*`` come from the repository's ``ohif/``
  folder; every other path from the installed ``dist/``, unknown page paths answered by its
  ``index.html`` (a single-page app).

Only GET and HEAD, only files inside those two folders (resolved, symlinks included), nothing is
written. The page is same-origin with the API, so the Gate's origin and host checks (lib.security)
apply unchanged: the viewer reads DICOMweb through MONAI Label's ``/proxy/dicom`` and saves labels
through ``PUT /datastore/label``, checked like any other label.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from pathlib import Path

from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Route

logger = logging.getLogger(__name__)

PREFIX = "/annotate"
REPO = Path(__file__).resolve().parents[3]
OVERLAY_DIR = REPO / "ohif"  # our files (app-config.js, start.html, annotate.js)
DEFAULT_DIST = REPO / "build" / "ohif" / "dist"
OVERLAY = {"": "start.html", "app-config.js": "app-config.js", "polypal/annotate.js": "annotate.js"}
NOT_INSTALLED = ("OHIF is not installed on this server: run `bash scripts/setup.sh` (or `bash ohif/install.sh`), "
                 "then restart the server.")
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def _inside(root: Path, rel: str) -> Path | None:
    """``root/rel`` if it is a regular file inside ``root`` once resolved, else None."""
    if "\x00" in rel or rel.startswith("/"):
        return None
    try:
        root = root.resolve()
        f = (root / rel).resolve()
        if os.path.commonpath([str(root), str(f)]) != str(root) or not f.is_file():
            return None
    except (OSError, RuntimeError):  # is_file() raises ENAMETOOLONG for a path part over 255 bytes
        return None
    return f


def _file(path: Path, cache: bool) -> FileResponse:
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {"Cache-Control": "public, max-age=86400" if cache else "no-cache",
               "X-Content-Type-Options": "nosniff"}
    return FileResponse(str(path), media_type=media, headers=headers)


def make_routes(dist: Path | None = None, overlay: Path = OVERLAY_DIR) -> list[Route]:
    dist = Path(dist) if dist else DEFAULT_DIST

    async def serve(request):
        rel = request.path_params.get("path", "")
        if rel in OVERLAY:
            f = _inside(overlay, OVERLAY[rel])
            return _file(f, cache=False) if f else PlainTextResponse("not found", status_code=404)
        index = _inside(dist, "index.html")
        if index is None:
            return PlainTextResponse(NOT_INSTALLED, status_code=503)
        f = _inside(dist, rel)
        if f is not None and f.suffix.lower() in (".html", ".htm") and f.name != "index.html":
            # OHIF's other pages (silent-refresh.html, for OIDC sign-in, which polyp-al does not use) load
            # scripts from a CDN: not served in this origin, where a script has the whole API's rights
            return PlainTextResponse("not found", status_code=404)
        if f is not None:
            return _file(f, cache=f.name != "index.html" and ".bundle." in f.name or f.suffix == ".wasm")
        if "." in rel.rsplit("/", 1)[-1]:  # a missing asset, not a page of the single-page app
            return PlainTextResponse("not found", status_code=404)
        return _file(index, cache=False)

    async def to_slash(request):
        q = request.url.query
        return RedirectResponse(request.scope.get("root_path", "") + PREFIX + "/" + ("?" + q if q else ""))
        # (the root path of ``start_server --root_path``, where a reverse proxy serves the app)

    return [Route(PREFIX, to_slash, methods=["GET", "HEAD"]),
            Route(PREFIX + "/{path:path}", serve, methods=["GET", "HEAD"])]


def mount(fastapi_app, dist: str | None = None) -> None:
    """Add the /annotate routes to MONAI Label's running app (server process only)."""
    routes = make_routes(Path(dist) if dist else None)
    fastapi_app.router.routes[0:0] = routes
    where = Path(dist) if dist else DEFAULT_DIST
    logger.info(f"annotator page at {PREFIX}/ (OHIF from {where}{'' if where.exists() else ': NOT INSTALLED'})")
