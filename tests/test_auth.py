"""MONAI Label's authentication (bearer tokens of a Keycloak realm) in front of polyp-al, through a real server.

The README tells a unit serving other machines to turn it on (``MONAI_LABEL_AUTH_ENABLE``). A stand-in for
the realm on 127.0.0.1 serves its public key the way Keycloak does (``{"public_key": ...}``); the tests sign
tokens with the matching private key. What must hold: no request without a valid token reaches polyp-al's
own handlers (the model upload among them) or has its body read; roles are MONAI Label's; the annotator is
the token's user, not a ``client_id`` the client chooses.
"""

from __future__ import annotations

import base64
import hashlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import io
import json
import secrets
import threading
import time

import pytest

from conftest import always_polyp_model
from server_utils import Server, http, make_studies, multipart, sample_mask

jwt = pytest.importorskip("jwt")
rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
from cryptography.hazmat.primitives import serialization  # noqa: E402

ADMIN, ANNOTATOR, USER = "monailabel-admin", "monailabel-annotator", "monailabel-user"


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


PASSWORDS = {"dr-okafor": ("s3cret", [ANNOTATOR, USER]), "dr-night": ("n1ght", [ANNOTATOR, USER])}


def _realm(key) -> tuple[str, ThreadingHTTPServer]:
    """Keycloak's three answers MONAI Label uses: the realm (its public key), its OpenID configuration and
    the password and refresh-token grants of its token endpoint (401 for a wrong password, 400 for a refresh
    token it no longer honours, as Keycloak answers) and its logout with a refresh token. The server object's ``polypal`` dict changes them:
    ``key`` (a rotation), ``token_answer`` / ``key_answer`` ((status, body) instead of the token endpoint's
    or the realm's own answer), ``key_delay`` (seconds before the realm answers), ``ttl`` (the access
    tokens' life, s), ``sessions`` (refresh token -> user: clear it to end every sign-in), ``token_delay``
    (seconds before the token and logout endpoints answer); ``posts`` counts the requests to those (when they
    arrive), ``key_gets``
    counts the realm's answers, ``renewals`` the refresh grants it honoured."""
    conf = {"key": key, "token_answer": None, "key_answer": None, "key_delay": 0.0, "key_gets": 0, "ttl": 3600,
            "sessions": {}, "sids": {}, "renewals": 0, "token_delay": 0.0, "posts": 0}

    class Realm(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path.endswith("/.well-known/openid-configuration"):
                base = f"http://127.0.0.1:{self.server.server_address[1]}/realms/polypal"
                return self._send(200, json.dumps({"token_endpoint": base + "/protocol/openid-connect/token",
                                                   "end_session_endpoint": base + "/protocol/openid-connect/logout"}
                                                  ).encode())
            conf["key_gets"] += 1
            time.sleep(conf["key_delay"])
            if conf["key_answer"]:
                return self._send(*conf["key_answer"])
            der = conf["key"].public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
            self._send(200, json.dumps({"realm": "polypal", "public_key": base64.b64encode(der).decode()}).encode())

        def do_POST(self):  # noqa: N802
            from urllib.parse import parse_qs

            form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
            conf["posts"] += 1
            time.sleep(conf["token_delay"])
            if self.path.endswith("/logout"):  # Keycloak's logout with a refresh token: 204, or 400 if not active
                if conf.get("logout_answer"):
                    return self._send(*conf["logout_answer"])
                ended = conf["sessions"].pop(form.get("refresh_token", [""])[0], None)
                return self._send(204, b"") if ended else self._send(400, b'{"error": "invalid_grant"}')
            if conf["token_answer"]:
                return self._send(*conf["token_answer"])
            if form.get("grant_type") == ["refresh_token"]:
                user = conf["sessions"].pop(form.get("refresh_token", [""])[0], None)  # each is used once
                if user is None:
                    return self._send(400, b'{"error": "invalid_grant", "error_description": "Token is not active"}')
                conf["renewals"] += 1
            else:
                user, password = form.get("username", [""])[0], form.get("password", [""])[0]
                if PASSWORDS.get(user, (None,))[0] != password or form.get("grant_type") != ["password"]:
                    return self._send(401, b'{"error": "invalid_grant", '
                                           b'"error_description": "Invalid user credentials"}')
            # Keycloak's refresh tokens are JWTs (signed with a secret of the realm's) naming the sign-in (sid),
            # as its access tokens do; a renewal keeps the sign-in
            sid = conf["sids"].pop(form.get("refresh_token", [""])[0], None) or secrets.token_hex(8)
            now = int(time.time())
            refresh = jwt.encode({"sid": sid, "typ": "Refresh", "iat": now, "exp": now + 1800,
                                  "jti": secrets.token_hex(8)}, "a-secret-of-the-realms-32-bytes-long", algorithm="HS256")
            conf["sessions"][refresh], conf["sids"][refresh] = user, sid
            t = token(conf["key"], user, PASSWORDS[user][1], conf["ttl"], sid=sid)
            self._send(200, json.dumps({"access_token": t, "token_type": "Bearer", "expires_in": conf["ttl"],
                                        "refresh_token": refresh, "refresh_expires_in": 1800,
                                        "session_state": "realm-private", "not-before-policy": 0}).encode())

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    srv.polypal = conf
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}/realms/polypal", srv


def token(key, user: str, roles: list[str], ttl: float = 3600, life: float | None = None,
          sid: str | None = None) -> str:
    """A token of ``user`` that ends in ``ttl`` seconds, issued ``life`` seconds before it ends (default
    ``ttl``), of the sign-in ``sid`` if given (the realm's tokens name it; these tests' own do not)."""
    now = time.time()
    claims = {"preferred_username": user, "realm_access": {"roles": roles}, "exp": int(now + ttl),
              "iat": int(now + ttl - (ttl if life is None else life)), "jti": secrets.token_hex(8)}
    if sid:
        claims["sid"] = sid
    return jwt.encode(claims, key, algorithm="RS256")


