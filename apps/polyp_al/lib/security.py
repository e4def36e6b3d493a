"""The HTTP surface of the server, narrowed for a hospital network (see README "Security model").

MONAI Label's FastAPI app is built before our app exists; once it exists
(``on_init_complete``, in the server process only) this module puts one ASGI
middleware (``Gate``) in front of it, which:

- answers 403 to any request from a web page of another origin (the CORS
  preflight included) and to a ``Host`` that is not this machine (DNS
  rebinding). Same-origin pages (OHIF served at /ohif) work; more origins come
  from ``--conf allowed_origins`` or MONAI Label's ``MONAI_LABEL_CORS_ORIGINS``;
- with MONAI Label's authentication on, asks for a valid bearer token before it reads a body or runs a
  handler (401; ``auth.py``, which also makes MONAI Label's own token check work);
- turns model upload/delete off (403) unless ``--conf allow_model_upload true``;
  then an upload is checked (loads with weights_only, this profile's
  architecture) before it atomically becomes the served model;
- answers 404 for what polyp-al does not offer (WSI, batch infer, /reload, ``..`` in a path);
- keeps MONAI Label's DICOMweb proxy (``/proxy/dicom``, which OHIF reads through) read-only (405),
  so no browser stores a SEG in the DICOMweb server around the label checks; its calls to the DICOMweb
  server time out (504) and take at most ``POLYPAL_PROXY_THREADS`` worker threads, so a slow or stalled
  DICOMweb server cannot hold the threads that uploads, inference and next-sample need; downloads take at
  most ``POLYPAL_DOWNLOAD_THREADS`` threads, and a connection whose client reads nothing of an answer for
  ``POLYPAL_SEND_TIMEOUT`` seconds is aborted, so clients that never read cannot hold the workers;
- runs at most ``POLYPAL_INFER_THREADS`` inferences and ``POLYPAL_UPLOAD_THREADS`` uploads at once (memory:
  a frame at the pixel cap takes about 200 MB to infer or check); the others wait;
- (``connections.py``) closes a connection that sends no whole request head within
  ``POLYPAL_HEADER_TIMEOUT`` seconds (idle sockets took every file descriptor), and logs failed accepts
  once a minute;
- answers 507 to a request with a body (an upload, a label, a model, inference, next sample, training)
  or a dataset export when it would leave less than ``--conf min_free_mb`` free on the disks of the
  datastore, the app's state, the models or the temp dir: by its declared size (times the copies a body
  has on disk while it is handled) before the body is read, then by its bytes as they arrive, held with
  those of the other requests in flight until it is answered (DiskFloor), so clients cannot fill the disk
  the datastore and its database live on; an export is refused only while the disk is under the floor;
- reads each request body to the end on the event loop (spooled, capped, with
  a pause timeout) and checks it: JSON bodies that become subprocess requests
  and the ``params``/``info`` of small multipart forms must be JSON objects
  without server-owned keys (``bundle_path`` would put an uploaded file on a
  subprocess's PYTHONPATH);
- then runs the heavy endpoints (infer, datastore, next sample, training/scoring
  requests) each on its own event loop in a worker thread, so that one
  inference of a large frame does not stall every other request;
- answers sessions (406) and a POST /train/ that would queue trainings (400) before reading any body,
  caps GET /logs lines, and adds anti-framing and no-sniff headers to every answer;
- refuses image paths where an image id is expected (404 "unknown image id")
  and invalid ids/tags (400); deletes a request's scratch files (the dataset
  zip) once it is answered.

Every rule on what a request may do lives in this one middleware on purpose, so that this file is the
review of the HTTP surface. Below the requests, ``connections.py`` holds the connection timeouts and the
failed-accept log filter; ``dicom_proxy.py`` and ``downloads.py`` patch two MONAI Label endpoints (the
proxy's timeouts; downloads that survive their file being moved). ``harden`` installs all of them.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import os
import pathlib
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from typing import Iterable

import anyio
from fastapi.responses import JSONResponse

from lib import auth
from polypal.vocab import InvalidName, check_name

logger = logging.getLogger(__name__)

# image info keys written by the server (next-sample answers merge image info over their own fields)
RESERVED_IMAGE_KEYS = frozenset({"id", "path", "name", "ext", "ts", "user", "strategy", "al_strategy", "score",
                                 "picked_by", "cycle", "position", "batch_size", "model_version", "note",
                                 "served"})
# and, with a DICOMweb datastore only, the series' tags and its RetrieveURL (a link OHIF's MONAI Label panel
# shows): a folder of frames may keep such keys of its own (a PatientID to split by)
DICOM_INFO_KEYS = frozenset({"SeriesInstanceUID", "StudyInstanceUID", "StudyDate", "StudyTime", "Modality",
                             "RetrieveURL", "PatientID"})
_RESERVE_DICOM_KEYS = [False]  # set by harden() for a DICOMweb datastore (also: no frame uploads or deletes)
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


class OriginPolicy:
    """Which web origins and Host headers may use the server (the Gate answers 403 to the others)."""

    def __init__(self, origins: Iterable[str], hosts: Iterable[str]):
        self.origins = {o.lower() for o in origins}
        self.any_host = "*" in set(hosts)
        self.hosts = {h.lower() for h in hosts} | {"localhost", socket.gethostname().lower(),
                                                   socket.getfqdn().lower()}

    def refusal(self, scope) -> str | None:
        """Why this request is refused, or None."""
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


# -- the gate ----------------------------------------------------------------------------------
def _query(scope) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


# run in a worker thread: also the DICOMweb proxy, whose ``async def`` calls the blocking requests.get
# and /info: MONAI Label's ``async def`` calls the app's info() on the loop, and with a DICOMweb datastore that
# asks the DICOMweb server (up to minutes when it stalls: every request waited; a review, 2026-12-07)
_OFFLOAD = ("/infer/", "/datastore", "/activelearning/", "/train", "/scoring", "/proxy/", "/info", "/model/info")
# with authentication on, sign-in too (POST /auth/token asks the realm with a blocking request); anyone may
# send it, so its body is small: a user name and a password
_SIGN_IN = "/auth/"
SIGN_IN_MAX_BODY = 16 << 10
_EXPORT = "/datastore/dataset"  # a GET that writes: the export's folder and zip in the temp dir
_GONE = ("/infer/wsi", "/batch/", "/reload", "/logs/gpu")  # not part of polyp-al (batch infer: use the export)
_JSON_PATHS = ("/activelearning/", "/train", "/scoring")  # their JSON body becomes a subprocess request
_FORBIDDEN_KEYS = frozenset({"bundle_path", "model_filename", "logging", "device", "gpus", "multi_gpu"})
_FORMS = {  # multipart uploads: (form field holding JSON, reserved keys)
    "/datastore/": ("params", RESERVED_IMAGE_KEYS), "/datastore/image": ("params", RESERVED_IMAGE_KEYS),
    "/datastore/label": ("params", RESERVED_LABEL_KEYS),
    # infer: no path where the image goes (MONAI Label lets params override the upload's own path), and
    # none of the keys MONAI Label's infer task reads after its writer (a failure there strands the result)
    "/infer/": ("params", _FORBIDDEN_KEYS | {"image", "image_path", "model", "label", "session", "session_id",
                                             "centroids", "skip_writer", "pred", "latencies",
                                             # how long MONAI Label waits for a pooled inference: 0 was a 500 at
                                             # once and left the inference queued, past the inference cap
                                             "timeout"}),
    "/datastore/image/info": ("info", RESERVED_IMAGE_KEYS), "/datastore/label/info": ("info", RESERVED_LABEL_KEYS),
    "/datastore/updatelabelinfo": ("params", RESERVED_LABEL_KEYS),
}
MAX_FORM_FILES, MAX_FORM_FIELDS = 2, 4  # parts of one upload's form (file, label; params, info...)
MAX_BODY = 1 << 30  # bytes of one request body (a model upload is the largest legitimate one)


def max_upload() -> int:
    """Bytes of a frame, label or inference upload: what an image at the pixel cap may be when read (twice a
    16-bit RGBA frame's raw size plus 8 MB: polypal.data.image_checks), and some. 284 MB at 4096 x 4096."""
    from polypal.data import images

    return 2 * 8 * images.MAX_PIXELS + (16 << 20)


# requests with a body a signed-in user may have in flight (spooled, charged against the disk floor): one
# user's uploads, slowly sent, held the floor and every annotator's save got 507
UPLOADS_PER_USER = max(1, int(os.environ.get("POLYPAL_UPLOADS_PER_USER", 8)))


class _PerUser:
    """How many requests each user has in flight, at most ``n`` each."""

    def __init__(self, n: int):
        self.n, self._lock, self._count = n, threading.Lock(), {}

    def take(self, user: str) -> bool:
        with self._lock:
            if self._count.get(user, 0) >= self.n:
                return False
            self._count[user] = self._count.get(user, 0) + 1
            return True

    def give(self, user: str) -> None:
        with self._lock:
            left = self._count.get(user, 0) - 1
            if left > 0:
                self._count[user] = left
            else:
                self._count.pop(user, None)


_UPLOADS = _PerUser(UPLOADS_PER_USER)
# with authentication off, the same per client address (the proxy's, unless it sends X-Forwarded-For and
# FORWARDED_ALLOW_IPS names it): one client's slow uploads held the disk floor and every annotator's save
# got 507. Higher than per user: annotators behind one NAT address share it
UPLOADS_PER_CLIENT = max(1, int(os.environ.get("POLYPAL_UPLOADS_PER_CLIENT", 16)))
_CLIENT_UPLOADS = _PerUser(UPLOADS_PER_CLIENT)
# sign-ins (anyone may send them; each waits on the realm in one of SIGN_IN_THREADS threads) per client
# address, a cap of their own: in the upload cap, slow ones locked every user out of signing in
SIGN_INS_PER_CLIENT = max(1, int(os.environ.get("POLYPAL_SIGN_INS_PER_CLIENT", 64)))
_CLIENT_SIGN_INS = _PerUser(SIGN_INS_PER_CLIENT)
PROXY_THREADS = max(1, int(os.environ.get("POLYPAL_PROXY_THREADS", 8)))  # proxy requests answered at once
# downloads (frames, labels, models, the dataset zip) answered at once: each holds a worker thread until the
# client has read it, so they get threads of their own, never all 40 of anyio's (which the checks, uploads,
# inference and next-sample need); and a client that reads nothing for POLYPAL_SEND_TIMEOUT seconds is
# aborted (connections.py)
DOWNLOAD_THREADS = max(1, int(os.environ.get("POLYPAL_DOWNLOAD_THREADS", 16)))
_proxy_limiter: anyio.CapacityLimiter | None = None
_download_limiter: anyio.CapacityLimiter | None = None


_DOWNLOADS = ("/datastore/image", "/datastore/label", "/datastore/dataset", "/model/")  # file answers


INFO_THREADS = 4
_info_limiter: anyio.CapacityLimiter | None = None


def _limiter(path: str):
    """The thread limit of a GET/HEAD handed to a worker thread (made on first use, on the server's loop):
    the proxy's POLYPAL_PROXY_THREADS, the file downloads' POLYPAL_DOWNLOAD_THREADS, both apart from anyio's
    default 40, which the rest (status, listings) keep (None)."""
    global _proxy_limiter, _download_limiter, _info_limiter
    if path.startswith("/proxy/"):
        if _proxy_limiter is None:
            _proxy_limiter = anyio.CapacityLimiter(PROXY_THREADS)
        return _proxy_limiter
    if path.startswith("/info"):  # polled by every annotator's page: a few threads, whatever the DICOMweb server
        if _info_limiter is None:
            _info_limiter = anyio.CapacityLimiter(INFO_THREADS)
        return _info_limiter
    if not path.startswith(_DOWNLOADS):
        return None
    if _download_limiter is None:
        _download_limiter = anyio.CapacityLimiter(DOWNLOAD_THREADS)
    return _download_limiter


# inferences at once: each decodes and resizes its frame (about 200 MB at the 4096 x 4096 pixel cap), so 40
# at once (anyio's threads) could take 8 GB; beyond the cores they only share the CPU. The rest wait.
INFER_THREADS = max(1, int(os.environ.get("POLYPAL_INFER_THREADS", 4)))
# uploads at once (frames and labels): each is decoded to be checked, a label also run through the model
UPLOAD_THREADS = max(1, int(os.environ.get("POLYPAL_UPLOAD_THREADS", 4)))
_infer_limiter: anyio.CapacityLimiter | None = None
_upload_limiter: anyio.CapacityLimiter | None = None
# sign-in, renewal and sign-out (anyone may send them; each waits on the realm): a few threads of their own, so
# that a flood of them, with the realm slow, cannot take the threads every signed-in request's token check needs
SIGN_IN_THREADS = max(1, int(os.environ.get("POLYPAL_SIGN_IN_THREADS", 4)))
_sign_in_limiter: anyio.CapacityLimiter | None = None


def _body_limiter(method: str, path: str):
    """The thread limit of a request with a body: inference (POLYPAL_INFER_THREADS), uploads to the
    datastore (POLYPAL_UPLOAD_THREADS) and signing in (POLYPAL_SIGN_IN_THREADS) have their own; None: anyio's
    default."""
    global _infer_limiter, _upload_limiter, _sign_in_limiter
    if path.startswith(_SIGN_IN):
        if _sign_in_limiter is None:
            _sign_in_limiter = anyio.CapacityLimiter(SIGN_IN_THREADS)
        return _sign_in_limiter
    if path.startswith("/infer/"):
        if _infer_limiter is None:
            _infer_limiter = anyio.CapacityLimiter(INFER_THREADS)
        return _infer_limiter
    if method == "PUT" and path.startswith("/datastore"):
        if _upload_limiter is None:
            _upload_limiter = anyio.CapacityLimiter(UPLOAD_THREADS)
        return _upload_limiter
    return None


REFUSALS_PER_MINUTE = 120


class _RefusalLog:
    """A budget of refusal log lines per minute; the refusals over it are counted, not logged."""

    def __init__(self, per_minute: int):
        self.per_minute, self.window, self.count, self.dropped = per_minute, 0.0, 0, 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 60:
            self.window, self.count = now, 0
        self.count += 1
        if self.count > self.per_minute:
            self.dropped += 1
            return False
        return True

    def take_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n


_refusals = _RefusalLog(REFUSALS_PER_MINUTE)


BODY_TIMEOUT = float(os.environ.get("POLYPAL_BODY_TIMEOUT", 60))  # seconds a client may pause in a body...
MIN_BODY_RATE = 10_000  # ...and bytes per second it must keep up, over any 2 x that time less one pause
_FALSE = ("", "0", "false", "f", "no", "n", "off")  # enqueue values that do not queue (pydantic's falsy words)
MAX_JSON = 64 * 1024  # bytes of a /train, /scoring or /activelearning JSON body
MAX_SUFFIXES = 200  # characters of an uploaded file name from its first "." (a DICOM UID + ".png" has 60-70)
_CHECK_SUM = re.compile(r"(?:(?:SHA256|SHA512|MD5):)?[0-9a-fA-F]{1,128}", re.IGNORECASE)
MAX_LOG_LINES = 10000  # GET /logs/?lines=N answers at most this many lines
# on every answer: no other site may frame the annotator's page (its Save/Train buttons), no MIME sniffing
_SAFE_HEADERS = ((b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", b"frame-ancestors 'self'"),
                 (b"x-content-type-options", b"nosniff"))
_scratch = threading.local()


def scratch_file(path: str) -> None:
    """Register a temporary file to delete once the current (offloaded) request has been answered."""
    files = getattr(_scratch, "files", None)
    if files is None:
        return
    files.append(path)


class _Refused(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers


class DiskFloor:
    """Keeps ``floor`` bytes free on the disks of ``paths`` (datastore, state, models, temp dir) against
    request bodies. A body is on disk about ``COPIES`` times while it is handled (the Gate's spool,
    Starlette's copy of an upload, the endpoint's own temporary file: measured 450 MB for a 150 MB upload),
    so that is what is charged, and bodies still being handled are charged together (``held``)."""

    COPIES = 3

    def __init__(self, paths: Iterable[str], floor: int):
        self.paths, self.floor = [p for p in paths if p], int(floor)
        self.held = 0
        self._lock = threading.Lock()

    def free(self) -> int | None:
        free = []
        for p in self.paths:
            try:
                free.append(shutil.disk_usage(p).free)
            except OSError:  # e.g. a folder not made yet: the others still count
                continue
        return min(free) if free else None

    def hold(self, nbytes: int, keep: bool = True) -> int:
        """Charge ``nbytes`` more bytes of a body (0: a request that writes, before its body); 507 when they
        do not fit above the floor. Returns what was charged, for ``release``. ``keep=False`` only checks
        (a declared size: holding it would let a client that sends nothing reserve the room)."""
        if self.floor <= 0:
            return 0
        need = nbytes * self.COPIES
        with self._lock:
            free = self.free()
            if free is None:
                return 0
            room = free - self.floor - self.held
            if room <= 0 or need > room:
                logger.warning(f"disk floor: {free >> 20} MB free, {self.floor >> 20} MB kept free, "
                               f"{self.held >> 20} MB held by requests in flight, {need >> 20} MB asked")
                raise _Refused(507, "not stored: the server keeps the last --conf min_free_mb of its disk free and "
                                    "this request does not fit; make room (polypal-trash purge empties the trash "
                                    "of replaced frames and labels) and send it again")
            if not keep:
                return 0
            self.held += need
            return need

    def release(self, charged: int) -> None:
        with self._lock:
            self.held -= charged


class _Charge:
    """What one request has been charged on a DiskFloor: 1 MB steps as its body arrives (its declared size
    is only checked), released once it is answered. Conservative: the bytes spooled so far are both charged
    and already gone from the measured free space."""

    STEP = 1 << 20

    def __init__(self, disk: DiskFloor | None):
        self.disk, self.covered, self.charged = disk, 0, 0

    def cover(self, nbytes: int) -> None:
        """The body has brought ``nbytes`` so far: hold the next MB step when it passes what is held."""
        if self.disk is None or nbytes <= self.covered:
            return
        more = max(nbytes - self.covered, self.STEP)
        self.charged += self.disk.hold(more)
        self.covered += more

    def check(self, declared: int) -> None:
        if self.disk is not None:
            self.disk.hold(declared, keep=False)

    def release(self) -> None:
        if self.disk is not None and self.charged:
            self.disk.release(self.charged)
        self.charged = 0


def _declared_size(scope) -> int | None:
    for k, v in scope.get("headers", []):
        if k.lower() == b"content-length":
            try:
                return max(0, int(v))
            except ValueError:
                raise _Refused(400, "Content-Length is not a number") from None
    return None


def _too_large(limit: int) -> str:
    return f"JSON body larger than {MAX_JSON // 1024} KiB" if limit == MAX_JSON else \
        f"request body larger than {limit} bytes"


async def _spool_body(receive, charge: _Charge | None = None, limit: int = MAX_BODY):
    """The whole request body, read on the event loop (so a slow client holds no worker thread) into a
    spooled temporary file; 413 over ``limit``, 507 when it outgrows the disk floor (``charge``), 408 when
    the client pauses longer than BODY_TIMEOUT."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
    total, more = 0, True
    t0 = time.monotonic()
    # (time a chunk arrived, bytes with it): about one a second, those of the last 2 x BODY_TIMEOUT
    marks: collections.deque = collections.deque()
    step = min(1.0, BODY_TIMEOUT / 10)
    try:
        while more:
            try:
                m = await asyncio.wait_for(receive(), timeout=BODY_TIMEOUT)
            except asyncio.TimeoutError:
                raise _Refused(408, f"the request body did not arrive within {BODY_TIMEOUT:.0f} s") from None
            if m["type"] == "http.disconnect":
                raise _Refused(400, "the client went away")
            chunk = m.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise _Refused(413, _too_large(limit))
            if charge is not None:
                charge.cover(total)
            # a drip holds a socket (and the disk the body is charged for) for ever. What arrived over the last
            # 2 x BODY_TIMEOUT seconds must be what MIN_BODY_RATE gives in BODY_TIMEOUT: one pause as long as
            # allowed, anywhere, and the rest at the rate. Averaged from the start, as before, a fast burst
            # then a byte a minute passed for hours (200 MB: 5.5 h); windows measured each on its own cut a
            # link that stalled just after one began
            now = time.monotonic()
            if not marks or now - marks[-1][0] >= step:
                marks.append((now, total))
            while marks[0][0] < now - 2 * BODY_TIMEOUT:
                marks.popleft()
            # counted: what arrived after the window's first mark. A chunk stands for the time it took to send,
            # so the first one inside the window is not counted (counting it, or one before the window, let
            # a chunk every 59.9 s at 3.3 kB/s pass). That, and the chunks between the window's start and
            # its first mark, can leave up to two steps' worth uncounted: the rule allows for them
            if now - t0 > 2 * BODY_TIMEOUT and total - marks[0][1] < MIN_BODY_RATE * (BODY_TIMEOUT - 2 * step):
                raise _Refused(408, f"the request body is arriving slower than {MIN_BODY_RATE * BODY_TIMEOUT:g} "
                                    f"bytes in {2 * BODY_TIMEOUT:g} s")
            spool.write(chunk)
            more = m.get("more_body", False)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool, total


def _replay(spool, receive, loop=None, size=None):
    """An ASGI receive that hands out the spooled body in 1 MB chunks, then waits on the real one."""
    end = _size(spool) if size is None else size
    done = False

    async def r():
        nonlocal done
        if not done:
            chunk = spool.read(1 << 20)
            done = spool.tell() >= end
            return {"type": "http.request", "body": chunk, "more_body": not done}
        if receive is None:
            return {"type": "http.disconnect"}
        if loop is None:
            return await receive()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(receive(), loop))

    return r


def _size(spool) -> int:
    pos = spool.tell()
    spool.seek(0, os.SEEK_END)
    n = spool.tell()
    spool.seek(pos)
    return n


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: stored, they make every later listing a 500


def _finite(text):
    v = float(text)
    if v != v or v in (float("inf"), float("-inf")):  # 1e999 parses to inf without parse_constant's help
        raise ValueError(f"{text[:20]} is out of range")
    return v


def _json_object(raw, what: str) -> dict:
    try:
        v = json.loads(raw, parse_constant=_no_constant, parse_float=_finite) if raw not in (None, b"", "") else {}
    except (TypeError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep to parse
        raise _Refused(400, f"{what} must be a JSON object (no NaN or Infinity)") from None
    if not isinstance(v, dict):
        raise _Refused(400, f"{what} must be a JSON object, got {type(v).__name__}")
    if not _encodable(v):
        raise _Refused(400, f"{what} holds text that is not valid Unicode (a lone surrogate such as \\ud800)")
    return v


def _encodable(v) -> bool:
    """Every key and string in a parsed JSON value encodes as UTF-8. JSON allows "\\ud800" (a lone
    surrogate); stored, it makes every later answer that contains it (listings, /train, leases) a 500."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return True


def _check_keys(d: dict, keys: frozenset, what: str) -> None:
    bad = sorted(set(d) & keys)
    if bad:
        raise _Refused(400, f"{what} keys {bad} are set by the server, not by clients")


async def _check_body(scope, spool, size: int, path: str) -> None:
    """JSON bodies of requests that start subprocesses, and forms: a JSON object each, no keys the server
    owns (e.g. ``bundle_path``, which MONAI Label puts on a subprocess's PYTHONPATH), file names without NUL
    and of a sane length. A form is checked whatever its encoding (multipart or urlencoded, any letter
    case), size or Content-Type header: it is parsed here exactly as the endpoint will parse it."""
    from starlette.requests import Request

    if path.startswith(_JSON_PATHS):
        if size > MAX_JSON:  # MONAI Label puts it on a subprocess's command line (one argument: 128 KiB at most)
            raise _Refused(413, f"JSON body larger than {MAX_JSON // 1024} KiB")
        body = spool.read()
        spool.seek(0)
        if body.strip():
            req = _json_object(body, "the request body")
            _check_keys(req, _FORBIDDEN_KEYS, "request")
            if path.startswith("/train/") and "model" in req and req["model"] != path[len("/train/"):].strip("/"):
                raise _Refused(400, "the request body's model differs from the one in the path")
            if path.startswith("/scoring/") and "method" in req and req["method"] != path[len("/scoring/"):].strip("/"):
                raise _Refused(400, "the request body's method differs from the one in the path")
            if path.startswith("/activelearning/") and not isinstance(req.get("strategy", ""), str):
                raise _Refused(400, "strategy must be a string")
            if path.startswith("/activelearning/") and "strategy" in req and \
                    req["strategy"] != path[len("/activelearning/"):].strip("/"):
                raise _Refused(400, "the request body's strategy differs from the one in the path")
        return
    form_key = next((k for k in _FORMS if path == k or (k == "/infer/" and path.startswith(k))), None)
    if form_key is None or (form_key == "/infer/" and scope.get("method") != "POST"):
        return  # (a PUT or DELETE on /infer/: the route's 405, not "send an image id")
    if size > (1 << 20):  # parsing a large upload (up to MAX_BODY) must not stall the event loop
        await anyio.to_thread.run_sync(lambda: asyncio.run(_check_form(scope, spool, size, form_key)))
    else:
        await _check_form(scope, spool, size, form_key)


_FILE_FIELDS = ("file", "label")  # the form fields MONAI Label's routes read as uploaded files


def _form_problem(e: Exception) -> str:
    """What is wrong with a form body, in Starlette's words where it has them (a part over 1 MB, a missing
    boundary, too many part headers: fixed texts, no bytes of the body); else "malformed form body"."""
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException

    said = e.message if isinstance(e, MultiPartException) else \
        e.detail if isinstance(e, StarletteHTTPException) and e.status_code == 400 else None  # (the same,
    # raised as a 400 when the scope has an app: the server's case)
    if isinstance(said, str) and 0 < len(said) < 200:
        return f"malformed form body: {said}"
    return "malformed form body"


async def _check_model_form(scope, spool, size: int) -> None:
    """A model upload's form: one file and at most 2 other fields, each field under 1 MB in memory (parsed
    with Starlette's defaults, 300 parts of 1 MB each held 450 MB of the server's memory for 48 s)."""
    from starlette.requests import Request

    async def parse():
        try:
            form = await Request(scope, _replay(spool, None, size=size)).form(max_files=1, max_fields=2)
        except Exception as e:  # noqa: BLE001 - a malformed body
            if "Too many" in str(getattr(e, "message", e)):
                raise _Refused(400, "too many parts in the form: a model upload is one file (form field 'file') "
                                    "and at most 2 other fields") from None
            raise _Refused(400, _form_problem(e)) from None
        finally:
            spool.seek(0)
        try:
            if getattr(form.get("file"), "filename", None) is None:
                raise _Refused(400, "send the model as form field 'file', a file part")
        finally:
            await form.close()

    if size > (1 << 20):  # parsing a large upload (up to MAX_BODY) must not stall the event loop
        await anyio.to_thread.run_sync(lambda: asyncio.run(parse()))
    else:
        await parse()


async def _check_form(scope, spool, size: int, form_key: str) -> None:
    from starlette.requests import Request

    field, keys = _FORMS[form_key]
    if keys is RESERVED_IMAGE_KEYS and _RESERVE_DICOM_KEYS[0]:
        keys = keys | DICOM_INFO_KEYS
    try:
        # at most the parts MONAI Label's routes read (a file or two: frame or label, and infer's label; a
        # params/info field), each under 1 MB held in memory by the parser: 280 parts of 1 MB each were held
        # whole, here and again by FastAPI (a review, 2026-12-07)
        form = await Request(scope, _replay(spool, None, size=size)).form(max_files=MAX_FORM_FILES,
                                                                          max_fields=MAX_FORM_FIELDS)
    except Exception as e:  # noqa: BLE001 - a malformed body
        if "Too many" in str(getattr(e, "message", e)):
            raise _Refused(400, f"too many parts in the form: at most {MAX_FORM_FILES} files and "
                                f"{MAX_FORM_FIELDS} other fields") from None
        raise _Refused(400, _form_problem(e)) from None
    finally:
        spool.seek(0)
    try:
        for key in _FILE_FIELDS:
            if isinstance(form.get(key), str):  # (e.g. a part named by filename*= only, which is not read as a
                # file: FastAPI's 422 then echoed the part's bytes back, up to 1 MB)
                raise _Refused(400, f"form field {key!r} must be a file part (Content-Disposition with filename=)")
        for _, v in form.multi_items():
            name = getattr(v, "filename", None)
            if name is not None and ("\x00" in name or len(_utf8(name)) > 255):
                raise _Refused(400, "uploaded file name has a NUL or is longer than 255 bytes")
            if name is not None and len(_utf8("".join(pathlib.PurePath(name).suffixes))) > MAX_SUFFIXES:
                # MONAI Label keeps every suffix on its temporary copy ("tmpXXXXXXXX" + suffixes): too long a
                # name for the file system there (a 500), so refused here
                raise _Refused(400, f"uploaded file name has more than {MAX_SUFFIXES} bytes from its first "
                                    f"'.': name it like frame.png or label.nii.gz")
        if form_key == "/infer/" and getattr(form.get("label"), "filename", None) is not None:
            raise _Refused(400, "polyp-al's inference takes an image, not a label (no scribbles)")
        if form_key == "/infer/" and not any(_query(scope).get("image", [])) and \
                getattr(form.get("file"), "filename", None) is None:
            raise _Refused(400, "send an image id (?image=ID) or upload the image (form field 'file')")
        for value in form.getlist(field):  # every copy of the field, not only the one a parser keeps
            if not isinstance(value, str):
                raise _Refused(400, f"{field} must be a JSON object, not a file")
            params = _json_object(value, field)
            _check_keys(params, keys, field)
            if form_key in ("/datastore/", "/datastore/image") and params.get("replace") is True:
                _may_replace(scope)
            if form_key == "/infer/" and (params.get("save_label") or params.get("store_seg")):
                _may_store_predictions(scope)
            if form_key in ("/datastore/label/info", "/datastore/updatelabelinfo") and "client_id" in params:
                # the rule of saves and next-sample (before, a terminal escape or a list went in through here)
                from polypal.vocab import client_name

                try:
                    client_name(params["client_id"])
                except ValueError as e:
                    raise _Refused(400, f"{field}: {e}") from None
    finally:
        await form.close()


def _needs_role(scope, role: str, what: str) -> None:
    """With authentication on, 403 unless the request's user has ``role`` for ``what`` (a request whose params
    ask for more than its endpoint's role allows)."""
    user = scope.get("polypal.user")
    if user is not None and role not in (user.roles or []):
        raise _Refused(403, f'role "{role}" is required to {what}')


def _may_replace(scope) -> None:
    """A frame replace moves the old frame and every annotator's labels of it to the trash, as a delete does:
    it takes the role a delete takes (admin), not an upload's (annotator)."""
    from monailabel.config import settings

    _needs_role(scope, settings.MONAI_LABEL_AUTH_ROLE_ADMIN,
                "replace a frame (its labels go to the trash, as with a delete)")


def _may_store_predictions(scope) -> None:
    """An inference asked to store its prediction (``save_label``: as the frame's ``original`` label, the one
    before kept in the trash; ``store_seg``: as a SEG series in the PACS) writes to the datastore: it takes
    the annotator role, not the user role that inference takes."""
    from monailabel.config import settings

    _needs_role(scope, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
                "store a prediction (save_label, store_seg); without them inference only answers it")


def _utf8(text: str) -> bytes:
    """A name as the file system counts it (255 bytes, not characters)."""
    return text.encode("utf-8", "surrogatepass")


def _decoded(path: str) -> str:
    """The path percent-decoded until it no longer changes: what a server behind a proxy may finally see
    (``%252e%252e`` is ``..`` to Orthanc behind MONAI Label's DICOMweb proxy)."""
    for _ in range(5):
        once = urllib.parse.unquote(path)
        if once == path:
            break
        path = once
    return path


def _ohif_folder(rel: str) -> bool:
    """True where MONAI Label's /ohif/<rel> would answer with a folder (``.``, ``assets``): its handler checks
    only that the path exists, and a FileResponse of a folder is a 500 with a traceback."""
    if not rel:
        return False
    import monailabel.endpoints.ohif as ohif

    root = os.path.join(os.path.dirname(os.path.realpath(ohif.__file__)), "static", "ohif")
    target = os.path.join(root, rel.replace("/", os.pathsep))  # as MONAI Label builds it
    return os.path.exists(target) and not os.path.isfile(target)


def _in_thread(app, scope, receive, send, loop):
    """Run one request through ``app`` on a new event loop in this worker thread (MONAI Label's
    endpoints are ``async def`` but block inside), talking to the server's loop for I/O."""

    async def s(message):  # a client that stops reading: connections.py aborts it, and this send returns
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(send(message), loop))

    _scratch.files = []
    try:
        asyncio.run(app(scope, receive, s))
    finally:
        for f in _scratch.files:
            try:
                os.unlink(f)
            except OSError:
                pass
        _scratch.files = None


def _route_path(scope) -> str:
    """The path the router routes on: the request's path less the root path. With ``start_server --root_path
    /al`` (a proxy that strips /al), uvicorn puts /al in front of every path and Starlette's router takes it
    off again (``get_route_path``): the rules here, compared with "/al/model/...", matched nothing and let
    every request through. Taken off here exactly as the router does, so that both see one path (a request
    for /al/al/model/... is checked and routed as /al/model/...), and the scope goes on unchanged (the root
    path stays in redirects)."""
    path, root = scope.get("path", ""), scope.get("root_path") or ""
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root):] if path[len(root)] == "/" else path


