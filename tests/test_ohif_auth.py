"""Annotating in OHIF with MONAI Label's authentication on: real Orthanc, real OHIF, a real polyp-al server
with ``MONAI_LABEL_AUTH_ENABLE``, a stand-in Keycloak realm (tests/test_auth.py), headless Chromium.

The page signs in with a user name and password (POST /auth/token), then every request it makes carries
the token, OHIF's DICOMweb reads through /proxy/dicom included. The token is renewed with the realm's refresh
token before it ends, and after it has (a 401 at Save), without the password; once the realm has ended the
sign-in, Save asks for the password again, and the labelmap is saved after it, not lost. Sign out ends the
sign-in at the realm.
"""

from __future__ import annotations

import json
import shutil

import pytest

from server_utils import SAMPLE, Server, free_port, http
from test_auth import ADMIN, ANNOTATOR, USER, _key, _realm, bearer, token
from test_ohif_annotation import (BRUSH_RADIUS, _browser, _check_painted, _frame_size, _page_mapping, _reap,
                                  _skip_reason, _stadium, _stored_label, _stroke)

from polypal.serving import dicomweb

pytestmark = pytest.mark.server


def _sign_in(b, user: str, password: str):
    b.wait_js("document.querySelector('[data-polypal=sign-in]')", 60, "the sign-in form")
    b.js(f"document.querySelector('[data-polypal=username]').value = {json.dumps(user)}; "
         f"document.querySelector('[data-polypal=password]').value = {json.dumps(password)}")
    b.click_selector('[data-polypal="sign-in-button"]')


