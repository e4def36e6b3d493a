# Run from the repo root: .venv/bin/python results/calibration/run9-sample.py
# the healthy-stage sample of run9.sh (one random.seed(14) for both datasets, CVC drawn first)
import glob, json, os, random
random.seed(14)
done = {("unc_ta_coreset@g0.5", 3, 5), ("unc_ta_coreset@g0.5", 3, 4), ("uncertainty", 2, 2), ("random", 3, 5)}
for ds, k in [("cvc", 7), ("kvasir", 3)]:
    healthy = []
    for f in sorted(glob.glob(f"results/{ds}-v3/runs/*.jsonl")):
        recs = {r["stage"]: r for r in (json.loads(l) for l in open(f) if l.strip())}
        label = os.path.basename(f).rsplit("-seed", 1)[0]
        seed = int(f.rsplit("seed", 1)[1].split(".")[0])
        for s in range(1, 6):
            d = 100 * (recs[s]["test"]["paper_miou"] - recs[s - 1]["test"]["paper_miou"])
            if d >= -3 and (label, seed, s) not in done:
                healthy.append((label, seed, s))
    print(ds, random.sample(healthy, k))