class Gate:
    """ASGI middleware in front of MONAI Label's app: see the module docstring."""

    def __init__(self, app, guard: OriginPolicy, model_app=None, precheck=None, disk: DiskFloor | None = None,
                 signed_in: bool = False):
        self.app, self.guard, self.model_app, self.precheck, self.disk = app, guard, model_app, precheck, disk
        self.signed_in = signed_in  # MONAI Label's authentication is on: every request needs a token (auth.py)

    async def _answer(self, scope, receive, send, status: int, detail: str, headers: dict | None = None):
        if _refusals.allow():  # at most REFUSALS_PER_MINUTE lines, each cut short: a client sending 8000
            # refused requests with 15 KB paths in 3 s rotated every earlier line out of the log
            more = _refusals.take_dropped()
            logger.warning(f"refused {str(scope.get('method'))[:10]} {str(scope.get('path'))[:200]!r}: {detail[:300]}"
                           + (f" ({more} more refusals not logged)" if more else ""))
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _with_safe_headers(send)
        if _SECRETS and _route_path(scope).startswith(_LOG_PATHS):
            send = _redacted(send, _SECRETS)
        try:
            return await self._handle(scope, receive, send)
        except _Refused as e:
            return await self._answer(scope, receive, send, e.status, e.detail, e.headers)

    async def _handle(self, scope, receive, send):
        why = self.guard.refusal(scope)
        if why:
            raise _Refused(403, why)
        path, method = _route_path(scope), scope.get("method", "GET")
        if self.signed_in:
            await _signed_in(scope, path, method)
        plain = _decoded(path)
        if path.startswith(_GONE) or ".." in plain or "\x00" in plain or (path.startswith("/proxy/") and "%" in plain):
            raise _Refused(404, f"{path[:80]!r} is not part of polyp-al")
        if path.startswith("/ohif/") and _ohif_folder(plain[len("/ohif/"):]):
            raise _Refused(404, "not a file of the viewer")  # MONAI Label's /ohif serves a folder: a 500
        if path.startswith(("/ohif/", "/static/")) and plain.lower().rstrip("/").endswith((".html", ".htm")) and \
                plain.rsplit("/", 1)[-1] != "index.html":
            # MONAI Label's bundled viewer's silent-refresh.html (OIDC sign-in, unused), at /ohif/ and again
            # under its /static/ mount, loads a script from a CDN into this origin
            raise _Refused(404, "not a page of the viewer")
        if path.rstrip("/") == "/session" or path.startswith("/session/"):  # answered before any body is read
            raise _Refused(406, "sessions are off in polyp-al: send an image id or upload the image")
        if path.rstrip("/") == "/logs":  # MONAI Label sends the whole log file for lines <= 0
            for v in _query(scope).get("lines", []):
                try:
                    n = int(v)
                except ValueError:
                    n = 0
                if not 0 < n <= MAX_LOG_LINES:
                    raise _Refused(400, f"lines must be 1-{MAX_LOG_LINES}")
            # MONAI Label's HTML log viewer loads jQuery and ACE from CDNs into this origin (where a script has
            # the whole API's rights): the log is always answered as plain text
            q = scope.get("query_string", b"")
            scope = {**scope, "query_string": (q + b"&" if q else b"") + b"text=true&html=false"}
        if path.rstrip("/") == "/datastore" and "train" in _query(scope).get("output", []):
            # MONAI Label answers with every labeled frame's and label's absolute path on the server (and a
            # DICOMweb datastore downloads every label first): ids and tags are in ?output=all
            raise _Refused(403, "GET /datastore/?output=train is not served by polyp-al (it lists server file "
                                "paths): ?output=all lists the frames and their label tags, polypal-export "
                                "writes the labeled set")
        if path.startswith(("/train", "/scoring")) and method == "POST":
            q = _query(scope)
            if path.rstrip("/") == "/train":  # MONAI Label queues one training per trainer for this one
                raise _Refused(400, "name the model: POST /train/polyp_seg")
            if path.rstrip("/") == "/scoring":  # ...and one scoring run per method
                raise _Refused(400, "name the method: POST /scoring/polyp_al")
            if any(v.strip().lower() not in _FALSE for v in q.get("enqueue", [])):
                raise _Refused(400, "polyp-al runs one training (and one scoring) at a time and queues none: POST "
                                    "again when the running one has finished (GET /train/ shows it)")
        if path.startswith("/proxy/") and method not in ("GET", "HEAD"):  # OHIF's "store SEG" would skip the checks
            raise _Refused(405, "the DICOMweb proxy is read-only in polyp-al: save labels with PUT /datastore/label "
                                "(checked, then stored as DICOM SEG)")
        if _RESERVE_DICOM_KEYS[0] and (
                (method == "PUT" and path.rstrip("/") in ("/datastore", "/datastore/image"))
                or (method == "DELETE" and path.rstrip("/") in ("/datastore", "/datastore/image", "/datastore/label"))):
            # MONAI Label's local copy behind a DICOMweb datastore took any upload, unchecked (a text file too),
            # and a delete dropped a frame's cached copy and its label record, not the series
            raise _Refused(405, "with a DICOMweb datastore the frames and labels are series in the DICOMweb "
                                "server: add or delete them there (polypal-dicomweb load adds frames); save a "
                                "corrected label with PUT /datastore/label")
        declared = _declared_size(scope)
        if declared is not None and declared > MAX_BODY:
            raise _Refused(413, f"request body larger than {MAX_BODY} bytes")
        if path.startswith("/model/") and method in ("PUT", "DELETE"):
            if self.model_app is None:
                raise _Refused(403, MODEL_UPLOAD_OFF)
            if method == "DELETE":
                return await self.model_app(scope, receive, send)
            charge = _Charge(self.disk)
            try:
                charge.check(declared or 0)
                spool, size = await _spool_body(receive, charge)  # size, pace and disk limits as below
                try:
                    await _check_model_form(scope, spool, size)
                    return await self.model_app(scope, _replay(spool, receive, None, size), send)
                finally:
                    spool.close()
            finally:
                charge.release()
        q = _query(scope) if path.startswith(("/infer/", "/datastore", "/activelearning/")) else {}
        for key in ("image", "id", "label"):
            for v in q.get(key, []):
                if v and not _valid_id(v):
                    shown = "(a path: send the id of a datastore image)" if ("/" in v or "\\" in v) else repr(v[:80])
                    if path.startswith("/infer/") or method in ("GET", "HEAD"):
                        raise _Refused(404, f"unknown image id {shown}")
                    raise _Refused(400, f"invalid image id {shown}: use letters, digits, '_', '-' and '.' only, "
                                        f"at most 128 characters")
        if path.startswith("/infer/") and "dicom_seg" in q.get("output", []):
            raise _Refused(400, "output=dicom_seg is not supported by polyp-al; with a DICOMweb datastore send "
                                "params {\"store_seg\": true} to store the prediction as DICOM SEG")
        if path.startswith("/infer/") and any(q.get("session_id", [])):
            raise _Refused(400, "sessions are off in polyp-al: send an image id or upload the image")
        for v in q.get("tag", []):
            if v and not _valid_id(v):
                raise _Refused(400, f"invalid label tag {v[:80]!r}")
        if path.rstrip("/") == _EXPORT:
            for v in q.get("limit_cases", []):
                # MONAI Label's [:limit]: -1 dropped the last frame; "²".isdigit() is True but int("²") fails,
                # and so does int() of more than 4300 digits
                if not (v.isascii() and v.isdigit() and len(v) <= 9 and int(v) >= 1):
                    raise _Refused(400, "limit_cases must be a whole number >= 1")
        for v in q.get("check_sum", []):
            if path.rstrip("/") == "/datastore/image" and not _CHECK_SUM.fullmatch(v):
                raise _Refused(400, "check_sum must be a hex digest, optionally after SHA256:, SHA512: or MD5:")
        sign_in = self.signed_in and path.startswith(_SIGN_IN)
        offload = path.startswith(_OFFLOAD) or sign_in
        with_body = offload and method not in ("OPTIONS", "HEAD", "GET")
        # a JSON body is refused at MAX_JSON from its Content-Length (or, sent chunked, as it passes MAX_JSON):
        # before, it was checked only once the whole body, up to MAX_BODY (1 GiB), was on disk
        limit = SIGN_IN_MAX_BODY if sign_in else MAX_JSON if path.startswith(_JSON_PATHS) else min(
            max_upload(), MAX_BODY) if path.startswith(("/datastore", "/infer/")) else MAX_BODY
        if method not in ("POST", "PUT"):  # no endpoint reads a DELETE's (or PATCH's...) body, and a DELETE's is
            limit = min(limit, MAX_JSON)  # not charged against the disk floor: 400 MB of one went 150 MB past it
        if with_body and declared is not None and declared > limit:
            raise _Refused(413, _too_large(limit))
        user = scope.get("polypal.user") if with_body else None  # (authentication on)
        client = None
        if user is not None:
            if not _UPLOADS.take(user.username):
                raise _Refused(429, f"{UPLOADS_PER_USER} requests with a body of this user are in progress: "
                                    f"send the next when one has been answered")
        elif with_body:  # sign-ins in a count of their own (counted with the uploads, 16 slow sign-ins from a
            # shared proxy address locked every user out of signing in)
            client = str((scope.get("client") or ("unknown",))[0])
            count, n = (_CLIENT_SIGN_INS, SIGN_INS_PER_CLIENT) if sign_in else (_CLIENT_UPLOADS, UPLOADS_PER_CLIENT)
            if not count.take(client):
                raise _Refused(429, f"{n} {'sign-ins' if sign_in else 'requests with a body'} from this address "
                                    f"are in progress: send the next when one has been answered")
        if user is None and client is None:
            return await self._spooled(scope, receive, send, path, method, declared, with_body, offload, limit)
        given = []

        def give():  # once: when the answer's last byte is sent, else when the request is over
            if not given:
                given.append(True)
                if user is not None:
                    _UPLOADS.give(user.username)
                else:
                    (_CLIENT_SIGN_INS if sign_in else _CLIENT_UPLOADS).give(client)

        async def send_then_give(message):
            # (given back after the thread's clean-up, a client that sent its next request as soon as the
            # answer came was refused as one request too many: 34 of 240 saves from 16 one-at-a-time clients)
            await send(message)
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                give()

        try:
            return await self._spooled(scope, receive, send_then_give, path, method, declared, with_body, offload,
                                       limit)
        finally:
            give()

    async def _spooled(self, scope, receive, send, path, method, declared, with_body, offload, limit):
        charged = (with_body and method != "DELETE") or (method == "GET" and path.startswith(_EXPORT))
        charge = _Charge(self.disk if charged else None)  # deletes move files to the trash: no room needed
        try:
            charge.check((declared or 0) if with_body else 0)  # too large, or the disk under its floor: 507
            spool, size = (await _spool_body(receive, charge, limit)) if with_body else (None, 0)
        except BaseException:
            charge.release()
            raise
        try:
            if spool is not None:
                await _check_body(scope, spool, size, path)
            if self.precheck is not None:
                try:
                    problem = await anyio.to_thread.run_sync(self.precheck, method, path)
                except Exception:  # noqa: BLE001 - e.g. the DICOMweb server is down: let the endpoint answer
                    problem = None
                if problem:
                    raise _Refused(*problem)
            if spool is None:
                if offload and method in ("GET", "HEAD"):  # downloads, the proxy, token checks: off the loop
                    loop = asyncio.get_running_loop()
                    return await anyio.to_thread.run_sync(_in_thread, self.app, scope, _threadsafe(receive, loop),
                                                          send, loop, limiter=_limiter(path))
                return await self.app(scope, receive, send)
            loop = asyncio.get_running_loop()
            return await anyio.to_thread.run_sync(_in_thread, self.app, scope, _replay(spool, receive, loop, size),
                                                  send, loop, limiter=_body_limiter(method, path))
        finally:
            if spool is not None:
                spool.close()
            charge.release()


