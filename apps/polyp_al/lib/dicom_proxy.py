"""MONAI Label's DICOMweb proxy (``/proxy/dicom``, which OHIF reads through), with timeouts.

MONAI Label calls the DICOMweb server with no timeout, so a stalled server held a worker thread for ever.
``guard_proxy`` (called by ``security.harden``) gives its calls a connect and read timeout of
``POLYPAL_PROXY_TIMEOUT`` seconds and turns failures into 502/504 answers. How many proxy requests run at
once (``POLYPAL_PROXY_THREADS``) and that the proxy is read-only are the Gate's rules (``security.py``).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

PROXY_TIMEOUT = float(os.environ.get("POLYPAL_PROXY_TIMEOUT", 60))  # seconds the DICOMweb server may pause


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
        try:
            r = requests.request(method, url, **kw)
            if kw.get("stream"):  # the proxy reads r.raw: read it here, under the timeout, and hand over the bytes
                r.raw = io.BytesIO(r.raw.read())
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


def guard_proxy() -> None:
    """MONAI Label's DICOMweb proxy calls the DICOMweb server through ProxyRequests."""
    import monailabel.endpoints.proxy as proxy

    proxy.requests = ProxyRequests()
