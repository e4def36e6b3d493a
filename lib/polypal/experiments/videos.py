"""Which video each frame of an experiment came from (for ``--video-cap`` and ``--split-by-video``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_video_groups(path) -> dict:
    """A --video-groups JSON, checked: an object whose "groups" and "video_of" map frame names to names,
    and whose "flagged" and "representatives" list frame names (each optional). Raises SystemExit naming
    the file and the problem (before, a bad file gave a traceback after --out was written)."""
    try:
        d = json.loads(Path(path).read_text())
    except OSError as e:
        raise SystemExit(f"error: --video-groups {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise SystemExit(f"error: --video-groups {path}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise SystemExit(f"error: --video-groups {path}: a JSON object is needed (with \"groups\", \"flagged\", "
                         f"\"representatives\", \"video_of\"), got a {type(d).__name__}")

    def names_to_names(k):
        v = d.get(k, {})
        if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
            raise SystemExit(f"error: --video-groups {path}: \"{k}\" must map frame names to names")
        return v

    def name_list(k):
        v = d.get(k, [])
        if isinstance(v, dict):
            v = list(v)
        if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
            raise SystemExit(f"error: --video-groups {path}: \"{k}\" must list frame names")
        return v

    return {"groups": names_to_names("groups"), "video_of": names_to_names("video_of"),
            "flagged": name_list("flagged"), "representatives": name_list("representatives") if
            "representatives" in d else None}


def video_of_frames(args, names, quiet: bool = False) -> dict:
    """Frame name -> video for --video-cap and --split-by-video, from the first source that has any: the
    data folder's .polypal/video.sqlite (polypal-ingest), the --video-groups JSON's "video_of", the
    CVC-ClinicDB sequences (--dataset cvc), ids shaped <video>_<6+ digits>. {} when none does."""
    from polypal.video.store import folder_index, videos_from_ids

    names = set(names)
    vo = {n: v for n, v in folder_index(args.data).video_of.items() if n in names}
    if not vo and getattr(args, "video_groups", None):
        vo = {n: v for n, v in read_video_groups(args.video_groups)["video_of"].items() if n in names}
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
