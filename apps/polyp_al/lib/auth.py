"""MONAI Label's authentication (``MONAI_LABEL_AUTH_ENABLE``: bearer tokens of a Keycloak realm), made to work
and enforced in front of every endpoint.

- MONAI Label 0.8.5 decodes tokens with ``jwt.decode`` without ``algorithms``, which PyJWT 2 refuses: with
  authentication on, every request got 401, a valid token too. ``user_of`` verifies the signature with the
  realm's public key for ``POLYPAL_AUTH_ALGORITHMS`` (default RS256, Keycloak's), then reads the user and
  roles as MONAI Label does; ``install`` makes MONAI Label's endpoints use it.
- The Gate (``security.py``) asks ``check`` before it reads a body or runs any handler: without a valid
  token a request gets 401 (503 when the realm's key cannot be fetched), polyp-al's own model upload and
  delete included (they had no token check); those take the admin role. Roles of the other endpoints stay
  MONAI Label's (user: read, next sample, infer; annotator: save labels and frames; admin: delete, train,
  logs, model). Free: ``/auth/``, ``POST /auth/token`` (signing in), ``POST /auth/token/refresh`` (renewing
  a token with the realm's refresh token) and ``POST /auth/logout`` (``signin.py``), the API docs and their
  static files,
  and the annotator's page's files (``/annotate/``: it signs in with ``POST /auth/token`` and sends the token
  with every request, OHIF's included: ``ohif/annotate.js``).
- The annotator is the token's user: next-sample requests are leased to the user whatever ``client_id``
  they send, and a saved label is credited to the user who saved it (``current_saver``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import unicodedata

logger = logging.getLogger(__name__)

_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
# signatures by the realm's public key only: an HMAC (HS256: the public key as a shared secret) or "none"
# would let anyone who knows the realm's public key sign tokens
ALGORITHMS = [a.strip() for a in os.environ.get("POLYPAL_AUTH_ALGORITHMS", "RS256").split(",")
              if a.strip() in _ASYMMETRIC] or ["RS256"]
# signing in, the API docs, and the annotator's page: files of the viewer (OHIF and ours, GET/HEAD only,
# no data), which has to load before it can ask for a user name and password
_FREE_EXACT = frozenset({"/", "/docs", "/openapi.json", "/favicon.ico", "/auth", "/auth/", "/auth/token",
                         "/auth/token/refresh", "/auth/logout", "/annotate"})
_FREE_PREFIX = ("/static/", "/annotate/", "/api-docs/")
_saver = threading.local()


def enabled() -> bool:
    from monailabel.config import settings

    return bool(settings.MONAI_LABEL_AUTH_ENABLE)


class Unauthorized(Exception):
    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail


class _Realm:
    """The realm's public key and token endpoint, fetched by polyp-al (MONAI Label caches its answers for
    the server's life, an error answer included, and never fetches the key again: a realm that rotated its
    key locked everyone out until a restart). The key is fetched again when a token's signature does not
    verify and no fetch was tried for ``KEY_RECHECK_S``; only good answers are kept."""

    KEY_RECHECK_S = float(os.environ.get("POLYPAL_AUTH_KEY_RECHECK", 60))
    FAILED_RETRY_S = 2.0  # no key yet and the last fetch failed: 503 at once for this long, not a fetch each

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple[str, float] | None = None  # (PEM, when fetched)
        self._tried = -1e9  # when a fetch was last started (monotonic)
        self._failed = -1e9  # when a fetch last failed
        self._fetches = 0  # fetches finished, good or not
        self._config: dict | None = None  # the realm's OpenID configuration, once read
        self._config_lock = threading.Lock()
        self._config_failed = -1e9

    @staticmethod
    def _get(url: str) -> dict:
        import requests
        from monailabel.config import settings

        r = requests.get(url, timeout=settings.MONAI_LABEL_AUTH_TIMEOUT)
        r.raise_for_status()
        j = r.json()
        if not isinstance(j, dict):
            raise ValueError(f"{url} answered {type(j).__name__}, not a JSON object")
        return j

    def key(self, fresh: bool = False) -> str:
        """The realm's public key (PEM). ``fresh``: a signature did not verify; fetch the key again unless it
        was tried within ``KEY_RECHECK_S`` (a success or not: tokens signed by another key, sent while the
        realm is down, must not make every request wait on a fetch). Valid tokens never wait on a fetch: the
        cached key is read without the lock, and a fetch another thread is making is not waited for."""
        from monailabel.config import settings

        k = self._key
        if k is not None and (not fresh or time.monotonic() - self._tried < self.KEY_RECHECK_S):
            return k[0]
        down = f"the realm's key could not be fetched from {settings.MONAI_LABEL_AUTH_REALM_URI} a moment ago"
        if k is None and time.monotonic() - self._failed < self.FAILED_RETRY_S:
            raise ValueError(down)
        seen = self._fetches
        if not self._lock.acquire(blocking=k is None):
            return k[0]  # another thread is fetching it
        try:
            if self._key is not None and (self._key is not k or
                                          time.monotonic() - self._tried < self.KEY_RECHECK_S):
                return self._key[0]  # fetched while this thread waited
            if self._key is None and self._fetches != seen:  # a fetch failed while this thread waited: not again
                raise ValueError(down)
            self._tried = time.monotonic()
            try:
                got = self._get(settings.MONAI_LABEL_AUTH_REALM_URI).get("public_key")
                if not isinstance(got, str) or not got.strip():
                    raise ValueError(f"{settings.MONAI_LABEL_AUTH_REALM_URI} names no public_key")
                pem = f"-----BEGIN PUBLIC KEY-----\n{got.strip()}\n-----END PUBLIC KEY-----"
                _readable(pem)
            except BaseException:
                self._failed = time.monotonic()
                raise
            finally:
                self._fetches += 1
            if self._key is not None and self._key[0] != pem:
                logger.warning("the realm's public key changed: tokens are checked with the new one")
            self._key = (pem, time.monotonic())
            return pem
        finally:
            self._lock.release()

    def endpoint(self, name: str = "token_endpoint") -> str:
        """An endpoint the realm's OpenID configuration names (``token_endpoint``, ``end_session_endpoint``).
        The configuration is kept once read; a name it lacks is an error without fetching it again. Read
        under a lock of its own (not the key's: a slow realm must not hold up token checks), and not again
        for ``FAILED_RETRY_S`` after a failed read."""
        from monailabel.config import settings

        conf = self._config
        if conf is None:
            with self._config_lock:
                conf = self._config
                if conf is None:
                    if time.monotonic() - self._config_failed < self.FAILED_RETRY_S:
                        raise ValueError("the realm's OpenID configuration could not be read a moment ago")
                    try:
                        conf = self._get(f"{settings.MONAI_LABEL_AUTH_REALM_URI}/.well-known/openid-configuration")
                    except BaseException:
                        self._config_failed = time.monotonic()
                        raise
                    if isinstance(conf.get("token_endpoint"), str):  # a realm's answer, not some other JSON
                        self._config = conf
        uri = conf.get(name)
        if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
            raise ValueError(f"the realm's OpenID configuration names no {name}")
        return uri


def _readable(pem: str) -> None:
    """Raises ValueError unless ``pem`` is a public key (a realm answering something else must not be kept:
    every token would fail on it until a restart)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except Exception as e:  # noqa: BLE001 - cryptography's errors for bad base64, DER or key types
        raise ValueError(f"the realm's public_key is not a public key ({str(e)[:120]})") from None
    kinds = {"R": rsa.RSAPublicKey, "P": rsa.RSAPublicKey, "E": ec.EllipticCurvePublicKey,
             "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)}
    if not any(isinstance(key, kinds["Ed" if a == "EdDSA" else a[0]]) for a in ALGORITHMS):
        raise ValueError(f"the realm's public_key is a {type(key).__name__.lstrip('_')}, which none of "
                         f"{', '.join(ALGORITHMS)} verifies (POLYPAL_AUTH_ALGORITHMS)")


REALM = _Realm()


class _SignedOut:
    """Sign-ins ended by ``POST /auth/logout`` with the user's token, kept until their tokens would have ended:
    a token of one is refused (401) from then on. The realm's access tokens are not asked about again once
    their signature verifies, so without this a token copied before sign-out (a shared workstation's browser
    history, a second tab) stayed good until it expired. Keyed by the token's sign-in (the value of ``sid``,
    or older Keycloaks' ``session_state``: every token renewed from it too), else its ``jti``, else the token
    itself. In this process's memory: a restart forgets them, and each server process keeps its own."""

    MAX = 100_000  # entries; the oldest-ending are dropped first beyond it
    SKEW = 300  # seconds the realm's clock may be ahead of this machine's
    LONGEST = 7 * 86400  # no entry is kept longer

    def __init__(self):
        self._lock = threading.Lock()
        self._until: dict[tuple[str, str], float] = {}  # key -> when its tokens end (epoch seconds)

    @staticmethod
    def keys(claims: dict, token: str | None = None) -> list[tuple[str, str]]:
        """The sign-in's keys (both claims' values: a realm may name it either way), else the token's."""
        keys = [("sign-in", v) for k in ("sid", "session_state") if isinstance(v := claims.get(k), str) and v]
        if not keys and isinstance(v := claims.get("jti"), str) and v:
            keys = [("jti", v)]
        if not keys and token:
            import hashlib

            # its signed part (header.payload): the signature's text can be written more than one way (with
            # '=' padding appended it still verifies), so a signed-out token came back that way (a probe)
            keys = [("token", hashlib.sha256(token.strip().rsplit(".", 1)[0].encode()).hexdigest())]
        return keys

    def add(self, claims: dict, token: str | None = None) -> None:
        """End the sign-in of a token with these (verified) ``claims``, until the last token renewed from it
        before now could end: its ``exp``, or a token's life (``exp - iat``, at least an hour) from now,
        whichever is later, plus ``SKEW``."""
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        exp = float(exp) if isinstance(exp, (int, float)) else now
        life = exp - float(iat) if isinstance(iat, (int, float)) else 0.0
        until = min(max(exp, now + max(life, 3600.0)) + self.SKEW, now + self.LONGEST)
        with self._lock:
            for k in self.keys(claims, token):
                self._until[k] = max(until, self._until.get(k, 0.0))
            if len(self._until) > self.MAX or len(self._until) % 256 == 0:
                for k in [k for k, t in self._until.items() if t < now]:
                    del self._until[k]
                for k in sorted(self._until, key=self._until.get)[:max(0, len(self._until) - self.MAX)]:
                    del self._until[k]

    def __contains__(self, claims_and_token) -> bool:
        claims, token = claims_and_token
        with self._lock:
            if not self._until:
                return False
            return any(k in self._until for k in self.keys(claims, token))


SIGNED_OUT = _SignedOut()
_RESERVED_NAMES = frozenset({"anonymous", "unknown"})  # what the lease book and the log use for no client id


_NOT_ACCESS = frozenset({"id", "refresh", "offline", "logout"})  # Keycloak's typ of its other tokens


def _clients() -> set[str]:
    """The realm clients whose tokens this server takes (``POLYPAL_AUTH_CLIENTS``, comma-separated, ``*`` for
    any; default MONAI Label's ``MONAI_LABEL_AUTH_CLIENT_ID``, the one its sign-in asks tokens for). A token
    that names no client (no ``azp``) is taken."""
    from monailabel.config import settings

    listed = {c.strip() for c in os.environ.get("POLYPAL_AUTH_CLIENTS", "").split(",") if c.strip()}
    return listed or {settings.MONAI_LABEL_AUTH_CLIENT_ID}


def annotator_id(username: str) -> str:
    """The client id a signed-in user's requests lease frames under and are credited with: the user name,
    unless it is one of the server's own placeholders."""
    return f"user:{username}" if username.lower() in _RESERVED_NAMES else username


def user_of(token: str):
    """MONAI Label's ``User`` of a bearer token, its signature and expiry checked; raises
    ``jwt.InvalidTokenError`` for a token that is not valid (a user name with control characters or over
    128 characters included: one would forge log lines, two cut to one length would be one annotator)."""
    import jwt
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import DEFAULT_USER, User

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return DEFAULT_USER
    options = {"verify_signature": True, "verify_aud": False, "verify_exp": True, "require": ["exp"]}
    try:
        payload = jwt.decode(token, REALM.key(), algorithms=ALGORITHMS, options=options)
    except jwt.InvalidSignatureError:
        import requests

        try:  # the realm may have a new key
            key = REALM.key(fresh=True)
        except (requests.RequestException, ValueError) as e:
            logger.warning(f"a token did not verify and the realm's key could not be fetched again: {e}")
            raise jwt.InvalidSignatureError("Signature verification failed") from None
        payload = jwt.decode(token, key, algorithms=ALGORITHMS, options=options)
    if (payload, token) in SIGNED_OUT:
        raise jwt.InvalidTokenError("signed out: sign in again")
    # a realm's access tokens for this server's client only: the realm signs tokens for every app it serves
    # (with the same realm roles), and ID and refresh tokens with the same key
    kind = payload.get("typ")
    if isinstance(kind, str) and kind.lower() in _NOT_ACCESS:
        raise jwt.InvalidTokenError(f"a {kind} token is not an access token")
    azp = payload.get("azp")
    clients = _clients()
    if azp is not None and "*" not in clients and (not isinstance(azp, str) or azp not in clients):
        raise jwt.InvalidTokenError(f"the token was issued to another client ({str(azp)[:40]!r}; this server "
                                    f"takes {', '.join(sorted(clients))}: POLYPAL_AUTH_CLIENTS)")
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    roles = [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []
    name = payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME)
    if not isinstance(name, str) or not name.strip():
        raise jwt.InvalidTokenError(f"the token names no user ({settings.MONAI_LABEL_AUTH_TOKEN_USERNAME})")
    if len(name) > 128 or any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name) or \
            name != name.strip() or any(unicodedata.category(c) == "Zs" and c != " " for c in name) or \
            name.lower().startswith("user:"):
        # (a name with spaces around it, or a space other than U+0020, would be credited as another user's;
        # "user:" starts the names the server gives its own placeholders' users)
        raise jwt.InvalidTokenError("the token's user name is longer than 128 characters, has control "
                                    "characters, spaces around it or other than U+0020, or starts with "
                                    "'user:': not supported by polyp-al")
    email, full = payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL), payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME)
    return User(username=name, email=email if isinstance(email, str) else None,
                name=full if isinstance(full, str) else None, roles=roles)


