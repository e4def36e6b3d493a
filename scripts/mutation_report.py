"""Report of a scripts/mutation_test.sh run: recheck survivors against today's tests, list equivalents.

Usage: .venv/bin/python scripts/mutation_report.py [--out results/test-audit/mutation.md] [group ...]

For every mutant that survived a group's cosmic-ray session (in $WORK/<group>/session.sqlite), the
mutant is applied again to a fresh copy of the session's lib/ (the source it was numbered on) and the
group's tests as they are NOW are run
(one core): a survivor killed by a test added after the session counts as killed. The mutants still
alive are either listed in EQUIVALENT below, with the reason no test can tell them apart, or are
real holes (those left on purpose are in LEFT, with the reason). Score = killed / (all mutants run - equivalent).
Each group's verdicts are kept in $WORK/<group>/report.json, so groups can be rechecked one at a time;
mutation.md is written from all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("WORK", "/tmp/polypal-mutation"))
CR = Path(os.environ.get("CR_VENV", "/tmp/crvenv")) / "bin"
GROUPS = ["sampler", "kcenter", "metrics", "uncertainty", "data"]


def session_config(group: str) -> tuple[list[str], list[str]]:
    """(modules, test files) of a group's session, read from the cosmic-ray.toml it ran with."""
    import tomllib

    cfg = tomllib.loads((WORK / group / "cosmic-ray.toml").read_text())["cosmic-ray"]
    tests = [t for t in cfg["test-command"].split() if t.startswith("tests/")]
    return list(cfg["module-path"]), tests


# (module, operator, occurrence) -> why the mutant cannot change any result. Occurrences are cosmic-ray's
# numbering of the source each session ran on (scripts/mutation_test.sh, sessions of 2026-11-28 after the move
# into packages); when a module changes, its mutants are numbered anew and these must be argued again
# (each entry here was checked by applying the mutant and reading it).
SEL, REG, STR, KC, MET, UNC = (f"lib/polypal/{m}.py" for m in ("sampler/selection", "sampler/registry",
                                                              "sampler/strategies", "sampler/kcenter",
                                                              "learner/metrics", "sampler/uncertainty"))
IMG, MSK, FLD = (f"lib/polypal/data/{m}.py" for m in ("images", "masks", "folders"))
OP = "core/"


def _same(reason: str, *keys) -> dict:
    return {(k[0], OP + k[1], k[2]): reason for k in keys}


PERF = ("performance only: the full pass and the pruned update store the same values (module docstring; "
        "test_pruned_equals_one_pass), this only changes which of the two runs or how many rows are re-read")
RADIUS = ("performance only: a group's radius is an upper bound used to skip work; a larger value or 0 for an "
          "empty group only makes more groups checked, any negative value means inactive")
