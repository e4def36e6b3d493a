"""Annotating in OHIF (issue 14): real Orthanc, real OHIF 3.13.2 (build/ohif/dist), real polyp-al server,
headless Chromium driven through DevTools with real input events (Input.dispatchMouseEvent).

One scenario, in order (one server and one Orthanc for all, about 1-2 min):
two browsers open /annotate/ and get different frames; each paints a known stroke with the Brush and
saves; the stored labels (DICOM SEG read back from Orthanc) have the stroke's area at the stroke's place;
training started from the browser counts both labels; with a model that predicts "polyp" everywhere,
Next brings a frame whose prediction is loaded as the labelmap, an Eraser stroke removes a known band,
and the stored label has that band gone.

Screenshots of each step go to $POLYPAL_OHIF_SHOTS (results/ohif-annotation/ when made for the README),
else to the test's temporary folder.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import always_polyp_model
from server_utils import REPO, SAMPLE, Server, free_port, http

from polypal.serving import dicomweb

pytestmark = pytest.mark.server

OHIF_DIST = REPO / "build" / "ohif" / "dist"
BRUSH_RADIUS = 25  # OHIF's default brush radius, in mm: 25 frame pixels (our frames have no PixelSpacing: 1 mm)
N_FRAMES = 6


def _skip_reason() -> str | None:
    from browser import chromium_path

    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()):
        return "Orthanc not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh does it as root)"
    try:
        dicomweb.find_dicomweb_plugin()
    except SystemExit as e:
        return str(e)
    if not chromium_path():
        return "Chromium not installed (apt-get install chromium; scripts/setup.sh does it as root)"
    if not (OHIF_DIST / "index.html").exists():
        return f"OHIF is not installed in {OHIF_DIST} (bash ohif/install.sh; scripts/setup.sh runs it)"
    return None


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("POLYPAL_OHIF_SHOTS") or tmp_path_factory.mktemp("ohif-shots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Orthanc with N_FRAMES sample frames, and polyp-al on it (smoke profile)."""
    why = _skip_reason()
    if why:
        print(f"SKIP test_ohif_annotation: {why}")
        pytest.skip(why)
    work = tmp_path_factory.mktemp("ohif-annotation")
    data = work / "orthanc"
    url = dicomweb.up(data, port=free_port(), dicom_port=free_port())
    _reap(data)
    frames = work / "frames"
    frames.mkdir()
    for p in sorted((SAMPLE / "images").glob("*.jpg"))[:N_FRAMES]:
        shutil.copy(p, frames / p.name)
    assert dicomweb.load(url, frames)["new"] == N_FRAMES
    srv = Server(url + "/dicom-web", work, conf={"batch_size": "4"}).start()
    try:
        yield srv, url, work
    finally:
        srv.stop()
        dicomweb.down(data)


def _reap(data: Path):
    """Reap Orthanc (this process's child) when it exits, so that ``dicomweb.down`` returns at once."""
    import threading

    pid = json.loads((Path(data).resolve() / "polypal-orthanc.json").read_text())["pid"]

    def reap():
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    threading.Thread(target=reap, daemon=True).start()


def _browser():
    from browser import Browser

    return Browser()


def _open_next(b, srv, timeout=120) -> dict:
    """Open the annotator's one address; wait until the frame, its labelmap (and prediction) are ready."""
    t0 = time.time()
    b.goto(f"{srv.url}/annotate/")
    b.wait_js("window.polypal && ['ready', 'error', 'nothing-left'].includes(window.polypal.phase) "
              "&& location.pathname.includes('segmentation')", timeout, "the annotator's frame")
    st = b.js("JSON.parse(JSON.stringify(window.polypal))")
    assert st["phase"] == "ready", st
    st["seconds"] = time.time() - t0
    st["image"] = b.js("new URLSearchParams(location.search).get('polypal_image')")
    st["client"] = b.js("localStorage.getItem('polypal.client')")
    return st


def _page_mapping(b, cols: int, rows: int):
    """Frame pixel (x, y) centre -> page CSS px, from the viewport element's box alone (OHIF fits the frame
    to the viewport and centres it): an independent model of what the test expects, not cornerstone's."""
    r = b.rect(".cornerstone-viewport-element")
    s = min(r["w"] / cols, r["h"] / rows)
    ox, oy = r["x"] + (r["w"] - cols * s) / 2, r["y"] + (r["h"] - rows * s) / 2
    return (lambda x, y: (ox + (x + 0.5) * s, oy + (y + 0.5) * s)), s


