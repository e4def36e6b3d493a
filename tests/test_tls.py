"""The server over TLS (MONAI Label's ``--ssl_keyfile``/``--ssl_certfile``), through a real server.

A unit serving other machines with authentication on sends tokens and frames over the network: TLS is how.
polyp-al patches uvicorn's connection handling (header timeout, abandoned downloads: ``connections.py``)
and checks origins against the request's scheme; these must hold over TLS too.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import time

import numpy as np
import pytest
from PIL import Image

from server_utils import Server, http, make_studies, multipart, sample_mask

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def self_signed(folder) -> tuple:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    k, c = folder / "key.pem", folder / "cert.pem"
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()))
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return k, c


def test_the_annotation_loop_and_connection_limits_over_tls(tmp_path):
    """Next sample, a label save, a download and a same-origin page's request work over https; an idle TLS
    connection is closed at the header timeout and a download nobody reads is abandoned, as over http."""
    studies = make_studies(tmp_path / "studies", 3)
    big = np.random.default_rng(0).integers(0, 256, (1800, 2400, 3), np.uint8)  # ~13 MB: no buffer holds it
    Image.fromarray(big).save(studies / "big.png", compress_level=0)
    key, cert = self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(cert))
    srv = Server(studies, tmp_path, env={"POLYPAL_SEND_TIMEOUT": "4", "POLYPAL_HEADER_TIMEOUT": "3"},
                 args=["--ssl_keyfile", str(key), "--ssl_certfile", str(cert)], ssl_context=ctx).start()
    try:
        assert srv.url.startswith("https://")
        js = {"Content-Type": "application/json"}
        s, nxt = http("POST", srv.url + "/activelearning/random", json.dumps({"client_id": "a"}).encode(), js,
                      context=ctx)
        assert s == 200 and nxt.get("id"), nxt
        body, ct = multipart({"params": "{}"}, {"label": (nxt["id"] + ".png", sample_mask(nxt["id"]).read_bytes())})
        s, r = http("PUT", f"{srv.url}/datastore/label?image={nxt['id']}&tag=final", body, {"Content-Type": ct},
                    context=ctx)
        assert s == 200, r
        s, data = http("GET", f"{srv.url}/datastore/image?image=big", context=ctx, timeout=60)
        assert s == 200 and len(data) == (studies / "big.png").stat().st_size
        # the annotator's page served by this server is same-origin (https://host:port), another origin is not
        assert http("GET", srv.url + "/info/", headers={"Origin": srv.url}, context=ctx)[0] == 200
        assert http("GET", srv.url + "/info/", headers={"Origin": srv.url.replace("https", "http")},
                    context=ctx)[0] == 403
        # an idle connection past its handshake: closed by the header timeout
        idle = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port)), server_hostname="127.0.0.1")
        idle.settimeout(20)
        t0 = time.time()
        try:
            assert idle.recv(100) == b""
        except (ConnectionResetError, ssl.SSLError):
            pass
        assert time.time() - t0 < 15
        idle.close()
        # a client that never reads a large frame: abandoned after POLYPAL_SEND_TIMEOUT
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", srv.port))
        stalled = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        stalled.sendall(f"GET /datastore/image?image=big HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
        srv.wait_for(lambda: "the client read nothing for 4 s; connection aborted" in srv.log.read_text(errors="replace"),
                     timeout=60, what="the stalled TLS download abandoned")
        stalled.close()
    finally:
        srv.stop()
