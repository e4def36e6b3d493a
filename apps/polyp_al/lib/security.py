"""The HTTP surface of the server, narrowed for a hospital network (see README "Security model").

MONAI Label's FastAPI app is built before our app exists; once it exists
(``on_init_complete``, in the server process only) this module puts one ASGI
middleware (``Gate``) in front of it, which:

- answers 403 to any request from a web page of another origin (the CORS
  preflight included) and to a ``Host`` that is not this machine (DNS
  rebinding). Same-origin pages (OHIF served at /ohif) work; more origins come
  from ``--conf allowed_origins`` or MONAI Label's ``MONAI_LABEL_CORS_ORIGINS``;
- turns model upload/delete off (403) unless ``--conf allow_model_upload true``;
  then an upload is checked (loads with weights_only, this profile's
  architecture) before it atomically becomes the served model;
- removes the WSI endpoints (this app serves 2D frames);
- runs the heavy endpoints (infer, datastore, next sample, training/scoring
  requests) each on its own event loop in a worker thread, so that one
  inference of a large frame does not stall every other request;
- refuses image paths where an image id is expected (404 "unknown image id"),
  info keys the app owns and info that is not a JSON object (400); deletes
  a request's scratch files (the dataset zip) once it is answered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import threading
from typing import Iterable

import anyio
from fastapi.responses import JSONResponse

from polypal.framestore import InvalidName, check_name

logger = logging.getLogger(__name__)

# image info keys written by the server (next-sample answers merge image info over their own fields)
RESERVED_IMAGE_KEYS = frozenset({"id", "path", "name", "ext", "ts", "user", "strategy", "al_strategy", "score",
                                 "picked_by", "cycle", "position", "batch_size", "model_version", "note",
                                 "served"})
RESERVED_LABEL_KEYS = frozenset({"id", "name", "ext", "ts", "user"})


# -- origins and hosts ---------------------------------------------------------------------------
def _split(value) -> list[str]:
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip().rstrip("/") for v in value if str(v).strip()]
    return [v.strip().rstrip("/") for v in str(value).split(",") if v.strip()]


def _host_only(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class OriginGuard:
    """ASGI middleware: refuse cross-origin requests and foreign Host headers with 403."""

    def __init__(self, app, origins: Iterable[str], hosts: Iterable[str]):
        self.app = app
        self.origins = {o.lower() for o in origins}
        self.any_host = "*" in set(hosts)
        self.hosts = {h.lower() for h in hosts} | {"localhost", socket.gethostname().lower(),
                                                   socket.getfqdn().lower()}

    def _refuse(self, scope) -> str | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        hostname = _host_only(host)
        if not self.any_host and hostname and not _is_ip(hostname) and hostname not in self.hosts:
            return f"host {hostname!r} is not served here (server setting allowed_hosts)"
        origin = headers.get("origin")
        if origin is None:
            return None
        origin = origin.strip().rstrip("/").lower()
        scheme = scope.get("scheme", "http")
        if origin in self.origins or "*" in self.origins or origin == f"{scheme}://{host.lower()}":
            return None
        return (f"requests from the web origin {origin!r} are not allowed (server setting allowed_origins; "
                f"see the README's Security model)")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            why = self._refuse(scope)
            if why:
                logger.warning(f"refused {scope.get('method')} {scope.get('path')}: {why}")
                await JSONResponse({"detail": why}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- the gate ----------------------------------------------------------------------------------
def _query(scope) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


_OFFLOAD = ("/infer/", "/datastore", "/activelearning/", "/train", "/scoring", "/batch/")
_INFO = {"/datastore/image/info": (RESERVED_IMAGE_KEYS, "image info", "info"),
         "/datastore/label/info": (RESERVED_LABEL_KEYS, "label info", "info"),
         "/datastore/updatelabelinfo": (RESERVED_LABEL_KEYS, "label info", "params")}
_scratch = threading.local()


def scratch_file(path: str) -> None:
    """Register a temporary file to delete once the current (offloaded) request has been answered."""
    files = getattr(_scratch, "files", None)
    if files is None:
        return
    files.append(path)


def _in_thread(app, scope, receive, send, loop):
    """Run one request through ``app`` on a new event loop in this worker thread (MONAI Label's
    endpoints are ``async def`` but block inside), talking to the server's loop for I/O."""

    async def r():
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(receive(), loop))

    async def s(message):
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(send(message), loop))

    _scratch.files = []
    try:
        asyncio.run(app(scope, r, s))
    finally:
        for f in _scratch.files:
            try:
                os.unlink(f)
            except OSError:
                pass
        _scratch.files = None