async def _signed_in(scope, path: str, method: str) -> None:
    """With authentication on: a valid token before anything else is read or run (auth.py). A CORS preflight
    carries no token (the origin rule has passed it)."""
    if method == "OPTIONS" or auth.is_free(path):
        return
    try:  # in a thread: the first token fetches the realm's key (a blocking request)
        scope["polypal.user"] = await anyio.to_thread.run_sync(auth.check, scope, auth.role_for(method, path))
    except auth.Unauthorized as e:
        raise _Refused(e.status, e.detail, {"WWW-Authenticate": "Bearer"} if e.status == 401 else None) from None


# the password of --studies http://user:password@host/...: MONAI Label logs the address (before the app is
# loaded, in every training and scoring subprocess too), and /logs, /train/ and /scoring/ answer those lines
_SECRETS: list[bytes] = []
_LOG_PATHS = ("/logs", "/train", "/scoring", "/batch")


def set_secrets(studies: str) -> None:
    """Remember the password of the studies address, as written and percent-decoded, to redact it."""
    from urllib.parse import unquote, urlsplit

    try:
        pw = urlsplit(str(studies)).password
    except ValueError:
        pw = None
    forms = {x for x in (pw, unquote(pw or "")) if x}
    forms |= {json.dumps(x)[1:-1] for x in forms} | {json.dumps(x, ensure_ascii=False)[1:-1] for x in forms}
    _SECRETS[:] = sorted({x.encode() for x in forms}, key=len, reverse=True)  # (as written, decoded, in JSON)