BLOCK = "a block size: the same distances, computed in other slices"
EQUIVALENT = {
    # -- sampler (selection.py, registry.py, strategies.py)
    (SEL, OP + "ReplaceComparisonOperator_Lt_NotEq", 0):
        "`while len(chosen) != budget`: a round adds at most the shortfall (B_u + B_d = need, a frame both "
        "samplers pick is added once), so the count never passes B",
    (SEL, OP + "ReplaceComparisonOperator_LtE_Lt", 0):
        "`k < 0` in top_uncertain: k = 0 slices `order[:0]`, the same empty int64 array",
    (SEL, OP + "NumberReplacer", 1): "`k <= -1` in top_uncertain: as above, k = 0 gives the same empty array",
    (SEL, OP + "ReplaceUnaryOperator_USub_Invert", 1):
        "`reshape(n, ~1)` is reshape(n, -2): numpy 1.26 takes any negative size as 'infer'",
    (SEL, OP + "NumberReplacer", 8): "`reshape(n, -2)`: numpy 1.26 takes any negative size as 'infer'",
    (SEL, OP + "ReplaceTrueWithFalse", 0):
        "`setdiff1d(..., assume_unique=False)`: both inputs are unique (the unlabeled set, the picks so far)",
    (REG, OP + "ReplaceComparisonOperator_Eq_LtE", 1): "`len(available) <= 0`: a length is never negative",
    # -- kcenter.py
    **_same("no centers: the loops run zero times and every distance stays inf, as the early return gives; "
            "a length is never negative",
            (KC, "NumberReplacer", 21), (KC, "ReplaceComparisonOperator_Eq_Lt", 0),
            (KC, "ReplaceComparisonOperator_Eq_LtE", 0)),
    **_same("`max(2, ...)` / `max(0, ...)` centers per block: there is at least one center here, and slicing "
            "past the end is harmless", (KC, "NumberReplacer", 22), (KC, "NumberReplacer", 23),
            (KC, "NumberReplacer", 144), (KC, "NumberReplacer", 145)),
    **_same(BLOCK + " (1023 or 1025 centers per GEMM: only > 1023 labeled frames see it; "
            "test_more_than_1024_labeled_frames picks the same)", (KC, "NumberReplacer", 24),
            (KC, "NumberReplacer", 25), (KC, "NumberReplacer", 146), (KC, "NumberReplacer", 147)),
    **_same(BLOCK + " (rows per GEMM)", (KC, "NumberReplacer", 26), (KC, "NumberReplacer", 29),
            (KC, "NumberReplacer", 148), (KC, "NumberReplacer", 151)),
    **_same("`budget <= -1` / `budget < 0`: budget 0 runs the loop zero times and returns the same empty array",
            (KC, "NumberReplacer", 55), (KC, "ReplaceComparisonOperator_LtE_Lt", 0)),
    **_same("`k <= 0`, `len(labeled) <= 0`: neither is ever negative",
            (KC, "ReplaceComparisonOperator_Eq_LtE", 1), (KC, "ReplaceComparisonOperator_Eq_LtE", 2)),
    **_same("a sentinel of -2 instead of -1 for frames that cannot be picked: any negative value is below every "
            "squared distance (clamped at 0)", (KC, "NumberReplacer", 62), (KC, "NumberReplacer", 268),
            (KC, "NumberReplacer", 286), (KC, "NumberReplacer", 290)),
    **_same("`<=` instead of `<` when a row meets a center at exactly its current distance: the same value, "
            "the row only joins an equidistant center's group (the pruning bound holds for either)",
            (KC, "ReplaceComparisonOperator_Lt_LtE", 2), (KC, "ReplaceComparisonOperator_Lt_LtE", 3),
            (KC, "ReplaceComparisonOperator_Lt_LtE", 4)),
    (KC, OP + "ReplaceComparisonOperator_LtE_Lt", 2):
        "`x.size < ONE_PASS_MAX_ELEMENTS`: at exactly 2^21 elements the pruned version runs instead of the "
        "one-pass one, with the same picks (test_pruned_equals_one_pass)",
    **_same("the rounding bound of an empty pool: unreachable, an empty pool returns before _Pruned is made",
            (KC, "NumberReplacer", 190), (KC, "NumberReplacer", 191)),
    **_same(PERF, (KC, "NumberReplacer", 198), (KC, "NumberReplacer", 199), (KC, "NumberReplacer", 226),
            (KC, "NumberReplacer", 227), (KC, "ReplaceComparisonOperator_Gt_Eq", 3),
            (KC, "ReplaceComparisonOperator_Gt_GtE", 3), (KC, "ReplaceComparisonOperator_Gt_Lt", 3),
            (KC, "ReplaceComparisonOperator_Gt_NotEq", 3), (KC, "NumberReplacer", 228),
            (KC, "ReplaceBinaryOperator_Mul_Add", 31), (KC, "ReplaceComparisonOperator_Gt_Eq", 8),
            (KC, "ReplaceComparisonOperator_Gt_GtE", 8), (KC, "NumberReplacer", 256), (KC, "NumberReplacer", 257),
            (KC, "NumberReplacer", 258), (KC, "NumberReplacer", 259), (KC, "NumberReplacer", 260),
            (KC, "NumberReplacer", 261), (KC, "ReplaceBinaryOperator_Add_Div", 44),
            (KC, "ReplaceBinaryOperator_Add_Mul", 44), (KC, "ReplaceBinaryOperator_Add_Sub", 44),
            (KC, "ReplaceBinaryOperator_Mul_Add", 32), (KC, "ReplaceBinaryOperator_Mul_Sub", 32),
            (KC, "NumberReplacer", 262), (KC, "NumberReplacer", 263)),
    **_same(RADIUS, (KC, "NumberReplacer", 200), (KC, "NumberReplacer", 201), (KC, "ReplaceUnaryOperator_Delete_USub", 5),
            (KC, "ReplaceUnaryOperator_USub_Not", 5), (KC, "ReplaceUnaryOperator_USub_UAdd", 5),
            (KC, "NumberReplacer", 208), (KC, "NumberReplacer", 209), (KC, "ReplaceUnaryOperator_Delete_USub", 6),
            (KC, "ReplaceUnaryOperator_USub_Not", 6), (KC, "ReplaceUnaryOperator_USub_UAdd", 6),
            (KC, "NumberReplacer", 264), (KC, "NumberReplacer", 265), (KC, "ReplaceUnaryOperator_Delete_USub", 7),
            (KC, "ReplaceUnaryOperator_USub_Not", 7), (KC, "ReplaceUnaryOperator_USub_UAdd", 7),
            (KC, "NumberReplacer", 266), (KC, "NumberReplacer", 267), (KC, "ReplaceUnaryOperator_Delete_USub", 8),
            (KC, "ReplaceUnaryOperator_USub_Not", 8), (KC, "ReplaceUnaryOperator_USub_UAdd", 8),
            (KC, "NumberReplacer", 276), (KC, "NumberReplacer", 278), (KC, "NumberReplacer", 279),
            (KC, "ReplaceUnaryOperator_Delete_USub", 10), (KC, "ReplaceUnaryOperator_USub_UAdd", 10),
            (KC, "NumberReplacer", 231)),
    **_same("rows per gathered dot-product call: _OldLayout.dots pads every call to whole thread blocks, so each "
            "row gets the same bits for any size (test_gathered_dots_have_the_one_pass_bits)",
            *[(KC, "NumberReplacer", i) for i in (212, 213, 214, 215, 216, 217, 218, 219, 221)],
            (KC, "ReplaceBinaryOperator_FloorDiv_Add", 9), (KC, "ReplaceBinaryOperator_FloorDiv_Mul", 9),
            (KC, "ReplaceBinaryOperator_FloorDiv_Sub", 9), (KC, "ReplaceBinaryOperator_LShift_Add", 1),
            (KC, "ReplaceBinaryOperator_LShift_Div", 1), (KC, "ReplaceBinaryOperator_LShift_Mul", 1),
            (KC, "ReplaceBinaryOperator_LShift_Sub", 1), (KC, "ReplaceBinaryOperator_Mul_Add", 24),
            (KC, "ReplaceBinaryOperator_Mul_Sub", 24)),
    **_same("groups whose radius is exactly 0 left out of the checks: their members sit on their center and no "
            "distance (clamped at 0) can be lower", (KC, "ReplaceComparisonOperator_GtE_Gt", 0),
            (KC, "ReplaceComparisonOperator_GtE_NotEq", 0)),
    (KC, OP + "ReplaceComparisonOperator_Eq_LtE", 11): "`len(act) <= 0`: a length is never negative",
    **_same("a full pass when no group is active: then no candidate is left (every live row keeps its group "
            "active), so the pass changes nothing; gid is never negative",
            (KC, "ReplaceComparisonOperator_Eq_GtE", 12), (KC, "ReplaceComparisonOperator_Eq_LtE", 12)),
    **_same("`len(act) > gid / 2` is the same test as `len(act) > gid // 2` for an integer length",
            (KC, "ReplaceBinaryOperator_FloorDiv_Div", 10), (KC, "ReplaceBinaryOperator_FloorDiv_Div", 11)),
    **_same("a wider skipping margin (more rows re-read): " + PERF.split(": ", 1)[1],
            (KC, "NumberReplacer", 248), (KC, "NumberReplacer", 250), (KC, "NumberReplacer", 252),
            (KC, "NumberReplacer", 254), (KC, "ReplaceBinaryOperator_Add_Div", 43),
            (KC, "ReplaceBinaryOperator_Mul_Sub", 30)),
    **_same("the margin moves by 1e-12 of itself; _rounding_bound already doubles the rigorous bound",
            (KC, "ReplaceBinaryOperator_Add_Sub", 43), (KC, "ReplaceBinaryOperator_Mul_Div", 30),
            (KC, "ReplaceBinaryOperator_Sub_Add", 14), (KC, "ReplaceBinaryOperator_Mul_Div", 28)),
    (KC, OP + "ReplaceBinaryOperator_Sub_Add", 16):
        "`+ 1e-300` instead of `- 1e-300`: only rows at distance 0 (which no center can lower) change side",
    **_same("more groups or rows re-read than needed (ties with the bound included): " + PERF.split(": ", 1)[1],
            (KC, "ReplaceComparisonOperator_Gt_GtE", 6), (KC, "ReplaceComparisonOperator_Gt_NotEq", 6),
            (KC, "ReplaceComparisonOperator_Gt_GtE", 7), (KC, "ReplaceComparisonOperator_Gt_NotEq", 7)),
    (KC, OP + "NumberReplacer", 272):
        "`g0 = 1` without labeled frames: group slot 1 is never used (radius -1), the others shift by one",
    # -- metrics.py
    (MET, OP + "ReplaceTrueWithFalse", 0):
        "`include_background=False` for MONAI's confusion matrix: with one channel MONAI keeps it (checked: same "
        "values, no warning)",
    (MET, OP + "ReplaceTrueWithFalse", 1): "`include_background=False` for compute_iou: as above, one channel is kept",
    (MET, OP + "ReplaceTrueWithFalse", 2): "`include_background=False` for compute_dice: as above, one channel is kept",
    # -- uncertainty.py
    (UNC, OP + "NumberReplacer", 53):
        "`area.clamp(min=0)`: only an empty region divides by 0, and torch.where then takes the topk branch "
        "(no gradient flows here, so the unused NaN never shows)",
    (UNC, OP + "ReplaceComparisonOperator_Gt_NotEq", 1):
        "`area != 0`: the area counts pixels, it is never negative",
    # -- data readers (images.py, masks.py, folders.py)
    (IMG, OP + "NumberReplacer", 14): "clip at 256: the values are at most 255 here (scaled to the maximum when it "
                                       "is above 255)",
    (IMG, OP + "ReplaceComparisonOperator_NotEq_Lt", 1): "`arr.ndim < 3`: an RGB PIL image is always (H, W, 3)",
    (IMG, OP + "NumberReplacer", 61): "`arr.ndim >= 1`: a 1-D array squeezes to at most one axis, never two",
    (IMG, OP + "ReplaceComparisonOperator_Eq_LtE", 1):
        "`arr.dtype <= uint8`: only bool casts safely to uint8, and a NIfTI volume has no bool type",
    (IMG, OP + "ReplaceUnaryOperator_USub_Invert", 4): "`reshape(w, h, ~1, 3)` is -2: numpy 1.26 takes any "
                                                        "negative size as 'infer'",
    (IMG, OP + "NumberReplacer", 91): "`arr[:, :, -1, :]`: that axis was just checked to have length 1",
    (IMG, OP + "NumberReplacer", 103): "`mask * 254`: 0/254 and 0/255 fall on the same sides of 127",
    **_same("`> 126`, `> 128`, `>= 127`: nearest-neighbour resizing of the 0/255 image keeps only the values 0 and 255",
            (IMG, "NumberReplacer", 105), (IMG, "NumberReplacer", 104), (IMG, "ReplaceComparisonOperator_Gt_GtE", 3)),
    **_same("the shape check after `convert('RGB')`: an RGB PIL image is always (H, W, 3), so `ndim > 3`, "
            "`shape[2] < 3`, `shape[2] > 3` and `ndim != 3 and shape[2] != 3` are false as the original's first two "
            "terms are; only the 2x2 terms refuse (test_frames_must_be_at_least_2x2)",
            (IMG, "ReplaceComparisonOperator_NotEq_Lt", 2), (IMG, "ReplaceComparisonOperator_NotEq_Gt", 1),
            (IMG, "ReplaceComparisonOperator_NotEq_Gt", 2), (IMG, "ReplaceOrWithAnd", 0)),
    (IMG, OP + "ReplaceComparisonOperator_Eq_GtE", 1):
        "`arr.dtype >= uint8` in the grey-frame test: the header check above refuses every volume not stored as "
        "uint8 and get_unscaled returns the stored dtype, so arr is uint8 here and `>=` is as true as `==`",
    **_same("`arr.dtype < uint8` / `> uint8` in the last dtype check: arr is uint8 there (the header check above "
            "refuses any other stored dtype, get_unscaled returns the stored one), so the check is false with `!=`, "
            "`<` or `>`", (IMG, "ReplaceComparisonOperator_NotEq_Lt", 7), (IMG, "ReplaceComparisonOperator_NotEq_Gt", 7)),
    (IMG, OP + "ReplaceComparisonOperator_Gt_GtE", 1):
        "`hi >= 255` also rescales a 16-bit/int/float frame whose maximum is exactly 255, by x / 255 * 255: float64 "
        "gives back each integer 0..255 exactly (checked), and a float32 non-integer is at least 2^-16 from the next "
        "integer, far above the ~1e-13 rounding, so the truncation to uint8 is the same",
    **_same("the maximum of an empty 16-bit/int/float frame: 0, 1 and -1 are all at most 255, so it is not scaled "
            "either way (and PIL cannot open a 0-pixel file)", (IMG, "NumberReplacer", 6), (IMG, "NumberReplacer", 7)),
    (IMG, OP + "NumberReplacer", 82): "`reshape(w, h, -2, 3)`: numpy 1.26 takes any negative size as 'infer'",
    **_same("MASK_THRESHOLD = 126 or 128: exported, read nowhere in lib/ or scripts/ (read_mask thresholds at "
            "half the maximum)", (MSK, "NumberReplacer", 0), (MSK, "NumberReplacer", 1)),
    **_same("the default `sizes` of an NRRD header without one: [0, 0], [1, 0], [0, 1], [-1, 0] and [0, -1] all "
            "declare 0 pixels and 0 bytes (so neither size check refuses), and nrrd.read then refuses the file "
            "('not a readable label volume')", (MSK, "NumberReplacer", 4), (MSK, "NumberReplacer", 5),
            (MSK, "NumberReplacer", 6), (MSK, "NumberReplacer", 7)),
    (MSK, OP + "NumberReplacer", 15): "`arr[..., -1]`: that axis has length 1",
    (MSK, OP + "ReplaceBinaryOperator_BitAnd_Mul", 0): "`isfinite * (vol == round(vol))`: a product of booleans "
                                                        "is their and",
    (MSK, OP + "ReplaceComparisonOperator_Eq_GtE", 1):
        "`kind >= 'f'` adds the integer kinds 'i' and 'u', whose values are always integral",
    **_same("`transparency` on a mode other than P is one colour made transparent, so the alpha varies only "
            "where the colour does and the colour is read either way; a P image without it converts with alpha "
            "255 everywhere (uniform: ignored)", (MSK, "ReplaceAndWithOr", 4),
            (MSK, "ReplaceComparisonOperator_Eq_GtE", 3), (MSK, "ReplaceComparisonOperator_Eq_LtE", 3)),
    **_same("an image with no pixel: a default maximum of 0, 1 or -1 gives the same empty (H, W) mask (and PIL "
            "cannot open a 0-pixel file)", (MSK, "NumberReplacer", 42), (MSK, "NumberReplacer", 43)),
    **_same("`reshape(-2, c)` (also written `~1`): numpy 1.26 takes any negative size as 'infer'",
            (MSK, "NumberReplacer", 52), (MSK, "ReplaceUnaryOperator_USub_Invert", 2)),
    (MSK, OP + "ReplaceBinaryOperator_BitAnd_Mul", 1): "`(g > a) * (g < b)` in the photograph rule: a product of "
                                                        "booleans is their and",
    **_same("`max - min <= 0`, `alpha.max() > alpha.min()`: a maximum is never below the minimum, so `<= 0` is "
            "`== 0` and `>` is `!=`", (MSK, "ReplaceComparisonOperator_Eq_LtE", 4),
            (MSK, "ReplaceComparisonOperator_NotEq_Gt", 3)),
    **_same("the affine's homogeneous corner: NIfTI stores its top three rows only, read back with 1 there",
            (MSK, "NumberReplacer", 72), (MSK, "NumberReplacer", 73)),
    (FLD, OP + "ReplaceContinueWithBreak", 0): "the None is the pair's last path, so `break` ends the inner loop "
                                                "as `continue` does",
}

