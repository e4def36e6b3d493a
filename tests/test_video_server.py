"""An ingested video folder through the real server: batches never hold two frames of one group."""

from __future__ import annotations

import json

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV (requirements.txt) is needed to make the test video")

from server_utils import Server, http  # noqa: E402
from test_video import scene, write_video  # noqa: E402

pytestmark = pytest.mark.server


def test_server_serves_one_frame_per_group(tmp_path):
    from polypal.video import load_index
    from polypal.video.ingest import main as ingest

    rng = np.random.default_rng(0)
    frames = [np.clip(scene(s).astype(int) + rng.integers(-3, 4, (120, 160, 3)), 0, 255).astype(np.uint8)
              for s in range(4) for _ in range(5)]  # 4 scenes x 5 near-identical frames
    clip = write_video(tmp_path / "proc1.mp4", frames)
    studies = tmp_path / "studies"
    assert ingest([str(clip), "--studies", str(studies)]) == 0
    vi = load_index(studies)
    assert len(set(vi.groups.values())) == 4
    srv = Server(studies, tmp_path, conf={"batch_size": "10"}).start()
    try:
        served = []
        for k in range(4):
            s, r = http("POST", f"{srv.url}/activelearning/random", json.dumps({"client_id": f"c{k}"}).encode(),
                        {"Content-Type": "application/json"})
            assert s == 200 and r.get("id"), r
            served.append(r["id"])
        assert len({vi.groups[i] for i in served}) == 4, served  # four frames, four groups
        assert "near-duplicate" in (r.get("note") or "")
        info = http("GET", f"{srv.url}/info/")[1]["polyp_al"]
        assert info["video"] == {"videos": 1, "frames": 20, "groups": 4, "flagged": 0}, info["video"]
    finally:
        srv.stop()


def test_server_spreads_a_batch_across_videos(tmp_path):
    """Three ingested videos, one with most of the frames: a batch of 6 takes at most ceil(6 / 3) = 2
    frames of each video (--conf video_cap auto, the default), and the plan's note says so."""
    from collections import Counter

    from polypal.video import load_index
    from polypal.video.ingest import main as ingest

    rng = np.random.default_rng(1)
    studies = tmp_path / "studies"
    for name, scenes in (("long", range(10, 22)), ("short1", range(30, 33)), ("short2", range(40, 43))):
        frames = [np.clip(scene(s).astype(int) + rng.integers(-3, 4, (120, 160, 3)), 0, 255).astype(np.uint8)
                  for s in scenes for _ in range(2)]  # 2 near-identical frames per scene
        assert ingest([str(write_video(tmp_path / f"{name}.mp4", frames)), "--studies", str(studies), "--quiet"]) == 0
    vi = load_index(studies)
    assert len(set(vi.groups.values())) == 18 and len(set(vi.video_of.values())) == 3
    srv = Server(studies, tmp_path, conf={"batch_size": "6"}).start()
    try:
        served = []
        for k in range(6):
            s, r = http("POST", f"{srv.url}/activelearning/random", json.dumps({"client_id": f"c{k}"}).encode(),
                        {"Content-Type": "application/json"})
            assert s == 200 and r.get("id"), r
            served.append(r["id"])
        per_video = Counter(vi.video_of[i] for i in served)
        assert per_video == {"long": 2, "short1": 2, "short2": 2}, per_video  # random alone: ~4 of "long"
        assert len({vi.groups[i] for i in served}) == 6
        assert "video cap: at most 2 frames per video" in (r.get("note") or ""), r
    finally:
        srv.stop()
