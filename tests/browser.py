"""Headless Chromium driven through the DevTools protocol (for OHIF tests): open, click, read, screenshot."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,800", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium page. ``js`` evaluates an expression, ``wait_js`` polls one until truthy."""

    def __init__(self):
        import websocket  # websocket-client

        self._profile = tempfile.mkdtemp(prefix="polypal-chromium-")
        self.proc = subprocess.Popen([chromium_path(), *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self._profile) / "DevToolsActivePort"
        t0 = time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() - t0 > 60 or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []  # DevTools events seen while waiting for answers (console, exceptions)
        self.requests: list[str] = []  # URLs the page asked for (after ``watch_network``)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if "method" in msg and msg["method"] in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown"):
                self.events.append(msg)
                del self.events[:-500]
            if msg.get("method") == "Network.requestWillBeSent":
                self.requests.append(msg["params"]["request"]["url"])
                del self.requests[:-5000]
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def watch_network(self):
        """Record every URL the page requests from now on (``self.requests``)."""
        self.send("Network.enable")

    def goto(self, url: str):
        self.send("Page.navigate", url=url)

    def js(self, expr: str):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error in {expr[:80]!r}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def wait_js(self, expr: str, timeout: float = 60, what: str = ""):
        t0 = time.time()
        while time.time() - t0 < timeout:
            v = self.js(f"(() => {{ try {{ return ({expr}); }} catch (e) {{ return null; }} }})()")  # page may be loading
            if v:
                return v
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or expr}")

    def console(self, types=("error", "warning")) -> list[str]:
        """Console messages of these types and uncaught exceptions seen so far, as text."""
        out = []
        for e in self.events:
            p = e["params"]
            if e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text"))[:500])
            elif p.get("type") in types:
                out.append(p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))[:300]
                                                      for a in p.get("args", [])))
        return out

    # real input events (Input.dispatchMouseEvent), in CSS pixels of the page
    def mouse(self, kind: str, x: float, y: float, buttons: int = 0, button: str = "none", **kw):
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, buttons=buttons, button=button, **kw)

    def click(self, x: float, y: float):
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, buttons=1, button="left", clickCount=1)
        self.mouse("mouseReleased", x, y, buttons=0, button="left", clickCount=1)

    def drag(self, points, step_px: float = 4.0, pause: float = 0.0):
        """Press at the first point, move along the polyline (a move every ``step_px``), release at the last."""
        (x0, y0), rest = points[0], points[1:]
        self.mouse("mouseMoved", x0, y0)
        self.mouse("mousePressed", x0, y0, buttons=1, button="left", clickCount=1)
        for x1, y1 in rest:
            n = max(1, int(np.hypot(x1 - x0, y1 - y0) / step_px))
            for i in range(1, n + 1):
                self.mouse("mouseMoved", x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, buttons=1, button="left")
                if pause:
                    time.sleep(pause)
            x0, y0 = x1, y1
        self.mouse("mouseReleased", x0, y0, buttons=0, button="left", clickCount=1)

    def rect(self, selector: str) -> dict | None:
        """The bounding box (CSS px) of the first element matching ``selector``, or None."""
        return self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
                       f"const r = e.getBoundingClientRect(); return {{x: r.x, y: r.y, w: r.width, h: r.height}}; }})()")

    def click_selector(self, selector: str):
        r = self.rect(selector)
        if not r:
            raise AssertionError(f"no element {selector!r} on the page")
        self.click(r["x"] + r["w"] / 2, r["y"] + r["h"] / 2)

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path | None = None) -> np.ndarray:
        from PIL import Image

        png = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        if path:
            Path(path).write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
