"""Compare a rerun's stage records with a committed run's, field by field (usage in README.md beside it)."""
import json, sys
new_f, old_f = sys.argv[1], sys.argv[2]
new = [json.loads(l) for l in open(new_f)]
old = [json.loads(l) for l in open(old_f)]
for n in new:
    o = old[n["stage"]]
    same = {k: n[k] == o[k] for k in ("test", "val", "labeled", "best_step", "steps", "recipe")}
    if n["stage"] < 1:  # the rerun stops at stage 1 (its last stage: no query)
        same.update({k: n[k] == o[k] for k in ("selected", "picked_by", "overlap_ta_unc")})
    print(f"stage {n['stage']}: " + ", ".join(f"{k} {'same' if v else 'DIFFERENT'}" for k, v in same.items()),
          f"(paper_miou {n['test']['paper_miou']:.6f} vs {o['test']['paper_miou']:.6f})")