# Survivors left on purpose (real differences no fast test can show), with the reason; listed as holes.
LEFT = {
    (STR, OP + "NumberReplacer", 0): "VAAL's default of 300 training steps: telling 301 from 300 takes two "
                                      "300-step VAAL trainings (35 s each here), too slow for the fast suite",
    (STR, OP + "NumberReplacer", 1): "as above, 299 steps",
    (KC, OP + "NumberReplacer", 249): "a skipping margin of 0.25 eps instead of 1.25 eps: below the rigorous "
                                       "bound, but above the actual rounding on every pool tried (float32 at "
                                       "norms 10^4 times the gaps included)",
    (KC, OP + "ReplaceBinaryOperator_Mul_Sub", 29): "a margin of eps + 1.25 instead of 1.25 eps: smaller only "
                                                     "when eps > 5, and still above the actual rounding there",
    (IMG, OP + "ReplaceComparisonOperator_NotEq_Gt", 6):
        "`shape[2] > 1` let an empty slice axis through to a crash; only the no-slice test told it apart, and "
        "that test now expects the empty-volume error added since (left out of the rechecks: AFTER_SESSION); "
        "today an empty volume is refused before this line",
    (IMG, OP + "NumberReplacer", 64):
        "`shape[-1] != 4` reads a 2-D (W, 3) volume as grey: what the code does since (a fix after the session, "
        "test_2d_grey_volume_frames_by_height, left out of the rechecks)",
    (IMG, OP + "NumberReplacer", 73):
        "`ndim < 2` let a 2-D (W, 3) volume reach the RGB reshape (a crash); since the fix after the session "
        "such a volume is grey and never reaches it (its test is left out of the rechecks: AFTER_SESSION)",
    (MSK, OP + "ReplaceComparisonOperator_Eq_LtE", 1):
        "`kind <= 'f'` also checks complex label volumes for integral values: the session's source read a "
        "complex NIfTI label as labels (0.5+0j everywhere as all polyp), the mutant half-refused it. Fixed "
        "since (complex volumes are refused, test_volume_refused_with_a_clear_error[complex-label]); on the session's source "
        "nothing else tells the two apart",
}


