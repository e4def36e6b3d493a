"""The API page at ``/``: Swagger UI from files this server serves, not from a public CDN.

MONAI Label's ``/`` (Swagger UI) and ``/docs`` (ReDoc) loaded their scripts from cdn.jsdelivr.net, unpinned
(``swagger-ui-dist@5``, ``redoc@2``) and without integrity checks, into the API's origin, where a script has
every right the API gives (with authentication on, a token kept in the same tab). Here ``/`` is Swagger UI
from ``build/api-docs/`` (``scripts/install_api_docs.sh``: swagger-ui-dist pinned, its tarball checked), its
answer forbidding scripts from anywhere else (Content-Security-Policy); without those files, a short page
that says how to get them and where the schema is (``/openapi.json``). ``/docs`` leads to ``/``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from pathlib import Path

from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Route

from lib.annotate import REPO, _file, _inside

logger = logging.getLogger(__name__)

PREFIX = "/api-docs"
DIST = REPO / "build" / "api-docs"
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
# the files above and the page's own inline start-up script (by its hash); nothing from elsewhere
POLICY = ("default-src 'self'; script-src 'self' {inline}; style-src 'self' 'unsafe-inline'; "
          "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'self'")
NOT_INSTALLED = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>polyp-al API</title></head>
<body style="font:16px sans-serif;margin:3em"><h2>polyp-al: MONAI Label server</h2>
<p>The interactive API page (Swagger UI) is not installed on this server: run <code>bash scripts/setup.sh</code>
(or <code>bash scripts/install_api_docs.sh</code>), then restart the server.</p>
<p>The API's schema: <a href="/openapi.json">/openapi.json</a>. The annotator's page: <a href="/annotate/">/annotate/</a>.</p>
</body></html>"""


def page(title: str, dist: Path = DIST) -> HTMLResponse:
    from fastapi.openapi.docs import get_swagger_ui_html

    headers = {"Content-Security-Policy": POLICY.format(inline="'none'").replace("'self' 'none'", "'none'"),
               "Cache-Control": "no-cache"}
    if any(_inside(dist, f) is None for f in FILES):
        return HTMLResponse(NOT_INSTALLED, headers=headers)
    html = get_swagger_ui_html(openapi_url="/openapi.json", title=title,
                               swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
                               swagger_css_url=f"{PREFIX}/swagger-ui.css",
                               swagger_favicon_url=f"{PREFIX}/favicon-32x32.png")
    body = html.body.decode("utf-8")
    # as MONAI Label's page: the schemas' section folded
    body = body.replace("showExtensions: true,", "showExtensions: true, defaultModelsExpandDepth: -1,")
    inline = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'"
                      for js in re.findall(r"<script>(.*?)</script>", body, re.S)) or "'none'"
    headers["Content-Security-Policy"] = POLICY.format(inline=inline)
    return HTMLResponse(body, headers=headers)


def make_routes(title: str = "MONAILabel - APIs", dist: Path = DIST) -> list[Route]:
    async def index(request):
        return page(title, dist)

    async def to_index(request):
        return RedirectResponse(request.scope.get("root_path", "") + "/")  # (behind ``--root_path``: under it)

    async def asset(request):
        name = request.path_params["name"]
        f = _inside(dist, name) if name in FILES else None
        return _file(f, cache=True) if f else PlainTextResponse("not found", status_code=404)

    return [Route("/", index, methods=["GET", "HEAD"]), Route("/docs", to_index, methods=["GET", "HEAD"]),
            Route(PREFIX + "/{name}", asset, methods=["GET", "HEAD"])]


def mount(fastapi_app) -> None:
    """In place of MONAI Label's ``/`` and ``/docs`` (server process only)."""
    fastapi_app.router.routes[0:0] = make_routes(fastapi_app.title + " - APIs")
    getattr(fastapi_app.router, "_mark_routes_changed", lambda: None)()
    installed = all(_inside(DIST, f) is not None for f in FILES)
    logger.info(f"API page at / (Swagger UI from {DIST}{'' if installed else ': NOT INSTALLED'})")
