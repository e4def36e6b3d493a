"""How concentrated recorded polypal-sim batches are per video (CVC-ClinicDB sequence), without training:
the most frames of one sequence in each selected batch, against the cap ``--video-cap auto`` would set
(ceil(budget / pool sequences)). Writes results/video/batch_spread.md.

Usage: .venv/bin/python benchmarks/video_batch_spread.py --runs results/cvc-lite --data ../shared/datasets \
    --out results/video
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from polypal.experiments.splits import read_sequences  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="results/cvc-lite")
    ap.add_argument("--data", default="../shared/datasets")
    ap.add_argument("--out", default="results/video")
    a = ap.parse_args()
    seq = read_sequences(Path(a.data) / "splits" / "cvc_clinicdb_sequences.csv")
    split = json.loads((Path(a.runs) / "split.json").read_text())
    v = len({seq[n] for n in split["pool"]})
    per: dict[str, list[int]] = collections.defaultdict(list)
    budget = None
    for f in sorted((Path(a.runs) / "runs").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r["selected"]:
                budget = len(r["selected"])
                per[f.name.rsplit("-seed", 1)[0]].append(max(collections.Counter(seq[n] for n in r["selected"]).values()))
    cap = -(-budget // v)
    lines = [f"# Frames of one CVC-ClinicDB sequence per selected batch ({a.runs}, no video cap)", "",
             f"Pool: {len(split['pool'])} frames in {v} sequences; batches of {budget}: `--video-cap auto` "
             f"would allow {cap} per sequence (ceil({budget}/{v})) at the first query, "
             "raised later when sequences run out of unlabeled frames.", "",
             "| strategy | batches | mean of the batch's most frames of one sequence | worst | batches over the cap |",
             "|---|---|---|---|---|"]
    for s, x in sorted(per.items()):
        lines.append(f"| {s} | {len(x)} | {sum(x) / len(x):.1f} | {max(x)} | {sum(k > cap for k in x)} |")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "batch_spread.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