def _redacted(send, secrets: list[bytes]):
    """The answer with every secret replaced by ***: held whole (these answers are text, at most
    MAX_LOG_LINES lines), its length set again."""
    held: dict = {"start": None, "body": []}

    async def s(message):
        if message["type"] == "http.response.start":
            held["start"] = message
            return
        if message["type"] != "http.response.body" or held["start"] is None:
            return await send(message)
        held["body"].append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(held["body"])
        for x in secrets:
            body = body.replace(x, b"***")
        start = held["start"]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send(dict(start, headers=headers + [(b"content-length", str(len(body)).encode())]))
        await send({"type": "http.response.body", "body": body})
    return s


def _with_safe_headers(send):
    async def s(message):
        if message["type"] == "http.response.start":
            have = {k.lower() for k, _ in message.get("headers", [])}
            message = dict(message, headers=list(message.get("headers", [])) +
                           [(k, v) for k, v in _SAFE_HEADERS if k not in have])
        await send(message)
    return s


def _threadsafe(receive, loop):
    async def r():
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(receive(), loop))
    return r


def _valid_id(v: str) -> bool:
    try:
        check_name("id", v)
        return True
    except InvalidName:
        return False


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
    from lib import connections
    from lib.dicom_proxy import guard_proxy
    from lib.downloads import guard_downloads

    guard_proxy()
    guard_downloads()
    connections.install()
    auth.install(fastapi_app, on_sign_out=getattr(app, "on_sign_out", None))
    policy = OriginPolicy(origins, _split(allowed_hosts))
    from lib.dicomweb_datastore import PolypDICOMWebDatastore

    _RESERVE_DICOM_KEYS[0] = isinstance(app.datastore(), PolypDICOMWebDatastore)
    set_secrets(app.studies)
    cfg = app.cfg
    disk = DiskFloor([None if app.studies.startswith(("http://", "https://")) else app.studies, cfg.state_dir,
                      os.path.dirname(cfg.model_path), tempfile.gettempdir()], cfg.min_free_mb * (1 << 20))
    fastapi_app.middleware_stack = Gate(fastapi_app.middleware_stack, policy, model_app,
                                        precheck=getattr(app, "precheck", None), disk=disk,
                                        signed_in=auth.enabled())
    logger.info(f"HTTP surface hardened: model upload {'on' if model_app else 'off'}, sessions off, writes keep "
                f"{cfg.min_free_mb:.0f} MB free, "
                f"origins allowed: same-origin{', ' + ', '.join(origins) if origins else ''} (this, not "
                f"MONAI Label's 'Allow Origins' line above, is what the server enforces)")