def bearer_token(scope) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == b"authorization":
            scheme, _, value = v.decode("latin-1").partition(" ")
            return value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return None


def is_free(path: str) -> bool:
    return path in _FREE_EXACT or path.startswith(_FREE_PREFIX)


def check(scope, role: str | tuple | None = None):
    """The request's user (blocking: the first call fetches the realm's key). Raises ``Unauthorized``:
    401 without a valid token, 403 without ``role``, 503 when the realm cannot be reached."""
    import jwt
    import requests
    from monailabel.config import settings

    token = bearer_token(scope)
    if token is None:
        raise Unauthorized(401, "not signed in: send 'Authorization: Bearer <token>' (POST /auth/token gives one)")
    try:
        user = user_of(token)
    except jwt.InvalidTokenError as e:
        raise Unauthorized(401, f"the token is not valid ({str(e)[:120]})") from None
    except (requests.RequestException, ValueError, jwt.PyJWTError) as e:  # e.g. a key that is no key
        logger.error(f"the realm's public key could not be read from {settings.MONAI_LABEL_AUTH_REALM_URI}: {e}")
        raise Unauthorized(503, "the sign-in realm cannot be reached; try again later") from None
    wanted = (role,) if isinstance(role, str) else tuple(role or ())
    if wanted and not set(wanted) & set(user.roles):
        raise Unauthorized(403, "role " + " or ".join(f'"{r}"' for r in wanted) + " is required to perform this action")
    return user