class Gate:
    """ASGI middleware in front of MONAI Label's app: see the module docstring."""

    def __init__(self, app, guard: OriginGuard, model_app=None, precheck=None):
        self.app, self.guard, self.model_app, self.precheck = app, guard, model_app, precheck

    async def _answer(self, scope, receive, send, status: int, detail: str):
        logger.warning(f"refused {scope.get('method')} {scope.get('path')}: {detail}")
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        why = self.guard._refuse(scope)
        if why:
            return await self._answer(scope, receive, send, 403, why)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path.startswith("/infer/wsi"):
            return await self._answer(scope, receive, send, 404, "whole-slide inference is not part of polyp-al")
        if path.startswith("/model/") and method in ("PUT", "DELETE"):
            if self.model_app is None:
                return await self._answer(scope, receive, send, 403, MODEL_UPLOAD_OFF)
            return await self.model_app(scope, receive, send)
        q = _query(scope) if path.startswith(("/infer/", "/datastore", "/activelearning/")) else {}
        for key in ("image", "id", "label"):
            for v in q.get(key, []):
                if v and not _valid_id(v):
                    shown = "(a path: send the id of a datastore image)" if ("/" in v or "\\" in v) else repr(v[:80])
                    if path.startswith("/infer/") or method in ("GET", "HEAD"):
                        return await self._answer(scope, receive, send, 404, f"unknown image id {shown}")
                    return await self._answer(scope, receive, send, 400, f"invalid image id {shown}: use "
                                              f"letters, digits, '_', '-' and '.' only, at most 128 characters")
        if path.startswith("/infer/") and any(q.get("session_id", [])):
            return await self._answer(scope, receive, send, 400, "sessions are off in polyp-al: send an image id "
                                                                 "or upload the image")
        for v in q.get("tag", []):
            if v and not _valid_id(v):
                return await self._answer(scope, receive, send, 400, f"invalid label tag {v[:80]!r}")
        if self.precheck is not None:
            try:
                problem = await anyio.to_thread.run_sync(self.precheck, method, path)
            except Exception:  # noqa: BLE001 - e.g. the DICOMweb server is down: let the endpoint answer
                problem = None
            if problem:
                return await self._answer(scope, receive, send, *problem)
        if path in _INFO and method == "PUT":
            receive, problem = await _check_info_form(scope, receive, *_INFO[path])
            if problem:
                return await self._answer(scope, receive, send, 400, problem)
        if path.startswith(_OFFLOAD) and method != "OPTIONS":
            loop = asyncio.get_running_loop()
            return await anyio.to_thread.run_sync(_in_thread, self.app, scope, receive, send, loop)
        return await self.app(scope, receive, send)


def _valid_id(v: str) -> bool:
    try:
        check_name("id", v)
        return True
    except InvalidName:
        return False


async def _check_info_form(scope, receive, keys: frozenset, what: str, field: str):
    """Read the (small) form body, check its JSON field; returns a receive that replays the body."""
    from starlette.requests import Request

    chunks, more = [], True
    while more:
        m = await receive()
        if m["type"] != "http.request":
            break
        chunks.append(m.get("body", b""))
        more = m.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    async def once():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form()
        raw = form.get(field, "{}")
        info = json.loads(raw) if raw else {}
    except Exception:  # noqa: BLE001 - any unparsable body
        return replay, f"{what} must be a JSON object in the form field {field!r}"
    if not isinstance(info, dict):
        return replay, f"{what} must be a JSON object, got {type(info).__name__}"
    bad = sorted(set(info) & keys)
    if bad:
        return replay, f"{what} keys {bad} are set by the server, not by clients"
    return replay, None


MODEL_UPLOAD_OFF = ("model upload/delete through the API is off; start the server with --conf allow_model_upload "
                    "true to turn it on (uploads are then checked before they are served)")


def harden(fastapi_app, app, allowed_origins, allowed_hosts) -> None:
    """Put the Gate in front of MONAI Label's running FastAPI app (see the module docstring)."""
    from monailabel.config import settings

    model_app = None
    if getattr(app.cfg, "allow_model_upload", False):
        from lib.model_upload import model_api

        model_app = model_api(app)
    origins = _split(allowed_origins) + _split(settings.MONAI_LABEL_CORS_ORIGINS)
    if fastapi_app.middleware_stack is None:
        fastapi_app.middleware_stack = fastapi_app.build_middleware_stack()
    fastapi_app.middleware_stack = Gate(fastapi_app.middleware_stack, OriginGuard(None, origins,
                                                                                   _split(allowed_hosts)), model_app,
                                        precheck=getattr(app, "precheck", None))
    logger.info(f"HTTP surface hardened: model upload {'on' if model_app else 'off'}, sessions off, "
                f"origins allowed: same-origin{', ' + ', '.join(origins) if origins else ''}")