def _unsigned(claims: dict, alg: str, secret: bytes | None) -> str:
    """A token PyJWT would not make: alg "none", or HS256 keyed with the realm's public key (which anyone can
    read from the realm) as the shared secret: the algorithm-confusion forgery."""
    import hmac

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret, head.encode(), hashlib.sha256).digest()) if secret else ""
    return head + "." + sig


def forged(key) -> list[str]:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = f"-----BEGIN PUBLIC KEY-----\n{base64.b64encode(der).decode()}\n-----END PUBLIC KEY-----".encode()
    claims = {"preferred_username": "mallory", "realm_access": {"roles": [ADMIN, ANNOTATOR, USER]},
              "exp": int(time.time() + 3600)}
    return [_unsigned(claims, "none", None), _unsigned(claims, "HS256", pem),
            _unsigned(claims, "HS256", base64.b64encode(der))]


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


def sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth")
    key, stranger = _key(), _key()
    realm_url, realm = _realm(key)
    studies = make_studies(base / "studies", 6)
    model = base / "model" / "polyp_seg-smoke.pt"
    always_polyp_model(model)
    admin = token(key, "dr-admin", [ADMIN, ANNOTATOR, USER])
    srv = Server(studies, base, conf={"allow_model_upload": "true", "batch_size": "6"},
                 env={"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm_url,
                      "POLYPAL_AUTH_KEY_RECHECK": "1"},
                 headers=bearer(admin)).start()
    try:
        yield {"url": srv.url, "srv": srv, "base": base, "studies": studies, "model": model, "key": key,
               "stranger": stranger, "admin": admin, "realm": realm}
    finally:
        srv.stop()
        realm.shutdown()


def _label_body(image_id: str, params: dict | None = None):
    return multipart({"params": json.dumps(params or {})},
                     {"label": (f"{image_id}.png", sample_mask(image_id).read_bytes())})


def _requests(env):
    """One request of each kind a client can send (method, path, body, headers)."""
    some = sorted(p.stem for p in env["studies"].glob("*.jpg"))[0]
    label, ct = _label_body(some)
    model_body, model_ct = multipart({}, {"file": ("m.pt", env["model"].read_bytes())})
    js = {"Content-Type": "application/json"}
    return some, [
        ("GET", "/info/", None, {}),
        ("GET", "/datastore/?output=all", None, {}),
        ("GET", f"/datastore/image?image={some}", None, {}),
        ("HEAD", f"/datastore/image?image={some}", None, {}),
        ("PUT", f"/datastore/label?image={some}&tag=final", label, {"Content-Type": ct}),
        ("DELETE", f"/datastore/label?id={some}&tag=final", None, {}),
        ("DELETE", f"/datastore/image?id={some}", None, {}),
        ("POST", "/activelearning/random", json.dumps({"client_id": "x"}).encode(), js),
        ("POST", f"/infer/polyp_seg?image={some}", b"{}", js),
        ("POST", "/train/polyp_seg", json.dumps({"max_steps": 1}).encode(), js),
        ("GET", "/train/", None, {}),
        ("POST", "/scoring/polyp_al", b"{}", js),
        ("GET", "/logs/?lines=5", None, {}),
        ("GET", "/model/polyp_seg", None, {}),
        ("PUT", "/model/polyp_seg", model_body, {"Content-Type": model_ct}),
        ("DELETE", "/model/polyp_seg", None, {}),
        ("GET", "/datastore/dataset", None, {}),
    ]