def role_for(method: str, path: str) -> str | tuple | None:
    """The role the Gate itself asks for, before any body is read: polyp-al's model upload/delete (admin),
    the trainings, scoring runs and datastore writes (MONAI Label's roles for them: admin, annotator), and
    the user role for the rest, so that a user without the role is told 403 before the request costs
    anything. None: the token alone (``/auth/``)."""
    from monailabel.config import settings

    if path.startswith("/model/") and method in ("PUT", "DELETE"):
        return settings.MONAI_LABEL_AUTH_ROLE_ADMIN
    if path.startswith("/train") and method in ("POST", "DELETE"):
        return settings.MONAI_LABEL_AUTH_ROLE_ADMIN
    if path.startswith("/scoring") and method in ("POST", "DELETE"):
        return settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
    # the datastore's writes: MONAI Label's roles, asked before a body is read (a user without them could
    # make the server read and spool a body of up to 1 GiB, charged against the disk floor, before its 403)
    if path.startswith("/datastore") and method == "DELETE":
        return settings.MONAI_LABEL_AUTH_ROLE_ADMIN
    if path.startswith("/datastore") and (method in ("PUT", "POST") or path.rstrip("/") == "/datastore/dataset"):
        return settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
    if path.startswith("/auth/"):  # the token's own check (/auth/token/valid)
        return None
    # every other endpoint takes one of MONAI Label's roles (theirs are exact: an admin-only account reads
    # the logs, so any of the three passes here and the endpoint asks for its own)
    return (settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
            settings.MONAI_LABEL_AUTH_ROLE_ADMIN)