def _stadium(rows: int, cols: int, p0, p1, r: float) -> np.ndarray:
    """Pixels within r of the segment p0-p1 (what a round brush dragged along it covers)."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(float)
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return (xx - (x0 + t * dx)) ** 2 + (yy - (y0 + t * dy)) ** 2 <= r * r


def _stroke(b, tool: str, mapping, p0, p1):
    b.click_selector(f'[data-cy="{tool}-btn"]')  # a real click: a DOM .click() does not activate OHIF's tools
    b.wait_js("window.cornerstoneTools.ToolGroupManager.getToolGroupForViewport('default')"
              f".getActivePrimaryMouseButtonTool().includes('{tool}')", 15, f"OHIF's {tool} tool active")
    b.drag([mapping(*p0), mapping(*p1)], step_px=3)
    time.sleep(0.3)


def _save(b) -> dict:
    b.js("window.polypal.saved = null; window.polypal.saveError = null")
    b.click_selector('[data-polypal="save"]')
    b.wait_js("window.polypal.saved || window.polypal.saveError", 60, "the save")
    st = b.js("JSON.parse(JSON.stringify(window.polypal))")
    assert st["saved"] and not st.get("saveError"), st
    return st["saved"]


def _stored_label(url: str, series: str) -> np.ndarray:
    """The newest 'polyp-al label' SEG on that frame, read back from Orthanc: bool (rows, cols)."""
    from pydicom import dcmread

    segs = [s for s in http("GET", url + "/dicom-web/series?Modality=SEG")[1]]
    found = []
    for s in segs:
        sid = s["0020000E"]["Value"][0]
        inst = http("GET", f"{url}/dicom-web/instances?SeriesInstanceUID={sid}")[1][0]
        oid = http("POST", url + "/tools/lookup", inst["00080018"]["Value"][0].encode())[1][0]["ID"]
        ds = dcmread(io.BytesIO(http("GET", f"{url}/instances/{oid}/file")[1]))
        ref = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
        if ref == series and "label" in str(ds.SeriesDescription):
            found.append((str(ds.SeriesDate) + str(ds.SeriesTime), ds))
    assert found, f"no label SEG on {series} in Orthanc"
    ds = sorted(found, key=lambda t: t[0])[-1][1]
    px = ds.pixel_array
    return (px[0] if px.ndim == 3 else px).astype(bool)


def _frame_size(url: str, series: str) -> tuple[int, int]:
    inst = http("GET", f"{url}/dicom-web/instances?SeriesInstanceUID={series}")[1][0]
    return int(inst["00280010"]["Value"][0]), int(inst["00280011"]["Value"][0])  # rows, columns


def _check_painted(label: np.ndarray, expect: np.ndarray, what: str) -> dict:
    area, want = int(label.sum()), int(expect.sum())
    ys, xs = np.nonzero(label)
    eys, exs = np.nonzero(expect)
    got_c, want_c = (xs.mean(), ys.mean()), (exs.mean(), eys.mean())
    iou = float((label & expect).sum() / max(1, (label | expect).sum()))
    m = {"what": what, "area": area, "expected_area": want, "area_ratio": round(area / want, 3),
         "centroid": [round(v, 1) for v in got_c], "expected_centroid": [round(v, 1) for v in want_c],
         "iou": round(iou, 3)}
    assert abs(area / want - 1) < 0.12, m
    assert math.dist(got_c, want_c) < 3, m  # at the stroke's place: a transposed or flipped label is far off
    assert iou > 0.85, m
    return m


def test_annotate_in_ohif_draw_save_next_train_and_edit_a_prediction(stack, shots):
    srv, url, work = stack
    measures = {}
    a, b = _browser(), _browser()
    a.watch_network()
    try:
        # 1. two browsers (their own profiles, so their own client ids) open the one address
        sa = _open_next(a, srv)
        sb = _open_next(b, srv)
        measures["open_seconds"] = [round(sa["seconds"], 1), round(sb["seconds"], 1)]
        assert sa["client"] != sb["client"] and sa["client"].startswith("browser-")
        assert sa["image"] != sb["image"], "two annotators got the same frame"
        assert "No model yet" in a.js("document.querySelector('[data-polypal=status]').innerText")
        a.screenshot(shots / "1-next-frame-no-model.png")

        # an empty labelmap cannot be a DICOM SEG: the server's 422 shows in the box, nothing is stored
        b.click_selector('[data-polypal="save"]')
        b.wait_js("window.polypal.saveError", 60, "the refusal of an empty label")
        assert "422" in b.js("window.polypal.saveError")
        assert "422" in b.js("document.querySelector('[data-polypal=status]').innerText")

        # 2. each paints a known horizontal stroke with the Brush (real mouse events) and saves
        saved = {}
        for br, st, (fx, fy) in ((a, sa, (0.2, 0.3)), (b, sb, (0.45, 0.65))):
            rows, cols = _frame_size(url, st["image"])
            assert (rows, cols) == (st["rows"], st["columns"])
            mapping, scale = _page_mapping(br, cols, rows)
            p0 = (round(fx * cols), round(fy * rows))
            p1 = (p0[0] + round(0.3 * cols), p0[1])
            _stroke(br, "Brush", mapping, p0, p1)
            if br is a:
                a.screenshot(shots / "2-brush-stroke.png")
            s = _save(br)
            if br is a:
                a.screenshot(shots / "3-saved.png")
            label = _stored_label(url, st["image"])
            assert label.shape == (rows, cols)
            assert int(label.sum()) == s["pixels"], "the stored label is not what the browser's labelmap held"
            m = _check_painted(label, _stadium(rows, cols, p0, p1, BRUSH_RADIUS), f"brush on {st['image'][-12:]}")
            m.update(save_ms=s["ms"], frame=[rows, cols], page_px_per_frame_px=round(scale, 3))
            measures.setdefault("brush", []).append(m)
            saved[st["image"]] = label

        # OHIF's own "store segmentation" (STOW to Orthanc through /proxy/dicom, around the label checks) is
        # refused: the proxy is read-only, and nothing new reaches Orthanc
        n_seg = len(http("GET", url + "/dicom-web/series?Modality=SEG")[1])
        stored = a.js("""(async () => { try {
            const g = await window.commandsManager.runCommand('generateSegmentation',
                {segmentationId: window.polypal.segmentationId, options: {SeriesDescription: 'viewer store'}});
            await window.extensionManager.getActiveDataSource()[0].store.dicom(g.dataset);
            return 'stored'; } catch (e) { return 'refused: ' + String(e && (e.message || e.status || e)); } })()""")
        assert stored.startswith("refused"), stored
        assert len(http("GET", url + "/dicom-web/series?Modality=SEG")[1]) == n_seg

        # an unsaved edit holds Next back once
        rows, cols = sb["rows"], sb["columns"]
        mapping, _ = _page_mapping(b, cols, rows)
        _stroke(b, "Brush", mapping, (round(0.1 * cols), round(0.9 * rows)), (round(0.2 * cols), round(0.9 * rows)))
        where = b.js("location.href")
        b.click_selector('[data-polypal="next"]')
        b.wait_js("document.querySelector('[data-polypal=status]').innerText.includes('Unsaved changes')", 10)
        assert b.js("location.href") == where

        # 3. training started from the browser counts both labels, its progress shown in the bar
        a.click_selector('[data-polypal="train"]')
        t0 = time.time()
        a.wait_js("document.querySelector('[data-polypal=training]').innerText.includes('trained on')", 180,
                  "the training's end in the annotator's bar")
        measures["train_seconds_seen_in_browser"] = round(time.time() - t0, 1)
        a.screenshot(shots / "4-trained.png")
        st = http("GET", srv.url + "/info/")[1]["train_stats"]["polyp_seg"]
        assert st["status"] == "DONE" and st["train_frames"] + st["val_frames"] == 2, st

        # 4. a model that says "polyp" everywhere: Next brings a frame with that prediction as the labelmap;
        #    an Eraser stroke removes a band, and the stored label has that band gone
        always_polyp_model(work / "model" / "polyp_seg-smoke.pt")
        time.sleep(1.1)  # the infer task reloads the model when the file's mtime changes
        a.js("window.polypalOld = 1")
        a.click_selector('[data-polypal="next"]')
        # Next has left the frame (the start page, or already the frame it sent the page on to: waiting for the
        # start page itself missed it when it redirected between two polls); a wait, not a speed check
        a.wait_js("!window.polypalOld", 90, "Next to leave the frame")
        sn = _open_next(a, srv)
        assert sn["image"] not in saved and sn["image"] != sb["image"]
        rows, cols = sn["rows"], sn["columns"]
        assert sn["predictionPixels"] == rows * cols, sn
        a.screenshot(shots / "5-prediction-loaded.png")
        mapping, _ = _page_mapping(a, cols, rows)
        p0, p1 = (round(0.25 * cols), round(0.5 * rows)), (round(0.7 * cols), round(0.5 * rows))
        _stroke(a, "Eraser", mapping, p0, p1)
        a.screenshot(shots / "6-prediction-erased.png")
        s = _save(a)
        label = _stored_label(url, sn["image"])
        erased = _stadium(rows, cols, p0, p1, BRUSH_RADIUS)
        m = _check_painted(~label, erased, "eraser on the prediction")
        m["save_ms"] = s["ms"]
        measures["eraser"] = m
        assert label[~_stadium(rows, cols, p0, p1, BRUSH_RADIUS + 3)].all(), "the eraser removed more than its band"

        # works offline: the page asked nothing of any other origin
        foreign = [u for u in a.requests if not u.startswith((srv.url + "/", "data:", "blob:"))]
        assert not foreign, foreign[:10]
        measures["requests_seen"] = len(a.requests)
    finally:
        for br, name in ((a, "a"), (b, "b")):
            try:
                errors = [c for c in br.console(("error",)) if "hanging protocol" not in c]
                if errors:  # kept beside the screenshots when the page logged any
                    (shots / f"console-{name}.txt").write_text("\n".join(errors[-50:]))
            except Exception:  # noqa: BLE001
                pass
            br.close()
        (shots / "measures.json").write_text(json.dumps(measures, indent=1))
        print(json.dumps(measures, indent=1))


def test_annotate_route_keeps_the_gate_and_serves_only_its_files(stack):
    """/annotate/ is behind the same Gate as the API (foreign Origin or Host: 403), read-only, and serves no
    file outside OHIF's dist and our ohif/ folder."""
    srv = stack[0]
    s, body = http("GET", srv.url + "/annotate/")
    assert s == 200 and b"annotate.js" in body
    assert http("GET", srv.url + "/annotate/", headers={"Origin": "http://evil.example"})[0] == 403
    assert http("GET", srv.url + "/annotate/", headers={"Host": "evil.example"})[0] == 403
    assert http("GET", srv.url + "/annotate/", headers={"Origin": srv.url})[0] == 200  # same origin
    for method in ("PUT", "POST", "DELETE"):
        assert http(method, srv.url + "/annotate/app-config.js", b"x")[0] in (403, 404, 405), method
    assert http("GET", srv.url + "/proxy/dicom/qido/studies")[0] == 200  # what OHIF reads through
    for path in ("/proxy/dicom/wado/studies", "/proxy/dicom/stow/studies", "/proxy/dicom/studies"):
        assert http("POST", srv.url + path, b"x", {"Content-Type": "application/dicom"})[0] == 405, path
    for path in ("/annotate/../../setup.py", "/annotate/%2e%2e/%2e%2e/README.md", "/annotate/..%2f..%2fREADME.md",
                 "/annotate/polypal/../../README.md", "/annotate/%2fetc%2fpasswd", "/annotate/nope.js"):
        s, body = http("GET", srv.url + path)
        assert s == 404 or (s == 200 and body.startswith(b"<!doctype html>")), (path, s, body[:80])


