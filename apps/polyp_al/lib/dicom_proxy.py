"""MONAI Label's DICOMweb proxy (``/proxy/dicom``, which OHIF reads through), with timeouts.

MONAI Label calls the DICOMweb server with no timeout, so a stalled server held a worker thread for ever.
``guard_proxy`` (called by ``security.harden``) gives its calls a connect and read timeout of
``POLYPAL_PROXY_TIMEOUT`` seconds (and a whole answer ``POLYPAL_PROXY_DEADLINE`` seconds and at most
``POLYPAL_PROXY_MAX_MB``) and turns failures into 502/504 answers. How many proxy requests run at
once (``POLYPAL_PROXY_THREADS``) and that the proxy is read-only are the Gate's rules (``security.py``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re

logger = logging.getLogger(__name__)

# the query string of the request being proxied (MONAI Label's proxy sends the path alone: OHIF's study search,
# ``/studies?PatientName=...&limit=101``, listed every study in the DICOMweb server)
_QUERY: contextvars.ContextVar[str] = contextvars.ContextVar("polypal_proxy_query", default="")
_UIDP = r"/[0-9.]+/"
_SEARCH = re.compile(rf"(?:studies(?:{_UIDP}(?:series(?:{_UIDP}instances)?|instances))?|series(?:{_UIDP}instances)?"
                     rf"|instances)/?")  # QIDO-RS's searches

PROXY_TIMEOUT = float(os.environ.get("POLYPAL_PROXY_TIMEOUT", 60))  # seconds the DICOMweb server may pause
# an answer is held in memory whole before it is relayed (MONAI Label's proxy sends bytes): at most this many
# MB each (any user could ask for a whole large study from a real PACS, several at once), and read within
# this many seconds in all (the timeout above is per read: a server trickling bytes held a thread for ever)
PROXY_MAX_BYTES = int(float(os.environ.get("POLYPAL_PROXY_MAX_MB", 256)) * (1 << 20))
PROXY_DEADLINE = float(os.environ.get("POLYPAL_PROXY_DEADLINE", 300))


class ProxyRequests:
    """What MONAI Label's proxy module sees as ``requests``: the same calls, with a timeout (it sets none, so
    a stalled DICOMweb server held a worker thread for ever) and the body read inside it; a timeout is a
    504 and an unreachable server a 502, not a 500."""

    def __getattr__(self, name):
        import requests

        return getattr(requests, name)

    @staticmethod
    def _call(method: str, url: str, **kw):
        import io

        import requests
        from fastapi import HTTPException
        from urllib3.exceptions import HTTPError as Urllib3Error
        from urllib3.exceptions import TimeoutError as Urllib3Timeout

        if not str(url).lower().startswith(("http://", "https://")):  # frames in a folder: nothing to proxy to
            raise HTTPException(status_code=404, detail="no DICOMweb server is configured (--studies is a folder)")
        kw["timeout"] = (min(10.0, PROXY_TIMEOUT), PROXY_TIMEOUT)
        query = _QUERY.get()
        if query:
            url = f"{url}?{query}"
        try:
            r = requests.request(method, url, **kw)
            if kw.get("stream"):  # the proxy reads r.raw: read it here, under the timeouts, and hand over the bytes
                r.raw = io.BytesIO(_read_capped(r))
        except requests.ConnectTimeout:  # also a Timeout: a host that drops connections is unreachable
            logger.warning("DICOMweb proxy: no connection to the DICOMweb server")
            raise HTTPException(status_code=502, detail="the DICOMweb server is unreachable") from None
        except (requests.Timeout, Urllib3Timeout) as e:
            logger.warning(f"DICOMweb proxy: no answer within {PROXY_TIMEOUT:g} s ({type(e).__name__})")
            raise HTTPException(status_code=504, detail=f"the DICOMweb server did not answer within "
                                                        f"{PROXY_TIMEOUT:g} s") from None
        except (requests.RequestException, Urllib3Error) as e:
            logger.warning(f"DICOMweb proxy: {type(e).__name__}")
            raise HTTPException(status_code=502, detail="the DICOMweb server is unreachable or broke off") from None
        if r.status_code in (401, 403):
            # the DICOMweb server's own challenge (WWW-Authenticate: Basic) relayed to a browser made it ask the
            # annotator for the PACS password, which this proxy never sends on: the server's account is wrong
            logger.error(f"DICOMweb proxy: the DICOMweb server refused polyp-al's credentials ({r.status_code}); "
                         f"check MONAI_LABEL_DICOMWEB_USERNAME / MONAI_LABEL_DICOMWEB_PASSWORD")
            raise HTTPException(status_code=502, detail="the DICOMweb server refused this server's credentials "
                                                        "(MONAI_LABEL_DICOMWEB_USERNAME / _PASSWORD)")
        for h in ("WWW-Authenticate", "Set-Cookie"):  # the DICOMweb server's sign-in and session: not this origin's
            r.headers.pop(h, None)
        return r

    def get(self, url, **kw):
        return self._call("GET", url, **kw)

    def post(self, url, **kw):
        return self._call("POST", url, **kw)


def _read_capped(r) -> bytes:
    """The answer's body, at most PROXY_MAX_BYTES (502 past it) and within PROXY_DEADLINE seconds (504)."""
    import time

    from fastapi import HTTPException

    mb = f"{PROXY_MAX_BYTES / (1 << 20):g} MB"
    over = HTTPException(status_code=502, detail=f"the DICOMweb server's answer is over {mb}, more than the "
                                                 f"proxy relays (POLYPAL_PROXY_MAX_MB)")
    try:
        declared = int(r.headers.get("Content-Length") or -1)
    except ValueError:
        declared = -1
    if declared > PROXY_MAX_BYTES:
        r.close()
        logger.warning(f"DICOMweb proxy: an answer of {declared} bytes refused (over {mb})")
        raise over
    buf, size, end = [], 0, time.monotonic() + PROXY_DEADLINE
    read = getattr(r.raw, "read1", r.raw.read)  # what has arrived (read() waits for the whole chunk)
    while True:
        chunk = read(1 << 20)
        if not chunk:
            return b"".join(buf)
        size += len(chunk)
        buf.append(chunk)
        if size > PROXY_MAX_BYTES:
            r.close()
            logger.warning(f"DICOMweb proxy: an answer cut off past {mb}")
            raise over
        if time.monotonic() > end:
            r.close()
            logger.warning(f"DICOMweb proxy: an answer still coming after {PROXY_DEADLINE:g} s: cut off")
            raise HTTPException(status_code=504, detail=f"the DICOMweb server did not send its answer within "
                                                        f"{PROXY_DEADLINE:g} s (POLYPAL_PROXY_DEADLINE)")


def guard_proxy() -> None:
    """MONAI Label's DICOMweb proxy calls the DICOMweb server through ProxyRequests, with the request's
    query string (its routes call the module's ``proxy_dicom`` by name: the wrapper puts the query where
    ProxyRequests finds it)."""
    import monailabel.endpoints.proxy as proxy

    proxy.requests = ProxyRequests()
    relay = getattr(proxy.proxy_dicom, "__wrapped__", proxy.proxy_dicom)

    async def proxy_dicom(request, op: str, path: str):
        # QIDO searches through /proxy/dicom/qido (OHIF's qidoRoot) only: another path's query reaches the
        # DICOMweb server's other options (Orthanc's ``/dicom-web/servers?expand`` lists its remote servers with
        # their addresses and user names; a review)
        token = _QUERY.set(request.url.query if op == "qido" and _SEARCH.fullmatch(str(path)) else "")
        try:
            return await relay(request, op, path)
        finally:
            _QUERY.reset(token)

    proxy_dicom.__wrapped__ = relay
    proxy.proxy_dicom = proxy_dicom
