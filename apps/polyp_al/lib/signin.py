"""Signing in, renewing a token and signing out, with the realm's token and logout endpoints (authentication
on: ``auth.install`` puts these routes in place of MONAI Label's ``POST /auth/token``).

MONAI Label's sign-in kept only the access token of the realm's answer, so a page or client had to ask for the
password again each time it ended (Keycloak's default: 5 minutes), and its errors were bare 500s. Here the
refresh token is passed on, renewed without the password, and ended on sign-out; the realm's refusals are
401s that say so, an unreachable or odd realm a 503.
"""

from __future__ import annotations

import logging

from lib.auth import REALM, SIGNED_OUT, Unauthorized, bearer_token, annotator_id, check

logger = logging.getLogger(__name__)


TOKEN_FIELDS = {"access_token": str, "token_type": str, "expires_in": int, "refresh_token": str,
                "refresh_expires_in": int}  # what a sign-in or renewal answers: the token, not the realm's extras


def grant(form: dict) -> dict:
    """The realm's token endpoint asked for a token with ``form`` (``grant_type`` password or refresh_token,
    MONAI Label's client id added); its answer cut to ``TOKEN_FIELDS``. Raises ``Unauthorized``: 401 when the
    realm refuses the password or the refresh token (saying so), 503 when it cannot be reached or answers
    anything but a token (MONAI Label: a bare 500 for each)."""
    import requests
    from monailabel.config import settings

    unavailable = Unauthorized(503, "the sign-in realm cannot be reached or failed; try again later")
    try:
        url = REALM.endpoint("token_endpoint")
    except Exception as e:  # noqa: BLE001 - requests' errors, a realm answering other than JSON
        logger.error(f"sign-in: the realm's OpenID configuration could not be read: {e}")
        raise unavailable from None
    try:
        r = requests.post(url, data={"client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, **form},
                          headers={"Content-Type": "application/x-www-form-urlencoded"},
                          timeout=settings.MONAI_LABEL_AUTH_TIMEOUT)
    except requests.RequestException as e:
        logger.error(f"sign-in: the realm's token endpoint {url} cannot be reached: {e}")
        raise unavailable from None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code in (400, 401):
        why = str(body.get("error_description") or "")[:200] if isinstance(body, dict) else ""
        what = ("the sign-in has ended: sign in again with your password" if form.get("grant_type") == "refresh_token"
                else "wrong user name or password")
        raise Unauthorized(401, what + (f" ({why})" if why else ""))
    if r.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        logger.error(f"sign-in: the realm's token endpoint {url} answered {r.status_code} without a token")
        raise unavailable
    return {k: body[k] for k, t in TOKEN_FIELDS.items() if isinstance(body.get(k), t)}


def end_session(refresh_token: str) -> bool:
    """Ask the realm to end the sign-in of ``refresh_token`` (its ``end_session_endpoint``, as Keycloak's
    logout with a refresh token): no token of that sign-in is renewed after it. True: the realm ended it;
    False: it had ended already. Raises ``Unauthorized`` 503 when the realm cannot do it."""
    import requests
    from monailabel.config import settings

    try:
        url = REALM.endpoint("end_session_endpoint")
        r = requests.post(url, data={"client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, "refresh_token": refresh_token},
                          headers={"Content-Type": "application/x-www-form-urlencoded"},
                          timeout=settings.MONAI_LABEL_AUTH_TIMEOUT)
    except (requests.RequestException, ValueError) as e:
        logger.error(f"sign-out: the realm's logout endpoint cannot be reached: {e}")
        raise Unauthorized(503, "the sign-in realm cannot be reached: the sign-in may still be renewable "
                                "until it times out") from None
    if r.status_code == 400:  # Keycloak: invalid_grant, the refresh token is not active (already ended)
        try:
            error = r.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if error == "invalid_grant":
            return False
        logger.error(f"sign-out: the realm's logout endpoint {url} refused it ({str(error)[:80]})")
        raise Unauthorized(503, f"the sign-in realm did not end the sign-in ({str(error)[:80]})")
    if not 200 <= r.status_code < 300:
        logger.error(f"sign-out: the realm's logout endpoint {url} answered {r.status_code}")
        raise Unauthorized(503, f"the sign-in realm did not end the sign-in (it answered {r.status_code})")
    return True


def _claims(token: str) -> dict:
    """A JWT's claims, unverified (the caller has verified it, or the realm has accepted it), {} if it is none."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def routes(on_sign_out=None):
    """``POST /auth/token`` (in place of MONAI Label's, which kept only the access token: the realm's refresh
    token is passed on too) and ``POST /auth/token/refresh``: a new token for a refresh token, so that a
    signed-in annotator is not asked for the password each time the realm's short-lived access token ends
    (Keycloak's default: 5 minutes); both answer ``Cache-Control: no-store``. ``POST /auth/logout``: the
    realm ends the sign-in of a refresh token (a shared workstation: the next user cannot renew it), and with
    the user's token beside it, ``on_sign_out(annotator id)`` releases what the user held."""
    from fastapi import Request
    from fastapi.routing import APIRoute
    from starlette.responses import JSONResponse

    async def answer(request, fields: tuple[str, ...], grant_type: str):
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - not a form
            form = {}
        values = {f: form.get(f) for f in fields}
        missing = [f for f, v in values.items() if not isinstance(v, str) or not v]
        if missing:
            return JSONResponse({"detail": f"{' and '.join(missing)} required (a form, "
                                           f"application/x-www-form-urlencoded)"}, status_code=422)
        if grant_type == "password" and form.get("grant_type") not in (None, "", "password"):
            return JSONResponse({"detail": "grant_type must be password"}, status_code=422)
        try:  # blocking: the Gate runs /auth/ requests on a worker thread's own loop (authentication on)
            got = grant({**values, "grant_type": grant_type})
        except Unauthorized as e:
            return JSONResponse({"detail": e.detail}, status_code=e.status, headers={"Cache-Control": "no-store"})
        return JSONResponse(got, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def sign_in(request: Request):
        return await answer(request, ("username", "password"), "password")

    async def renew(request: Request):
        return await answer(request, ("refresh_token",), "refresh_token")

    async def sign_out(request: Request):
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - not a form
            form = {}
        rt = form.get("refresh_token")
        if not isinstance(rt, str) or not rt:
            return JSONResponse({"detail": "refresh_token required (a form, application/x-www-form-urlencoded)"},
                                status_code=422)
        user = None
        if request.headers.get("authorization"):
            try:  # blocking, as below: the user's own token with it, verified
                user = check(request.scope)
            except Unauthorized:
                pass  # (ended already: their frame goes back when its lease times out)
        try:  # blocking: the Gate runs /auth/ requests on a worker thread's own loop (authentication on)
            end_session(rt)
        except Unauthorized as e:
            return JSONResponse({"detail": e.detail}, status_code=e.status)
        if user is not None:  # its tokens are refused from now on, not only no longer renewed
            # (the refresh token's own claims are not used: it cannot be verified here, and a realm other
            # than Keycloak may answer 2xx to any logout, so a forged one could name another's sign-in)
            token = bearer_token(request.scope)
            SIGNED_OUT.add(_claims(token), token)
        released = False
        if on_sign_out is not None and user is not None:
            try:  # the frame they held goes back to the pool now
                on_sign_out(annotator_id(user.username))
                released = True
            except Exception as e:  # noqa: BLE001 - signed out all the same
                logger.warning(f"sign-out: the user's leases were not released: {e}")
        return JSONResponse({"signed_out": True, "frames_released": released})

    for fn in (sign_in, renew, sign_out):  # the class, not the string this module's annotations would be
        fn.__annotations__ = {"request": Request}
    return [APIRoute("/auth/token", sign_in, methods=["POST"], tags=["Auth"],
                     summary="Sign in: a token (and the realm's refresh token) for a user name and password"),
            APIRoute("/auth/token/refresh", renew, methods=["POST"], tags=["Auth"],
                     summary="A new token for a refresh token (form field refresh_token)"),
            APIRoute("/auth/logout", sign_out, methods=["POST"], tags=["Auth"],
                     summary="The realm ends the sign-in of a refresh token (form field refresh_token)")]
