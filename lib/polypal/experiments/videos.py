"""Which video each frame of an experiment came from (for ``--video-cap`` and ``--split-by-video``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def video_of_frames(args, names, quiet: bool = False) -> dict:
    """Frame name -> video for --video-cap and --split-by-video, from the first source that has any: the
    data folder's .polypal/video.sqlite (polypal-ingest), the --video-groups JSON's "video_of", the
    CVC-ClinicDB sequences (--dataset cvc), ids shaped <video>_<6 digits>. {} when none does."""
    from polypal.video.store import folder_index, videos_from_ids

    names = set(names)
    vo = {n: v for n, v in folder_index(args.data).video_of.items() if n in names}
    if not vo and getattr(args, "video_groups", None):
        vo = {n: v for n, v in json.loads(Path(args.video_groups).read_text()).get("video_of", {}).items()
              if n in names}
    if not vo and args.dataset == "cvc" and args.splits:
        from polypal.experiments import splits

        csv = Path(args.splits) / "cvc_clinicdb_sequences.csv"
        if csv.exists():
            seq = splits.read_sequences(csv)
            vo = {n: f"seq{seq.get(n, seq.get(n.lstrip('0')))}" for n in names
                  if seq.get(n, seq.get(n.lstrip("0"))) is not None}
    if not vo:
        vo = videos_from_ids(names)
    if not quiet:
        print(f"videos: {len(set(vo.values()))} videos over {len(vo)} of {len(names)} frames", file=sys.stderr)
    return vo
