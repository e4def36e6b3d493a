"""From frames in a DICOMweb server to a polyp overlay in OHIF, through a running polyp-al server.

Plays the annotator with known masks: saves the masks of the first N frames
(matched by frame name) as final labels, trains the model, asks for the next
sample, runs the model on it with ``store_seg`` so that the prediction is
stored as a DICOM SEG, and prints the OHIF address that shows it.

    .venv/bin/python scripts/ohif_demo.py --server http://127.0.0.1:8000 \
        --masks sample-datasets/kvasir-seg-mini/masks --labels 20
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def frames_in_server(server: str) -> dict:
    """frame name -> (study UID, series UID), through the MONAI Label server's DICOMweb proxy (as OHIF sees it)."""
    with urllib.request.urlopen(f"{server}/proxy/dicom/qido/series?Modality=ES&includefield=0008103E", timeout=60) as r:
        body = r.read()
    series = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)  # the proxy passes gzip on
    return {s["0008103E"]["Value"][0]: (s["0020000D"]["Value"][0], s["0020000E"]["Value"][0])
            for s in series if s.get("0008103E", {}).get("Value")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="http://127.0.0.1:8000")
    ap.add_argument("--masks", type=Path, required=True, help="folder of masks named like the frames (png/jpg)")
    ap.add_argument("--labels", type=int, default=20, help="how many frames to label before training")
    ap.add_argument("--strategy", default="bvsb_ta_coreset")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for training")
    a = ap.parse_args(argv)
    from monailabel.client import MONAILabelClient

    server = a.server.rstrip("/")
    client = MONAILabelClient(server, tmpdir=tempfile.mkdtemp(prefix="polypal-demo-"), client_id="ohif-demo")
    frames = frames_in_server(server)
    masks = {p.stem: p for p in sorted(a.masks.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    todo = [n for n in sorted(frames) if n in masks][: a.labels]
    if not todo:
        print(f"no frame in {server} has a mask in {a.masks}", file=sys.stderr)
        return 1
    for i, name in enumerate(todo, 1):
        client.save_label(frames[name][1], str(masks[name]), tag="final")
        print(f"label {i}/{len(todo)}: {name} -> DICOM SEG", flush=True)
    client.train_start("polyp_seg", {})
    print("training ...", flush=True)
    t0 = time.time()
    time.sleep(2)
    while client.train_status(check_if_running=True):
        if time.time() - t0 > a.timeout:
            print("training did not finish in time", file=sys.stderr)
            return 1
        time.sleep(5)
    stats = client.info().get("train_stats", {}).get("polyp_seg", {})
    print(f"trained in {time.time() - t0:.0f} s: {json.dumps(stats)[:300]}", flush=True)
    sample = client.next_sample(a.strategy, {})
    if not sample.get("id"):
        print("no unlabeled frame left to predict on", file=sys.stderr)
        return 1
    _, params = client.infer("polyp_seg", sample["id"], {"store_seg": True})
    study = next(st for st, se in frames.values() if se == sample["id"])
    name = next(n for n, (st, se) in frames.items() if se == sample["id"])
    seg = params.get("seg_series") or f"none ({params.get('seg_note', '')})"
    print(f"next sample ({a.strategy}): {name}; prediction SEG series: {seg}")
    print(f"open {server}/ohif/viewer?StudyInstanceUIDs={study}\n"
          f"and double-click the series 'polyp-al prediction' in the left panel to show it over the frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
