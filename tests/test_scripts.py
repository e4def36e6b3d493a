"""scripts/serve-sample.sh: which folder it serves, and that it copies the sample frames only into one
without frames (a review: its check failed under pipefail with many frames, and the sample went into a
user's own folder)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = sorted((ROOT / "sample-datasets" / "kvasir-seg-mini" / "images").glob("*.jpg"))


def serve_sample(cwd: Path, studies: str) -> subprocess.CompletedProcess:
    """Run the script long enough to copy (its server is stopped before it has started)."""
    env = {**os.environ, "STUDIES": studies, "PORT": "1", "PROFILE": "smoke"}  # port 1: it could never serve
    return subprocess.run(["timeout", "4", "bash", str(ROOT / "scripts" / "serve-sample.sh")], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_the_sample_goes_only_into_a_folder_without_frames(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    for i in range(3000):  # enough for find to outlive grep -q under pipefail
        (own / f"f{i:04d}.jpg").write_bytes(b"")
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "x.nii.gz").write_bytes(b"")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "a.jpg").symlink_to(SAMPLE[0])
    for d in (own, vol, linked):
        before = sorted(p.name for p in d.iterdir())
        serve_sample(tmp_path, d.name)  # relative: from where it is run
        assert sorted(p.name for p in d.iterdir() if p.name != "labels") == before, d
    (tmp_path / "fresh").mkdir()  # an empty folder named: the sample goes there
    serve_sample(tmp_path, "fresh")
    assert sorted(p.name for p in (tmp_path / "fresh").glob("*.jpg")) == [p.name for p in SAMPLE]
    assert not (ROOT / "fresh").exists()


def test_a_dataset_folder_or_a_mistyped_one_gets_no_sample(tmp_path):
    """A folder in Kvasir-SEG's layout (frames under images/) counted as holding no frame, and the sample went
    into the user's dataset, served as theirs; a mistyped path was made and filled with the sample (a fresh
    user's walkthrough). Both are refused now, saying what to do, and nothing is written."""
    kvasir = tmp_path / "mykvasir"
    (kvasir / "images").mkdir(parents=True)
    (kvasir / "images" / "a.jpg").write_bytes(SAMPLE[0].read_bytes())
    r = serve_sample(tmp_path, "mykvasir")
    assert r.returncode == 2 and "Its frames are under images/: serve STUDIES=" in r.stderr, r.stderr
    assert sorted(p.name for p in kvasir.iterdir()) == ["images"]
    r = serve_sample(tmp_path, "no-such-frames")
    assert r.returncode == 2 and "no such folder (a typo?)" in r.stderr, r.stderr
    assert not (tmp_path / "no-such-frames").exists()