def current_saver() -> str | None:
    """The signed-in user saving a label in this thread (authentication on), else None."""
    return getattr(_saver, "user", None)


def install(fastapi_app=None, on_sign_out=None) -> None:
    """MONAI Label's endpoints decode tokens with ``user_of``; with authentication on, signing in and renewing
    a token are polyp-al's (``signin.py``), next sample is leased to the token's user and a label save records
    who saved it."""
    import monailabel.endpoints.activelearning as al
    import monailabel.endpoints.datastore as ds
    import monailabel.endpoints.user.auth as mauth

    mauth.from_token = user_of
    if not enabled():
        return
    if fastapi_app is not None:  # in place of MONAI Label's POST /auth/token (the API docs list these)
        import monailabel.endpoints.login as login

        def theirs(r):
            return getattr(r, "path", None) == "/auth/token" and "POST" in (getattr(r, "methods", None) or ())

        # FastAPI copies an included router's routes (older) or keeps the router and reads it (0.16x)
        for router in (fastapi_app.router, login.router):
            router.routes[:] = [r for r in router.routes if not theirs(r)]
            getattr(router, "_mark_routes_changed", lambda: None)()
        from lib.signin import routes

        fastapi_app.router.routes[0:0] = routes(on_sign_out)
        getattr(fastapi_app.router, "_mark_routes_changed", lambda: None)()
        fastapi_app.openapi_schema = None
    sample, save_label = al.sample, ds.save_label

    def sample_as_user(strategy, params=None, user=None):
        return sample(strategy, {**(params or {}), "client_id": annotator_id(user)}, user)

    def save_label_as_user(background_tasks, image, params, tag, label, user=None):
        _saver.user = annotator_id(user)
        try:
            return save_label(background_tasks, image, params, tag, label, user)
        finally:
            _saver.user = None

    al.sample, ds.save_label = sample_as_user, save_label_as_user
    from monailabel.config import settings

    logger.info(f"authentication on: tokens signed by {settings.MONAI_LABEL_AUTH_REALM_URI} ({', '.join(ALGORITHMS)}); "
                f"next samples are leased to, and labels credited to, the token's user")