def survivors(group: str) -> tuple[int, dict, int, list[dict]]:
    """(mutants run, {why skipped: how many}, mutants not run yet, survivors)."""
    sess = WORK / group / "session.sqlite"
    out = subprocess.run([str(CR / "cosmic-ray"), "dump", str(sess)], capture_output=True, text=True,
                         check=True).stdout
    total, skipped, pending, alive = 0, {}, 0, []
    for line in out.splitlines():
        w, r = json.loads(line)
        if not r:  # not run yet (an unfinished session)
            pending += 1
            continue
        if r.get("worker_outcome") == "skipped":  # filtered: operator, type annotation, SKIP_DEFS
            why = {"Filtered operator": "operator filter", "in a type annotation": "in annotations"}.get(
                r.get("output"), "in definitions not run")
            skipped[why] = skipped.get(why, 0) + 1
            continue
        total += 1
        if r.get("test_outcome") == "survived":
            m = w["mutations"][0]
            alive.append({"module": m["module_path"], "operator": m["operator_name"],
                          "occurrence": m["occurrence"], "line": m["start_pos"][0], "diff": r.get("diff") or ""})
    return total, skipped, pending, alive


# Tests of fixes made in lib/ after a group's session: they fail on the session's source by design, so the
# rechecks of that group leave them out (each with the fix it tests). Every other test must pass there.
AFTER_SESSION = {
    "data": {
        "tests/test_data_readers.py::test_2d_grey_volume_frames_by_height":
            "a 2-D volume 3 pixels high is read as grey (the session's source refused it)",
        "tests/test_data_readers.py::test_volume_refused_with_a_clear_error[empty-rgb]":
            "an empty RGB volume is a DataError (the session's source raised numpy's ValueError)",
        "tests/test_data_readers.py::test_volume_refused_with_a_clear_error[complex-label]":
            "complex label volumes are refused (the session's source read them as labels)",
        "tests/test_data_readers.py::test_volume_refused_with_a_clear_error[no-slice]":
            "a volume with an empty axis is refused as empty, before its shape is checked",
    },
}


