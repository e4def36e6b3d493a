"""Start a real `monailabel start_server` with the polyp_al app on 127.0.0.1 for tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "polyp_al"
SAMPLE = REPO / "sample-datasets" / "kvasir-seg-mini"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers=None, timeout=60, context=None):
    """(status, parsed JSON or raw bytes) without raising on 4xx/5xx (``context``: an SSLContext for https)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            status, data = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    try:
        return status, json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return status, data


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = "----polypal" + os.urandom(8).hex()
    out = []
    for k, v in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data) in files.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class Server:
    def __init__(self, studies: Path, workdir: Path, conf: dict | None = None, port: int | None = None,
                 env: dict | None = None, headers: dict | None = None, args: list | None = None, ssl_context=None):
        self.studies, self.workdir, self.extra_env = studies, workdir, dict(env or {})
        self.headers = dict(headers or {})  # sent with start()'s /info polls (e.g. a bearer token)
        self.args, self.ssl_context = list(args or []), ssl_context  # more start_server options; https
        self.port = port or free_port()
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        self.conf = {"profile": "smoke", "model_dir": str(workdir / "model"), "batch_size": "4", **(conf or {})}
        self.log = workdir / f"server-{self.port}.log"
        self.proc = None

    def start(self, timeout: float = 120) -> "Server":
        self.spawn()
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                status, _ = http("GET", self.url + "/info/", headers=self.headers, timeout=5,
                                 context=self.ssl_context)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.tail()}")

    def spawn(self) -> "Server":
        """Start the process without waiting for it to answer."""
        args = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(APP),
                "--studies", str(self.studies), "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in self.conf.items():
            if v is not None:  # None: leave the key to the app's default (e.g. model_dir)
                args += ["--conf", k, str(v)]
        args += self.args
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("MONAI_LABEL_APP_DIR", str(APP))
        env.update(self.extra_env)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, cwd=str(self.workdir), stdout=self._logf, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        return self

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig=None):
        import signal

        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig or signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if getattr(self, "_logf", None):
            self._logf.close()

    def wait_for(self, pred, timeout: float = 120, every: float = 0.5, what: str = "condition"):
        t0 = time.time()
        last = None
        while time.time() - t0 < timeout:
            last = pred()
            if last:
                return last
            time.sleep(every)
        raise AssertionError(f"timed out waiting for {what}; last={last!r}\n{self.tail()}")


def make_studies(dest: Path, n: int | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted((SAMPLE / "images").iterdir())[:n]:
        shutil.copy(p, dest / p.name)
    return dest


def sample_mask(image_id: str) -> Path:
    return SAMPLE / "masks" / f"{image_id}.png"