def test_no_request_without_a_valid_token_is_served(env):
    """No token, a token signed by another key, an expired token, one without expiry, forged ones (alg none;
    HS256 keyed with the realm's public key), a malformed header: 401 on every endpoint,
    polyp-al's model upload and delete included (before, they took no token at all), and nothing changes."""
    url, studies, model = env["url"], env["studies"], env["model"]
    before = {p.name: sha(p) for p in studies.iterdir() if p.is_file()}
    model_before = sha(model)
    some, reqs = _requests(env)
    bad = [{}, bearer(token(env["stranger"], "mallory", [ADMIN, ANNOTATOR, USER])),
           bearer(token(env["key"], "dr-admin", [ADMIN, ANNOTATOR, USER], ttl=-60)),
           {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic ZHItYWRtaW46eA=="},
           bearer(jwt.encode({"preferred_username": "dr-admin", "realm_access": {"roles": [ADMIN]}},
                             env["key"], algorithm="RS256")),  # no expiry
           *[bearer(t) for t in forged(env["key"])]]
    for headers in bad:
        for method, path, body, h in reqs:
            s, r = http(method, url + path, body, {**h, **headers})
            assert s == 401, (method, path, headers, s, r)
    assert {p.name: sha(p) for p in studies.iterdir() if p.is_file()} == before
    assert sha(model) == model_before
    assert not (studies / "labels" / "final").exists() or not any((studies / "labels" / "final").iterdir())
    assert not list(model.parent.glob("*.replaced")) and not list(model.parent.glob("*.deleted"))


def test_a_refused_token_reads_no_body(env):
    """Without a token, a label upload is answered 401 before its body is read: a client that declares a
    body and sends none is answered at once, not held until the body timeout."""
    import socket

    some = sorted(p.stem for p in env["studies"].glob("*.jpg"))[0]
    port = int(env["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"PUT /datastore/label?image={some}&tag=final HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000000\r\n\r\n".encode())
        head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 401"), head
    assert "www-authenticate: bearer" in head.lower()


def test_roles_are_monai_labels(env):
    """A user without the annotator role reads but cannot save labels; replacing or deleting the served
    model takes the admin role (an annotator gets 403 and the model is unchanged)."""
    url, model = env["url"], env["model"]
    reader = bearer(token(env["key"], "visitor", [USER]))
    annotator = bearer(token(env["key"], "ann-1", [ANNOTATOR, USER]))
    some = sorted(p.stem for p in env["studies"].glob("*.jpg"))[0]
    assert http("GET", f"{url}/info/", headers=reader)[0] == 200
    assert http("GET", f"{url}/datastore/image?image={some}", headers=reader)[0] == 200
    body, ct = _label_body(some)
    s, r = http("PUT", f"{url}/datastore/label?image={some}&tag=final", body, {"Content-Type": ct, **reader})
    assert s == 403, r
    before = sha(model)
    mb, mct = multipart({}, {"file": ("m.pt", model.read_bytes())})
    for h in (reader, annotator):
        s, r = http("PUT", f"{url}/model/polyp_seg", mb, {"Content-Type": mct, **h})
        assert s == 403, r
        s, r = http("DELETE", f"{url}/model/polyp_seg", headers=h)
        assert s == 403, r
    assert sha(model) == before
    js = {"Content-Type": "application/json"}
    s, r = http("POST", f"{url}/train/polyp_seg", b"{}", {**js, **annotator})  # MONAI Label's rule: admin
    assert s == 403, r
    assert http("GET", f"{url}/logs/?lines=5", headers=annotator)[0] == 403
    assert http("GET", f"{url}/logs/?lines=5", headers=bearer(env["admin"]))[0] == 200
    s, r = http("PUT", f"{url}/model/polyp_seg", mb, {"Content-Type": mct, **bearer(env["admin"])})
    assert s == 200, r
    assert len(list(model.parent.glob("*.replaced"))) == 1


def test_replacing_a_frame_takes_the_admin_role(env):
    """A frame replace moves the old frame and every annotator's labels of it to the trash, as a delete does
    (admin): an annotator, who may upload frames, got it done with {"replace": true} (a hostile probe). Now
    403, and the frame and its label stay; the admin replaces it."""
    import io

    import numpy as np
    from PIL import Image

    url, studies = env["url"], env["studies"]
    annotator, admin = bearer(token(env["key"], "ann-2", [ANNOTATOR, USER])), bearer(env["admin"])

    def frame(value):
        buf = io.BytesIO()
        Image.fromarray(np.full((48, 64, 3), value, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    def upload(headers, value, params):
        body, ct = multipart({"params": json.dumps(params)}, {"file": ("f.png", frame(value))})
        return http("PUT", f"{url}/datastore/?image=ann-frame", body, {"Content-Type": ct, **headers})

    s, r = upload(annotator, 40, {})
    assert s == 200, r  # uploading a new frame: an annotator's
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 10:30] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    body, ct = multipart({"params": "{}"}, {"label": ("m.png", buf.getvalue())})
    s, r = http("PUT", f"{url}/datastore/label?image=ann-frame&tag=final", body, {"Content-Type": ct, **annotator})
    assert s == 200, r
    frame_file, label_file = studies / "ann-frame.png", studies / "labels" / "final" / "ann-frame.png"
    before = (sha(frame_file), sha(label_file))
    for params in ({"replace": True}, {"replace": True, "comment": "x"}):
        s, r = upload(annotator, 200, params)
        assert s == 403 and "replace" in r["detail"], (s, r)
    assert (sha(frame_file), sha(label_file)) == before
    s, r = upload(annotator, 200, {"replace": "true"})  # not a replace (JSON true only): the id is taken
    assert s == 409, (s, r)
    s, r = upload(admin, 200, {"replace": True})
    assert s == 200, r
    assert sha(frame_file) != before[0] and not label_file.exists()


def test_the_annotator_is_the_tokens_user(env):
    """With authentication on, leases and the annotation log are by the token's user: a client_id sent
    with the request does not choose who holds the frame nor who is credited with its label."""
    url = env["url"]
    ann = bearer(token(env["key"], "dr-okafor", [ANNOTATOR, USER]))
    js = {"Content-Type": "application/json", **ann}
    s, first = http("POST", f"{url}/activelearning/random", json.dumps({"client_id": "someone-else"}).encode(), js)
    assert s == 200 and first.get("id"), first
    s, info = http("GET", f"{url}/datastore/image/info?image={first['id']}", headers=ann)
    assert s == 200 and info["served"]["client_id"] == "dr-okafor", info
    # asking again under another client_id is the same person asking again: she is served the frame she
    # holds (two client ids would hold two frames)
    s, second = http("POST", f"{url}/activelearning/random", json.dumps({"client_id": "alias-2"}).encode(), js)
    assert s == 200 and second.get("id") == first["id"], second
    other = bearer(token(env["key"], "dr-lind", [ANNOTATOR, USER]))
    s, third = http("POST", f"{url}/activelearning/random", json.dumps({"client_id": "alias-2"}).encode(),
                    {**js, **other})
    assert s == 200 and third.get("id") and third["id"] != first["id"], third  # another person: another frame
    body, ct = _label_body(second["id"], {"client_id": "credit-me-instead"})
    s, r = http("PUT", f"{url}/datastore/label?image={second['id']}&tag=final", body, {"Content-Type": ct, **ann})
    assert s == 200, r
    s, info = http("GET", f"{url}/info/", headers=ann)
    annotators = info["polyp_al"]["annotators"]
    assert "dr-okafor" in annotators and annotators["dr-okafor"]["labels"] >= 1, annotators
    assert not {"someone-else", "alias-2", "credit-me-instead"} & set(annotators), annotators


def test_an_identical_label_saved_again_by_another_user_keeps_its_credit(env):
    """A hostile probe (2026-12-07): another annotator downloaded dr-okafor's label and saved the same bytes
    back; the credit (/info, the export) moved to them and her record was gone. The same label on the same
    picture is now kept as it was (answer "unchanged", nothing trashed); a label that differs is a new save,
    credited to whoever saved it."""
    import numpy as np
    from PIL import Image

    url = env["url"]
    ann = bearer(token(env["key"], "dr-vance", [ANNOTATOR, USER]))
    thief = bearer(token(env["key"], "mallory", [ANNOTATOR, USER]))
    s, got = http("POST", f"{url}/activelearning/random", b"{}", {"Content-Type": "application/json", **ann})
    assert s == 200 and got.get("id"), got
    i = got["id"]
    body, ct = _label_body(i)
    assert http("PUT", f"{url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct, **ann})[0] == 200
    trash = env["studies"] / ".polypal" / "trash"
    before = sorted(trash.iterdir()) if trash.is_dir() else []
    s, stored = http("GET", f"{url}/datastore/label?label={i}&tag=final", headers=thief)
    assert s == 200
    body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", stored)})
    s, r = http("PUT", f"{url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct, **thief})
    assert s == 200, r
    annotators = http("GET", f"{url}/info/", headers=ann)[1]["polyp_al"]["annotators"]
    assert "dr-vance" in annotators and "mallory" not in annotators, annotators
    assert (sorted(trash.iterdir()) if trash.is_dir() else []) == before  # nothing replaced, nothing trashed
    # a different label is a new save: credited to its saver
    m = np.array(Image.open(sample_mask(i))) > 0
    buf = io.BytesIO()
    Image.fromarray((~m).astype(np.uint8) * 255).save(buf, format="PNG")
    body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", buf.getvalue())})
    assert http("PUT", f"{url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct, **thief})[0] == 200
    annotators = http("GET", f"{url}/info/", headers=ann)[1]["polyp_al"]["annotators"]
    assert "mallory" in annotators, annotators
    # the frame back in the pool: the tests after this one take sample frames (with masks) as next samples
    assert http("DELETE", f"{url}/datastore/label?id={i}&tag=final", headers=bearer(env["admin"]))[0] == 200


def test_slow_sign_ins_from_one_address_do_not_lock_out_the_others(env):
    """The per-address cap on requests with a body is for authentication off; with it on, sign-ins (free
    paths: no user yet) were counted against it, so 16 slow sign-in bodies from a proxy's address gave every
    user 429 on signing in (a review, 2026-12-07). Sign-ins have their own threads and a 16 KiB body cap."""
    import socket

    url = env["url"]
    port = int(url.rsplit(":", 1)[1])
    held = []
    try:
        for _ in range(17):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            c.sendall(f"POST /auth/token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                      f"application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\nusername=x".encode())
            held.append(c)
        time.sleep(1)
        s, t = http("POST", url + "/auth/token", b"username=dr-okafor&password=s3cret",
                    {"Content-Type": "application/x-www-form-urlencoded"})
        assert s == 200 and t.get("access_token"), (s, t)
    finally:
        for c in held:
            c.close()


def test_signing_in_with_monailabels_client(env):
    """The flow 3D Slicer uses: /auth/ says authentication is on, POST /auth/token with a user name and
    password gives a token, and with it MONAILabelClient's next sample and label save work. A wrong password
    is a 401 that says so (MONAI Label answered 500)."""
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    c = MONAILabelClient(env["url"], tmpdir=str(env["base"] / "client"), client_id="slicer-1")
    assert c.auth_enabled()
    with pytest.raises(MONAILabelClientException) as e:
        c.auth_token("dr-okafor", "wrong")
    assert e.value.status_code == 401 and "password" in str(e.value.msg).lower(), (e.value.status_code, e.value.msg)
    c.update_auth(c.auth_token("dr-okafor", "s3cret"))
    assert c.auth_valid_token()
    sample = c.next_sample("random", {})
    assert sample.get("id")
    c.save_label(sample["id"], str(sample_mask(sample["id"])), tag="final")
    s, info = http("GET", f"{env['url']}/datastore/image/info?image={sample['id']}", headers=bearer(env["admin"]))
    assert info["served"]["client_id"] == "dr-okafor"


def test_a_sign_in_is_renewed_without_the_password(env):
    """Keycloak's access tokens last 5 minutes by default: signing in passes on the realm's refresh token
    (MONAI Label's answer kept the access token only, so a page or client had to ask for the password again),
    and POST /auth/token/refresh gives a new token for it, with no token needed to ask. A refresh token the
    realm no longer honours is a 401 saying the sign-in has ended; the realm's other fields are not passed on
    and token answers are not cached. POST /auth/logout has the realm end a sign-in."""
    import urllib.request

    url, realm = env["url"], env["realm"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    req = urllib.request.Request(url + "/auth/token", b"username=dr-okafor&password=s3cret&grant_type=password",
                                 form, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Cache-Control"] == "no-store"
        first = json.loads(r.read())
    assert set(first) == {"access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in"}, first
    renewals = realm.polypal["renewals"]
    s, second = http("POST", url + "/auth/token/refresh", f"refresh_token={first['refresh_token']}".encode(), form)
    assert s == 200 and second["access_token"] != first["access_token"] and second["refresh_token"], second
    assert realm.polypal["renewals"] == renewals + 1
    s, info = http("GET", url + "/auth/token/valid", headers=bearer(second["access_token"]))
    assert s == 200 and info["username"] == "dr-okafor", info
    # used once (the stand-in realm's rule): the first refresh token has ended, the second has not
    s, r = http("POST", url + "/auth/token/refresh", f"refresh_token={first['refresh_token']}".encode(), form)
    assert s == 401 and "sign in again" in r["detail"], (s, r)
    # signing out (a shared workstation): the realm ends the sign-in, its refresh token renews nothing after
    s, r = http("POST", url + "/auth/logout", f"refresh_token={second['refresh_token']}".encode(), form)
    assert s == 200 and r == {"signed_out": True, "frames_released": False}, (s, r)
    s, r = http("POST", url + "/auth/token/refresh", f"refresh_token={second['refresh_token']}".encode(), form)
    assert s == 401 and "sign in again" in r["detail"], (s, r)
    s, r = http("POST", url + "/auth/logout", f"refresh_token={second['refresh_token']}".encode(), form)
    assert s == 200, (s, r)  # ended already: nothing to do
    assert http("POST", url + "/auth/logout", b"", form)[0] == 422
    try:  # a realm refusing the logout itself (not: already ended) is not told as signed out
        realm.polypal["logout_answer"] = (400, b'{"error": "invalid_client"}')
        s, r = http("POST", url + "/auth/logout", f"refresh_token={first['refresh_token']}".encode(), form)
        assert s == 503 and "invalid_client" in r["detail"], (s, r)
    finally:
        realm.polypal["logout_answer"] = None
    s, third = http("POST", url + "/auth/token", b"username=dr-okafor&password=s3cret", form)
    realm.polypal["sessions"].clear()  # the realm ends every sign-in (an administrator, or its idle timeout)
    s, r = http("POST", url + "/auth/token/refresh", f"refresh_token={third['refresh_token']}".encode(), form)
    assert s == 401 and "sign in again" in r["detail"], (s, r)
    for body in (b"", b"refresh_token=", b"username=dr-okafor"):
        s, r = http("POST", url + "/auth/token/refresh", body, form)
        assert s == 422 and "refresh_token" in r["detail"], (body, s, r)
    s, r = http("POST", url + "/auth/token", b"username=dr-okafor&password=s3cret&grant_type=client_credentials",
                form)
    assert s == 422, (s, r)
    try:
        realm.polypal["token_answer"] = (502, b"<html>Bad Gateway</html>")
        s, r = http("POST", url + "/auth/token/refresh", b"refresh_token=x", form)
        assert s == 503 and "realm" in r["detail"], (s, r)
    finally:
        realm.polypal["token_answer"] = None
    s, api = http("GET", url + "/openapi.json")
    assert s == 200 and {"/auth/token/refresh", "/auth/logout"} <= set(api["paths"]), sorted(api["paths"])
    assert "refresh" in api["paths"]["/auth/token"]["post"]["summary"]  # polyp-al's, not MONAI Label's
    assert "Exception in ASGI application" not in env["srv"].log.read_text(errors="replace")


def test_signing_out_gives_the_held_frame_back(env):
    """Sign out with the user's token beside the refresh token: the frame the user held goes back to the pool
    at once (it stayed held until the lease timed out, an hour by default: a shared workstation's next
    annotator, another user, could not be served it)."""
    url = env["url"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    s, t = http("POST", url + "/auth/token", b"username=dr-night&password=n1ght", form)
    assert s == 200, t
    me = bearer(t["access_token"])

    def leases():  # (asked as the administrator: the user's token is refused once signed out)
        return http("GET", url + "/info/", headers=bearer(env["admin"]))[1]["polyp_al"]["state"]["leases"]

    before = leases()
    s, r = http("POST", url + "/activelearning/random", json.dumps({}).encode(),
                {"Content-Type": "application/json", **me})
    assert s == 200 and r.get("id"), r
    assert leases() == before + 1
    s, r = http("POST", url + "/auth/logout", f"refresh_token={t['refresh_token']}".encode(), {**form, **me})
    assert s == 200 and r == {"signed_out": True, "frames_released": True}, r
    assert leases() == before


def test_a_signed_out_token_is_refused_at_once(env):
    """After sign-out the sign-in's tokens are refused (401), the ones renewed from it in another tab too, not
    only no longer renewed: before, a token copied before sign-out (a shared workstation) stayed good for
    the rest of its life (Keycloak: 5 minutes; an hour here). The same user's other sign-ins and other users
    are not touched; a refresh token (forged, naming another sign-in) ends no one's tokens, only the
    sender's own verified token does."""
    url, key = env["url"], env["key"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def valid(t) -> int:
        return http("GET", url + "/auth/token/valid", headers=bearer(t))[0]

    def sign_in(user="dr-okafor", password="s3cret"):
        s, t = http("POST", url + "/auth/token", f"username={user}&password={password}".encode(), form)
        assert s == 200, t
        return t

    first = sign_in()
    s, renewed = http("POST", url + "/auth/token/refresh", f"refresh_token={first['refresh_token']}".encode(), form)
    assert s == 200, renewed
    elsewhere, night = sign_in(), sign_in("dr-night", "n1ght")
    assert all(valid(t["access_token"]) == 200 for t in (first, renewed, elsewhere, night))
    # signed out with the renewed token beside its refresh token: the first token (same sign-in) ends too
    s, r = http("POST", url + "/auth/logout", f"refresh_token={renewed['refresh_token']}".encode(),
                {**form, **bearer(renewed["access_token"])})
    assert s == 200 and r["signed_out"], (s, r)
    for t in (first, renewed):
        s, r = http("GET", url + "/info/", headers=bearer(t["access_token"]))
        assert s == 401 and "signed out" in r["detail"], (s, r)
    assert valid(elsewhere["access_token"]) == 200 and valid(night["access_token"]) == 200
    # a forged refresh token naming another sign-in ends nothing here, whatever the realm answers (one that
    # is not Keycloak may answer 2xx to any logout): only the sender's own, verified, token says whose
    sid = jwt.decode(elsewhere["access_token"], options={"verify_signature": False})["sid"]
    fake = jwt.encode({"sid": sid, "exp": int(time.time()) + 600, "iat": int(time.time())},
                      "a-guess-at-the-realms-secret-32-bytes", "HS256")
    for answer in (None, (204, b"")):
        env["realm"].polypal["logout_answer"] = answer
        try:
            s, r = http("POST", url + "/auth/logout", f"refresh_token={fake}".encode(), form)
        finally:
            env["realm"].polypal["logout_answer"] = None
        assert s == 200, (s, r)
        assert valid(elsewhere["access_token"]) == 200
    # signed out with the refresh token alone (a client that kept no access token): the realm renews nothing
    # of it, its access token ends with its life
    s, r = http("POST", url + "/auth/logout", f"refresh_token={elsewhere['refresh_token']}".encode(), form)
    assert s == 200 and r == {"signed_out": True, "frames_released": False}, (s, r)
    s, r = http("POST", url + "/auth/token/refresh", f"refresh_token={elsewhere['refresh_token']}".encode(), form)
    assert s == 401, (s, r)
    # a token that names no sign-in (these tests' own): that token alone ends
    mine, other = (token(key, "dr-okafor", [ANNOTATOR, USER]) for _ in range(2))
    s, r = http("POST", url + "/auth/logout", f"refresh_token={night['refresh_token']}".encode(),
                {**form, **bearer(mine)})
    assert s == 200, (s, r)
    assert valid(mine) == 401 and valid(other) == 200 and valid(night["access_token"]) == 200
    # one without even a jti: ended by its signed part, so the same token written another way (its signature
    # with '=' padding, which still verifies) stays ended (a probe: it leased a frame after its sign-out)
    bare = jwt.encode({"preferred_username": "dr-night", "realm_access": {"roles": [ANNOTATOR, USER]},
                       "exp": int(time.time()) + 600, "iat": int(time.time())}, key, algorithm="RS256")
    s, r = http("POST", url + "/auth/logout", b"refresh_token=zz", {**form, **bearer(bare)})
    assert s == 200 and valid(bare) == 401, (s, r)
    for variant in (bare + "==", bare + "=", " " + bare):
        s, r = http("POST", url + "/activelearning/random", b"{}",
                    {"Content-Type": "application/json", **bearer(variant)})
        assert s == 401, (variant[-4:], s, r)
    # a sign-in named as sid by one token and session_state by another (realms of other versions): one
    old_style = jwt.encode({"preferred_username": "dr-night", "realm_access": {"roles": [ANNOTATOR, USER]},
                            "exp": int(time.time()) + 600, "iat": int(time.time()), "session_state": "s-42"},
                           key, algorithm="RS256")
    new_style = token(key, "dr-night", [ANNOTATOR, USER], sid="s-42")
    s, r = http("POST", url + "/auth/logout", f"refresh_token={night['refresh_token']}".encode(),
                {**form, **bearer(old_style)})
    assert s == 200 and valid(old_style) == 401 and valid(new_style) == 401
    assert valid(sign_in()["access_token"]) == 200  # signing in again works


def test_sign_in_requests_while_the_realm_is_slow_do_not_hold_up_signed_in_users(env):
    """Anyone may send sign-in and renewal requests, and each waits on the realm: 48 at once with the realm
    taking 4 s each held anyio's worker threads, which every signed-in request's token check needs (a signed-in
    GET /info waited 3 s here, 5 s in a review's probe). They have threads of their own now."""
    url, realm = env["url"], env["realm"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    http("GET", url + "/info/", headers=bearer(env["admin"]))  # the realm's key fetched already
    realm.polypal["token_delay"] = 4.0
    threads = [threading.Thread(target=http, args=("POST", url + "/auth/token/refresh", b"refresh_token=zz", form))
               for _ in range(48)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        t0 = time.perf_counter()
        s, _ = http("GET", url + "/info/", headers=bearer(env["admin"]))
        took = time.perf_counter() - t0
    finally:
        realm.polypal["token_delay"] = 0.0
        for t in threads:
            t.join()
    assert s == 200 and took < 2.0, took


def test_the_viewers_files_load_without_a_token_its_data_does_not(env):
    """The annotator's page has to load before it can ask for a user name and password: its files (no data)
    are served without a token; everything it then reads needs one (the first test)."""
    s, page = http("GET", env["url"] + "/annotate/")
    assert s == 200 and b"annotate.js" in page
    s, js = http("GET", env["url"] + "/annotate/polypal/annotate.js")
    assert s == 200 and b"/auth/token" in js
    assert http("GET", env["url"] + "/proxy/dicom/qido/studies")[0] == 401
    assert http("PUT", env["url"] + "/annotate/polypal/annotate.js", b"x")[0] in (401, 405)
    # the API page too (it reads the schema, /openapi.json, which lists no data); its calls need a token
    s, page = http("GET", env["url"] + "/")
    assert s == 200 and b"<html" in page.lower()
    if b"/api-docs/swagger-ui.css" in page:  # (set-up installed Swagger UI)
        assert http("GET", env["url"] + "/api-docs/swagger-ui.css")[0] == 200
    assert http("GET", env["url"] + "/api-docs/../info/")[0] in (401, 404)


def test_the_sign_in_form_is_small_and_realm_failures_are_told(env):
    """Anyone may POST /auth/token, /auth/token/refresh and /auth/logout: a body is read only up to 16 KiB (a
    client without a token filled the disk room with 1 GB bodies there, and signed-in users got 507); another
    site's page is refused; a body that is not a form is a 422, and none of these reaches the realm. A realm
    answering other than a token (a 502 of a proxy, an HTML page) is a 503 saying so, not a 500."""
    import socket

    url, realm = env["url"], env["realm"]
    port = int(url.rsplit(":", 1)[1])
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    posts = realm.polypal["posts"]
    for path in ("/auth/token", "/auth/token/refresh", "/auth/logout"):  # the renewal and sign-out alike
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded"
                      f"\r\nContent-Length: 100000000\r\n\r\nrefresh_token=x".encode())
            head = s.recv(4096).decode(errors="replace")
        assert head.startswith("HTTP/1.1 413"), (path, head)
        # another site's page cannot make a browser sign in, renew or sign out here
        s, r = http("POST", url + path, b"refresh_token=x&username=dr-okafor&password=s3cret",
                    {**form, "Origin": "http://evil.example"})
        assert s == 403, (path, s, r)
        s, r = http("POST", url + path, json.dumps({"refresh_token": "x"}).encode(), {"Content-Type": "application/json"})
        assert s == 422, (path, s, r)  # a form only
    assert realm.polypal["posts"] == posts  # none of them reached the realm
    ok = b"username=dr-okafor&password=s3cret&grant_type=password"
    try:
        for answer in ((502, b"<html>Bad Gateway</html>"), (500, b'{"error": "unknown_error"}'),
                       (200, b"<html>a login page</html>"), (403, b"{}")):
            realm.polypal["token_answer"] = answer
            s, r = http("POST", url + "/auth/token", ok, form)
            assert s == 503 and "realm" in r["detail"], (answer, s, r)
    finally:
        realm.polypal["token_answer"] = None
    s, r = http("POST", url + "/auth/token", ok, form)
    assert s == 200 and r["access_token"]
    assert "Exception in ASGI application" not in env["srv"].log.read_text(errors="replace")


def test_a_new_realm_key_is_fetched(env):
    """The realm rotates its key: tokens signed with the new one are accepted (MONAI Label kept the first
    key for the server's life: everyone got 401 until a restart); tokens of the old key are refused."""
    url, realm = env["url"], env["realm"]
    old, new = env["key"], _key()
    realm.polypal["key"] = new
    try:
        time.sleep(1.5)  # POLYPAL_AUTH_KEY_RECHECK=1 here (60 s by default)
        s, r = http("GET", url + "/info/", headers=bearer(token(new, "dr-admin", [ADMIN, USER])))
        assert s == 200, r
        assert http("GET", url + "/info/", headers=bearer(token(old, "dr-admin", [ADMIN, USER])))[0] == 401
    finally:
        realm.polypal["key"] = old
        time.sleep(1.5)
        assert http("GET", url + "/info/", headers=bearer(env["admin"]))[0] == 200


def test_a_realm_answer_that_is_no_key_is_not_kept(env):
    """A rotation fetch that gets something other than a public key (a realm mid-upgrade) keeps the key the
    server had: before, the answer replaced it and every request was 503 until a restart (a key that does not
    load never reads as a bad signature, so it was never fetched again)."""
    url, realm = env["url"], env["realm"]
    old, new = env["key"], _key()
    try:
        realm.polypal["key_answer"] = (200, json.dumps({"public_key": base64.b64encode(b"not a key").decode()}).encode())
        time.sleep(1.5)  # POLYPAL_AUTH_KEY_RECHECK=1
        assert http("GET", url + "/info/", headers=bearer(token(new, "dr-admin", [ADMIN, USER])))[0] == 401
        s, r = http("GET", url + "/info/", headers=bearer(env["admin"]))
        assert s == 200, (s, r)
        from cryptography.hazmat.primitives.asymmetric import ec

        ec_der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        realm.polypal["key_answer"] = (200, json.dumps({"public_key": base64.b64encode(ec_der).decode()}).encode())
        time.sleep(1.5)  # a key, but one RS256 does not verify with: not kept either
        assert http("GET", url + "/info/", headers=bearer(token(new, "dr-admin", [ADMIN, USER])))[0] == 401
        assert http("GET", url + "/info/", headers=bearer(env["admin"]))[0] == 200
        realm.polypal["key_answer"], realm.polypal["key"] = None, new  # the realm is back, with its new key
        time.sleep(1.5)
        s, r = http("GET", url + "/info/", headers=bearer(token(new, "dr-admin", [ADMIN, USER])))
        assert s == 200, (s, r)
    finally:
        realm.polypal["key_answer"], realm.polypal["key"] = None, old
        time.sleep(1.5)
        assert http("GET", url + "/info/", headers=bearer(env["admin"]))[0] == 200


def test_only_this_servers_access_tokens_are_taken(env):
    """The realm signs tokens for every app it serves, with the same realm roles, and its ID and refresh
    tokens with the same key: a token another app received (azp another client), an ID or refresh token was
    taken here as the user (a hostile probe), and could sign its user out. Now 401; this server's client's
    access tokens (and tokens that name no client) are taken."""
    url, key = env["url"], env["key"]

    def claims_token(**extra):
        claims = {"preferred_username": "dr-okafor", "realm_access": {"roles": [ANNOTATOR, USER]},
                  "exp": int(time.time()) + 600, "iat": int(time.time()), "sid": "sid-of-dr-okafor", **extra}
        return jwt.encode(claims, key, algorithm="RS256")

    ours = claims_token(azp="monailabel-app", typ="Bearer")
    assert http("GET", url + "/info/", headers=bearer(ours))[0] == 200
    for bad in (claims_token(azp="other-app"), claims_token(typ="ID", azp="monailabel-app"),
                claims_token(typ="Refresh"), claims_token(typ="Offline"), claims_token(azp=["monailabel-app"])):
        s, r = http("GET", url + "/info/", headers=bearer(bad))
        assert s == 401, (s, r)
        form = {"Content-Type": "application/x-www-form-urlencoded", **bearer(bad)}
        s, r = http("POST", url + "/auth/logout", b"refresh_token=not-a-refresh-token", form)
        assert s == 200 and r["frames_released"] is False, (s, r)  # (the realm: not active) nobody signed out
    assert http("GET", url + "/info/", headers=bearer(ours))[0] == 200
    # MONAI Label's roles are exact: an admin-only account reads the logs (the Gate takes any of the three)
    admin_only = bearer(token(key, "dr-root", [ADMIN]))
    assert http("GET", url + "/logs/?lines=5", headers=admin_only)[0] == 200
    assert http("GET", url + "/info/", headers=bearer(token(key, "nobody", ["offline_access"])))[0] == 403


def test_writes_take_their_role_before_a_body_is_read(env):
    """A token without the annotator role made the server read and spool a datastore upload (up to 1 GiB,
    charged against the disk floor) before the endpoint's 403; a user-role inference could store its
    prediction (save_label: a label with tag original, the one before moved to the trash). Now 403 at
    once, before the body; a user's uploads in flight are capped (429)."""
    import socket

    url, port = env["url"], env["srv"].port
    some = sorted(p.stem for p in env["studies"].glob("*.jpg"))[0]
    reader = token(env["key"], "visitor", [USER])
    for method, path in (("PUT", f"/datastore/label?image={some}&tag=final"), ("PUT", "/datastore/?image=new1"),
                         ("PUT", f"/datastore/image/info?image={some}"), ("DELETE", f"/datastore/image?id={some}")):
        c = socket.create_connection(("127.0.0.1", port), timeout=30)
        c.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {reader}\r\n"
                  f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 5000000\r\n\r\n".encode())
        head = c.recv(200).decode(errors="replace")  # answered without sending the body
        c.close()
        assert head.startswith("HTTP/1.1 403"), (method, path, head)
    labels = env["studies"] / "labels" / "original"
    before = sorted(p.name for p in labels.glob("*")) if labels.is_dir() else []
    for params in ({"save_label": True}, {"store_seg": True}, {"save_label": "false"}):
        body, ct = multipart({"params": json.dumps(params)}, {})
        s, r = http("POST", f"{url}/infer/polyp_seg?image={some}&output=json", body,
                    {"Content-Type": ct, **bearer(reader)})
        assert s == 403 and "store a prediction" in r["detail"], (params, s, r)
    assert (sorted(p.name for p in labels.glob("*")) if labels.is_dir() else []) == before
    body, ct = multipart({"params": "{}"}, {})
    s, r = http("POST", f"{url}/infer/polyp_seg?image={some}&output=json", body, {"Content-Type": ct, **bearer(reader)})
    assert s == 200, r  # inference itself stays the user role's
    # one user's requests with a body in flight: at most POLYPAL_UPLOADS_PER_USER (8); the 9th is a 429
    annotator = token(env["key"], "slow-sender", [ANNOTATOR, USER])
    held = []
    try:
        for _ in range(8):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            c.sendall(f"PUT /datastore/label?image={some}&tag=final HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Authorization: Bearer {annotator}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                      f"Content-Length: 100000\r\n\r\n".encode() + b"x" * 1000)
            held.append(c)
        time.sleep(1)
        body, ct = _label_body(some)
        s, r = http("PUT", f"{url}/datastore/label?image={some}&tag=final", body, {"Content-Type": ct, **bearer(annotator)})
        assert s == 429, (s, r)
        s, r = http("GET", url + "/info/", headers=bearer(annotator))
        assert s == 200  # (requests without a body are not counted)
    finally:
        for c in held:
            c.close()
    time.sleep(1)
    body, ct = _label_body(some)
    s, r = http("PUT", f"{url}/datastore/label?image={some}&tag=final", body, {"Content-Type": ct, **bearer(annotator)})
    assert s == 200, (s, r)


def test_user_names_that_would_merge_or_forge(env):
    """A realm user named like the server's placeholder for "no client id" ("anonymous") still holds one
    frame at a time; a user name over 128 characters (two would be cut to one) or with a line break (a
    forged log line) is refused, not cut or logged."""
    url = env["url"]
    js = {"Content-Type": "application/json"}
    h = {**js, **bearer(token(env["key"], "anonymous", [ANNOTATOR, USER]))}
    got = {http("POST", url + "/activelearning/random", b"{}", h)[1].get("id") for _ in range(3)}
    assert len(got) == 1 and None not in got, got
    # (and names that would be credited as another's: spaces around them or other than U+0020, or named like
    # the server's own "user:" placeholders; a hostile probe: " dr-okafor " was served dr-okafor's frame)
    for name in ("x" * 128 + "-alice", "mallory\n[2026-12-07 04:00:00,000] [1] [MainThread] [INFO] forged",
                 " dr-okafor ", "dr-okafor\u00a0", "dr\u3000okafor", "user:anonymous", "User:x"):
        s, r = http("POST", url + "/activelearning/random", b"{}", {**js, **bearer(token(env["key"], name, [USER]))})
        assert s == 401, (name, s, r)
    s, r = http("POST", url + "/activelearning/random", b"{}", {**js, **bearer(token(env["key"], "dr o", [USER]))})
    assert s == 200, r  # a plain space inside a name is fine
    assert "forged" not in env["srv"].log.read_text(errors="replace").replace("mallory\\n", "")


def test_bad_tokens_while_the_realm_is_down_neither_flood_it_nor_hold_up_valid_ones(env):
    """Tokens signed by another key make the server fetch the realm's key again (it may have rotated): while
    the realm was slow and failing, each such token fetched it again and every signed-in request waited behind
    that fetch (1.8-3.8 s in a review's probe). Now at most one fetch a POLYPAL_AUTH_KEY_RECHECK period (1 s
    here), never waited for by a valid token, and the bad tokens get 401."""
    from concurrent.futures import ThreadPoolExecutor

    url, realm = env["url"], env["realm"]
    time.sleep(1.5)
    realm.polypal.update(key_answer=(500, b'{"error": "down"}'), key_delay=2.0, key_gets=0)
    try:
        bad = bearer(token(env["stranger"], "mallory", [ADMIN, USER]))
        good = bearer(env["admin"])

        def timed(h):
            t0 = time.monotonic()
            s = http("GET", url + "/info/", headers=h, timeout=30)[0]
            return s, time.monotonic() - t0

        with ThreadPoolExecutor(12) as ex:
            bads = [ex.submit(timed, bad) for _ in range(8)]
            time.sleep(0.2)  # one of them is fetching the key now, for 2 s
            goods = [ex.submit(timed, good) for _ in range(4)]
            goods = [f.result() for f in goods]
            bads = [f.result() for f in bads]
        assert all(s == 200 and t < 1.5 for s, t in goods), goods
        assert all(s == 401 for s, _ in bads), bads
        assert realm.polypal["key_gets"] <= 2, realm.polypal["key_gets"]
    finally:
        realm.polypal.update(key_answer=None, key_delay=0.0)
    time.sleep(1.5)
    assert http("GET", url + "/info/", headers=bearer(env["admin"]))[0] == 200


def test_requests_waiting_for_a_first_key_do_not_each_fetch_it_again(monkeypatch):
    """No key yet (the server started before the realm), and the realm answers slowly and fails: requests
    that came while a fetch was under way waited for it, then each fetched again in turn (a review: waits of
    4, 7, 10, 13 s). Now they fail with the fetch they waited for (503 at the Gate), one fetch in all."""
    from server_utils import APP

    monkeypatch.syspath_prepend(str(APP))
    from lib import auth
    from monailabel.config import settings

    url, realm = _realm(_key())
    realm.polypal.update(key_answer=(500, b'{"error": "starting"}'), key_delay=2.5)  # past FAILED_RETRY_S
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_REALM_URI", url)
    r = auth._Realm()
    results = {}

    def ask(n):
        t0 = time.monotonic()
        try:
            r.key()
            results[n] = ("ok", 0)
        except Exception as e:  # noqa: BLE001
            results[n] = (type(e).__name__, time.monotonic() - t0)

    try:
        first = threading.Thread(target=ask, args=(0,))
        first.start()
        time.sleep(2.2)  # later than FAILED_RETRY_S (2 s) after that fetch started, before it fails
        rest = [threading.Thread(target=ask, args=(n,)) for n in range(1, 6)]
        for t in rest:
            t.start()
        for t in [first, *rest]:
            t.join()
    finally:
        realm.shutdown()
    assert realm.polypal["key_gets"] == 1, (realm.polypal["key_gets"], results)
    assert all(kind != "ok" and waited < 3.0 for kind, waited in results.values()), results