def pristine_lib(group: str) -> Path:
    """The session's unmutated lib/: lib.orig when the session kept one (a killed cosmic-ray leaves its last
    mutant applied in lib/), else lib/ (checked by the baseline run in check_group)."""
    orig = WORK / group / "lib.orig"
    return orig if orig.is_dir() else WORK / group / "lib"


def recheck(group: str, mut: dict | None) -> bool:
    """True when today's tests kill the mutant (mut None: the unmutated source, the baseline)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # the session's own copy of lib/: the source the occurrences were numbered on (lib/ may have moved on)
        shutil.copytree(pristine_lib(group), t / "lib", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "tests", t / "tests", ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        shutil.copy(REPO / "pyproject.toml", t)
        if mut is not None:
            subprocess.run([str(CR / "cosmic-ray"), "apply", mut["module"], mut["operator"], str(mut["occurrence"])],
                           cwd=t, check=True, capture_output=True)
        env = dict(os.environ, PYTHONPATH="lib", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONDONTWRITEBYTECODE="1")
        skip = [a for node in AFTER_SESSION.get(group, {}) for a in ("--deselect", node)]
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                            "--hypothesis-seed=0", *skip, *session_config(group)[1]], cwd=t, env=env,
                           capture_output=True, text=True)
        if mut is None and r.returncode != 0:
            print(r.stdout[-3000:], file=sys.stderr)
        return r.returncode != 0


def changed_lines(diff: str) -> str:
    keep = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "<br>".join(f"`{ln[0]} {ln[1:].strip()}`" for ln in keep)


def tests_hash(tests: list[str]) -> str:
    """What a recheck's verdict depends on besides the mutant: the group's test files and conftest.py."""
    import hashlib

    h = hashlib.sha1()
    for t in sorted(tests) + ["tests/conftest.py"]:
        h.update(t.encode() + b"\0" + (REPO / t).read_bytes())
    return h.hexdigest()


def verdict_key(group: str, tests: list[str]) -> str:
    """What a cached verdict depends on: the tests, the session (its numbering), its pristine source and
    the tests left out of its rechecks."""
    import hashlib

    h = hashlib.sha1(tests_hash(tests).encode())
    h.update((WORK / group / "session.sqlite").read_bytes())
    lib = pristine_lib(group)
    for f in sorted(lib.rglob("*.py")):
        h.update(str(f.relative_to(lib)).encode() + b"\0" + f.read_bytes())
    h.update("\n".join(sorted(AFTER_SESSION.get(group, {}))).encode())
    return h.hexdigest()


def check_group(g: str, trust_equivalent: bool) -> dict:
    """Recheck every survivor of group g against today's tests; the verdicts, for the report.

    A verdict from the group's last check is reused when its test files are unchanged (same hash)."""
    modules, tests = session_config(g)
    if recheck(g, None):  # every mutant would count as killed
        sys.exit(f"{g}: today's tests fail on the session's unmutated lib/ ({pristine_lib(g)}); restore it "
                 "(RESUME=1 in scripts/mutation_test.sh) or run the session again")
    total, skipped, pending, alive = survivors(g)
    th = verdict_key(g, tests)
    last = WORK / g / "report.json"
    cache = {}
    if last.exists():
        prev = json.loads(last.read_text())
        if prev.get("tests_hash") == th:
            cache = prev.get("verdicts", {})
    verdicts = {}
    sess = WORK / g
    minutes = (os.path.getmtime(sess / "session.sqlite") - os.path.getmtime(sess / "cosmic-ray.toml")) / 60
    out = {"group": g, "modules": modules, "tests": tests, "total": total, "skipped": skipped, "pending": pending,
           "minutes": round(minutes), "killed_later": [], "equivalent": [], "real": [], "contradictions": []}
    for m in alive:
        key = (m["module"], m["operator"], m["occurrence"])
        ks = "|".join(map(str, key))
        if key in EQUIVALENT and trust_equivalent and ks not in cache:
            verdict = "equivalent"
        elif verdicts.setdefault(ks, cache[ks] if ks in cache else recheck(g, m)):
            verdict = "killed now"
            if key in EQUIVALENT or key in LEFT:  # argued wrongly: a test tells it apart
                out["contradictions"].append(list(key))
        else:
            verdict = "equivalent" if key in EQUIVALENT else "SURVIVES"
        if verdict == "killed now":
            out["killed_later"].append(m)
        elif verdict == "equivalent":
            out["equivalent"].append(dict(m, why=EQUIVALENT[key]))
        else:
            out["real"].append(dict(m, why=LEFT.get(key, "")))
        print(f"{g}: {key} -> {verdict}", flush=True)
    keys = {(m["module"], m["operator"], m["occurrence"]) for m in alive}
    out["stale"] = [list(k) for k in list(EQUIVALENT) + list(LEFT) if k[0] in modules and k not in keys]
    out["tests_hash"], out["verdicts"] = th, verdicts
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("groups", nargs="*", default=GROUPS,
                    help="groups to recheck now (the others are taken from their last check, $WORK/<group>/report.json)")
    ap.add_argument("--out", default=str(REPO / "results" / "test-audit" / "mutation.md"))
    ap.add_argument("--trust-equivalent", action="store_true",
                    help="do not re-run the survivors listed in EQUIVALENT (faster; by default they are re-run, and "
                         "one that a test kills is reported as a contradiction)")
    a = ap.parse_args()
    for g in a.groups:
        if (WORK / g / "session.sqlite").exists():
            res = check_group(g, a.trust_equivalent)
            (WORK / g / "report.json").write_text(json.dumps(res, indent=1))
    lines = ["# Mutation testing (cosmic-ray 8.7.0)", "",
             "Made by `scripts/mutation_test.sh` (the cosmic-ray sessions, one core, in a scratch copy) and",
             "`scripts/mutation_report.py` (this report: each survivor re-applied to the session's copy of `lib/` and",
             "run against the tests as they are now, so survivors killed by tests written after the session count",
             "as killed; the mutants listed as equivalent are re-run too, and none is killed).",
             "Operator subset and what is not run: see the filters in `scripts/mutation_test.sh`. Score = killed /",
             "(mutants run - equivalent). Minutes: the session's wall time on one core of this 2-core machine, shared",
             "with two training queues (a resumed session's includes the time it lay stopped: data's, about 15 of 47).", ""]
    after = [f"`{node.split('::')[1]}` ({why})" for g in GROUPS for node, why in AFTER_SESSION.get(g, {}).items()]
    if after:
        lines += ["Tests of fixes made after a session, left out of that group's rechecks (they fail on the session's "
                  "source by design): " + "; ".join(after) + ".", ""]
    lines += [
             "| group | modules | tests | mutants run | killed | equivalent | real survivors | score | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    detail, holes, problems = [], 0, []
    for g in GROUPS:
        f = WORK / g / "report.json"
        if not f.exists():
            lines.append(f"| {g} | | | not run | | | | | |")
            continue
        r = json.loads(f.read_text())
        eq, killed_later, real = r["equivalent"], r["killed_later"], r["real"]
        n_alive = len(eq) + len(killed_later) + len(real)
        killed = r["total"] - n_alive + len(killed_later)
        score = killed / max(1, r["total"] - len(eq))
        unfinished = f"; {r['pending']} not run (session unfinished)" if r["pending"] else ""
        lines.append(f"| {g} | {', '.join(Path(x).name for x in r['modules'])} | "
                     f"{', '.join(Path(x).stem.removeprefix('test_') for x in r['tests'])} | {r['total']} "
                     f"(not run: {', '.join(f'{v} {k}' for k, v in r['skipped'].items())}{unfinished}) | {killed} "
                     f"({len(killed_later)} by tests added after the session) | {len(eq)} | {len(real)} | "
                     f"{100 * score:.1f}% | {r['minutes']} |")
        holes += len(real)
        problems += [f"{g}: listed as equivalent or left, but killed: {k}" for k in r["contradictions"]]
        problems += [f"{g}: listed but not a survivor of this session (stale entry?): {k}" for k in r["stale"]]
        detail += ["", f"## {g}", ""]
        if killed_later:
            detail += ["Survived the session, killed by tests added since:", "",
                       "| where | mutation |", "| --- | --- |"]
            detail += [f"| {Path(m['module']).name}:{m['line']} | {changed_lines(m['diff'])} |" for m in killed_later]
            detail.append("")
        if eq:
            detail += ["Equivalent (no test can tell them apart):", "", "| where | mutation | why |",
                       "| --- | --- | --- |"]
            detail += [f"| {Path(m['module']).name}:{m['line']} | {changed_lines(m['diff'])} | {m['why']} |" for m in eq]
            detail.append("")
        if real:
            detail += ["**Still surviving (holes):**", "", "| where | mutation | why left |", "| --- | --- | --- |"]
            detail += [f"| {Path(m['module']).name}:{m['line']} | {changed_lines(m['diff'])} | {m['why']} |"
                       for m in real]
            detail.append("")
    Path(a.out).write_text("\n".join(lines + detail) + "\n")
    for msg in problems:
        print("PROBLEM", msg)
    print(f"wrote {a.out}; {holes} real survivors")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