def test_annotate_in_ohif_with_authentication_on(tmp_path):
    why = _skip_reason()
    if why:
        print(f"SKIP test_ohif_auth: {why}")
        pytest.skip(why)
    data = tmp_path / "orthanc"
    url = dicomweb.up(data, port=free_port(), dicom_port=free_port())
    _reap(data)
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((SAMPLE / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, frames / p.name)
    assert dicomweb.load(url, frames)["new"] == 3
    key = _key()
    realm_url, realm = _realm(key)
    admin = bearer(token(key, "dr-admin", [ADMIN, ANNOTATOR, USER]))
    srv = Server(url + "/dicom-web", tmp_path, conf={"batch_size": "3"}, headers=admin,
                 env={"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm_url}).start()
    b = _browser()
    try:
        b.goto(f"{srv.url}/annotate/")
        _sign_in(b, "dr-okafor", "wrong")
        b.wait_js("document.querySelector('[data-polypal=sign-in-message]').innerText.includes('password')", 30,
                  "the refusal of a wrong password")
        _sign_in(b, "dr-okafor", "s3cret")
        b.wait_js("window.polypal && ['ready', 'error', 'nothing-left'].includes(window.polypal.phase) "
                  "&& location.pathname.includes('segmentation')", 120, "the annotator's frame")
        st = b.js("JSON.parse(JSON.stringify(window.polypal))")
        assert st["phase"] == "ready", st  # OHIF read the frame through the proxy with the token
        image = b.js("new URLSearchParams(location.search).get('polypal_image')")
        s, info = http("GET", f"{srv.url}/datastore/image/info?image={image}", headers=admin)
        assert info["served"]["client_id"] == "dr-okafor", info

        skew = b.js("Number(sessionStorage.getItem('polypal.clock-skew'))")
        assert abs(skew) < 30, skew  # the realm's clock against the browser's, taken at sign-in (one machine here)
        # the viewer reloaded with an ended token (a laptop back from sleep): renewed at once, before OHIF's
        # reads go out (they waited for it), not after 10 s of 401s
        expired = token(key, "dr-okafor", [ANNOTATOR, USER], -60)
        b.js(f"window.polypalOld = 1; sessionStorage.setItem('polypal.token', {json.dumps(expired)}); "
             f"location.reload()")
        b.wait_js("!window.polypalOld && window.polypal && ['ready', 'error'].includes(window.polypal.phase)", 120,
                  "the reloaded frame")
        st = b.js("JSON.parse(JSON.stringify(window.polypal))")
        assert st["phase"] == "ready" and st.get("renewed", 0) >= 1, st
        rows, cols = _frame_size(url, image)
        mapping, _ = _page_mapping(b, cols, rows)
        p0 = (round(0.25 * cols), round(0.4 * rows))
        p1 = (p0[0] + round(0.3 * cols), p0[1])
        _stroke(b, "Brush", mapping, p0, p1)
        # the token nears its end while the frame is open: the page renews it with the realm's refresh token
        # (no password), within its 10-second check
        assert b.js("!!sessionStorage.getItem('polypal.refresh')")
        # (a browser clock 10 minutes behind the realm's, as measured at sign-in: the token has really ended)
        ending = token(key, "dr-okafor", [ANNOTATOR, USER], ttl=200, life=300)
        b.js(f"sessionStorage.setItem('polypal.clock-skew', '-600'); "
             f"sessionStorage.setItem('polypal.token', {json.dumps(ending)})")
        b.wait_js(f"window.polypal.renewed >= 1 && sessionStorage.getItem('polypal.token') !== {json.dumps(ending)}",
                  30, "the token renewed before its end")
        # it has expired by Save: the 401 is answered by renewing it, and the label is saved, no password asked
        renewals = realm.polypal["renewals"]
        b.js(f"sessionStorage.setItem('polypal.token', {json.dumps(token(key, 'dr-okafor', [ANNOTATOR, USER], -60))})")
        b.js("window.polypal.saved = null; window.polypal.saveError = null")
        b.click_selector('[data-polypal="save"]')
        b.wait_js("window.polypal.saved || window.polypal.saveError", 60, "the save after renewing the token")
        st = b.js("JSON.parse(JSON.stringify(window.polypal))")
        assert st["saved"] and not st.get("saveError") and not st.get("signIn"), st
        assert realm.polypal["renewals"] == renewals + 1
        assert b.js("document.querySelector('[data-polypal=sign-in]') === null")
        # the realm has ended the sign-in (its session timed out): Save asks for the password again, then saves
        realm.polypal["sessions"].clear()
        b.js(f"sessionStorage.setItem('polypal.token', {json.dumps(token(key, 'dr-okafor', [ANNOTATOR, USER], -60))})")
        b.js("window.polypal.saved = null; window.polypal.saveError = null")
        b.click_selector('[data-polypal="save"]')
        _sign_in(b, "dr-okafor", "s3cret")
        b.wait_js("window.polypal.saved || window.polypal.saveError", 60, "the save after signing in again")
        st = b.js("JSON.parse(JSON.stringify(window.polypal))")
        assert st["saved"] and not st.get("saveError"), st
        label = _stored_label(url, image)
        assert int(label.sum()) == st["saved"]["pixels"]
        _check_painted(label, _stadium(rows, cols, p0, p1, BRUSH_RADIUS), "brush, saved after signing in again")
        s, info = http("GET", f"{srv.url}/info/", headers=admin)  # a DICOMweb server credits its annotators too
        assert info["polyp_al"]["annotators"]["dr-okafor"]["labels"] == 1, info["polyp_al"]["annotators"]
        # Sign out (a shared workstation): the realm ends the sign-in, the tab forgets its tokens, and the
        # start page asks the next annotator to sign in
        # ... pressed while a renewal is under way (the realm slow): its answer must not sign the tab in again
        # for the next annotator (a review: it was kept, and the start page asked nobody to sign in)
        assert b.js("sessionStorage.getItem('polypal.refresh')") in realm.polypal["sessions"]
        realm.polypal["token_delay"] = 3.0
        posts = realm.polypal["posts"]
        b.js("sessionStorage.setItem('polypal.clock-skew', '-100000')")  # the token looks ended: renewal due
        import time

        t0 = time.time()
        while realm.polypal["posts"] == posts and time.time() - t0 < 30:
            time.sleep(0.05)
        assert realm.polypal["posts"] > posts, "no renewal started"
        b.click_selector('[data-polypal="sign-out"]')
        b.wait_js("document.querySelector('[data-polypal=sign-in]') && !location.pathname.includes('segmentation')",
                  60, "the sign-in form after signing out")
        realm.polypal["token_delay"] = 0.0
        assert "dr-okafor" not in realm.polypal["sessions"].values()  # the renewed sign-in ended too
        assert b.js("sessionStorage.getItem('polypal.token') === null && sessionStorage.getItem('polypal.refresh') === null")
        # the start page's own Sign out (its error screen: here a strategy that does not exist), for the next
        # annotator; the token it had is refused by the server from then on, not only no longer renewed
        b.goto(f"{srv.url}/annotate/?strategy=no-such-strategy")
        _sign_in(b, "dr-night", "n1ght")
        b.wait_js("!!(window.polypal && window.polypal.error && document.querySelector('[data-polypal=sign-out]'))", 60,
                  "the start page's error screen with its Sign out")
        night = b.js("sessionStorage.getItem('polypal.token')")
        assert http("GET", f"{srv.url}/auth/token/valid", headers=bearer(night))[0] == 200
        b.js("window.polypalOld = 1")
        b.click_selector('[data-polypal="sign-out"]')
        b.wait_js("!window.polypalOld && !!document.querySelector('[data-polypal=sign-in]')", 60,
                  "the sign-in form after signing out on the start page")
        assert "dr-night" not in realm.polypal["sessions"].values()
        assert b.js("sessionStorage.getItem('polypal.token') === null && sessionStorage.getItem('polypal.refresh') === null")
        assert http("GET", f"{srv.url}/auth/token/valid", headers=bearer(night))[0] == 401
    finally:
        b.close()
        srv.stop()
        realm.shutdown()
        dicomweb.down(data)