def test_annotate_routes_resolve_inside_their_folders(tmp_path):
    """No server needed: a symlink out of the dist folder is not followed, a missing dist says how to install."""
    import importlib.util

    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    spec = importlib.util.spec_from_file_location("polypal_annotate", REPO / "apps" / "polyp_al" / "lib" / "annotate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html>index")
    (dist / "app.bundle.1.js").write_text("js")
    (tmp_path / "secret.txt").write_text("secret")
    (dist / "leak.txt").symlink_to(tmp_path / "secret.txt")
    c = TestClient(Starlette(routes=mod.make_routes(dist)))
    assert c.get("/annotate/app.bundle.1.js").text == "js"
    assert c.get("/annotate/segmentation").text == "<!doctype html>index"  # a page of the single-page app
    assert c.get("/annotate/leak.txt").status_code == 404
    assert c.get("/annotate/app-config.js").text.startswith("/**")  # ours, not the dist's
    assert c.put("/annotate/app-config.js").status_code == 405
    # OHIF's other HTML pages load scripts from CDNs: never served in the API's origin
    (dist / "silent-refresh.html").write_text('<script src="https://cdn.example/x.js"></script>')
    assert c.get("/annotate/silent-refresh.html").status_code == 404
    assert c.get("/annotate/polypal/annotate.js").status_code == 200
    # a path part longer than a file name may be, or a path of thousands of them: a page, never a 500
    for rel in ("a" * 256, "a/" * 2100 + "x", "1" * 5000):
        r = c.get(f"/annotate/{rel}")
        assert r.status_code == 200 and r.text == "<!doctype html>index", (rel[:20], r.status_code)
    assert c.get("/annotate/" + "a" * 300 + ".js").status_code == 404
    c2 = TestClient(Starlette(routes=mod.make_routes(tmp_path / "absent")))
    r = c2.get("/annotate/segmentation")
    assert r.status_code == 503 and "setup.sh" in r.text
