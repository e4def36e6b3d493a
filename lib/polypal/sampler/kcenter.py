"""Exact k-center greedy (the paper's Algorithm 2), pruned with the triangle inequality.

Repeatedly add the point farthest from its nearest center:
argmax_i min_j d(z_i, z_j). The labeled set gives the initial centers; with none,
the first center is a seeded uniform choice among the candidates.

Exactness: the greedy rule is applied exactly (no sampling, no approximation of
the arg-max); ties are broken by the lowest index, among computed values: an exact copy of a center
gets a rounding-noise distance (about 1e-13 in float64), not 0, so once every distinct point is
covered (a frozen video's copies) the remaining picks follow that noise, not the index, and this
version and the torch one may order those zero-distance picks differently. Squared distances are
|x|^2 - 2 x.c + |c|^2 with the norms in float64 and the dot products by BLAS in
the working dtype (float64 for float64 input, float32 otherwise), so float64
features reproduce a float64 brute force pick for pick. With float32 features,
two candidates whose squared distances differ by less than float32 resolution of
the squared norms (~1e-6 |x|^2, not of the distance: features with a large common
offset lose the most) may be ordered differently from a float64 computation; pass
``features.astype(np.float64)`` when bit-for-bit agreement with float64 matters
more than speed.

Pruning (why most picks read a small part of the features): every candidate x
keeps its nearest center c' and d2(x) = d(x, c')^2. A new center c cannot lower
d2(x) when d(c, c') >= 2 d(x, c'). Points are grouped by their center; per pick
we compute the distances from c to the centers of the groups (K x d, not N x d),
skip every group whose largest d2 is below a quarter of its center's squared
distance to c, and inside the other groups skip every point below that bound.
Only the remaining rows are read and updated. The bound is widened by a
rigorous bound eps on the rounding error of any computed squared distance
(twice 2 gamma_d max|x|^2 plus the float64 terms, gamma_d = d u / (1 - d u),
u the working dtype's unit roundoff; see ``_rounding_bound``): a point is
skipped only when best <= D^2/4 - 1.25 eps, i.e. when its *computed* distance
to c could not be below its current one. Skipping never changes a value the
one-pass version would have stored, so the picks are the same as the one-pass
version's (``_k_center_greedy_one_pass``, kept below as the reference).
When more than FULL_PASS_FRACTION of the rows must be updated (i.i.d. data,
the first picks without a labeled set), one contiguous pass is used instead.

Same arithmetic as the one-pass version, value for value: the labeled
initialisation runs the same blocked GEMMs, and a row that is updated gets the
dot product the one-pass version's GEMV over its ``chunk``-row block would have
given it. OpenBLAS's GEMV computes rows in groups of 4 per thread block and the
last (block length mod 4) rows with another kernel that can differ in the last
bit; gathered rows are therefore computed in padded, evenly split calls (the
main kernel), and the few rows the one-pass layout put in a remainder are
recomputed the way it did (``_OldLayout``, from numpy's OpenBLAS thread count
via threadpoolctl). With another BLAS, or an OpenBLAS whose kernels group rows
differently, those few rows can differ in the last bit, which changes a pick
only if it breaks a tie at that level. Inputs that are not C-contiguous, and
small ones (N * d <= ONE_PASS_MAX_ELEMENTS, e.g. 4096 x 512: a pick is one BLAS
call there and the pruning's bookkeeping costs about as much as it saves), use
the one-pass version unchanged.

Memory: O(N) vectors (float64 nearest-center distances and norms, int32 group
ids), the centers' rows (K x d in the working dtype; the one-pass version also
copied the labeled rows) and temporaries of at most ``chunk`` rows. float16 or
integer features (a memory-mapped file, for instance) are cast to float32 one
block at a time, never as a whole; float32 features are never copied whole.

Size (over ~250 lines): the pruned greedy and the one-pass version it must reproduce bit for bit
live side by side, with the BLAS-layout emulation that ties them; they are read together.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CHUNK = 8192  # rows per update chunk
FULL_PASS_FRACTION = 0.35  # above this share of rows to update, one contiguous pass is cheaper
ONE_PASS_MAX_ELEMENTS = 1 << 21  # N * d up to this: the one-pass version (as fast there, no bookkeeping)
_OPENBLAS_MT_MIN = 2304 * 4  # OpenBLAS gemv: single-threaded below m * n < 2304 * GEMM_MULTITHREAD_THRESHOLD


def _work_dtype(x: np.ndarray):
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)


def _sqnorms(x: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float64)
    dt = _work_dtype(x)
    for s in range(0, x.shape[0], chunk):
        xs = np.asarray(x[s : s + chunk], dtype=dt)
        out[s : s + chunk] = np.einsum("ij,ij->i", xs, xs, dtype=np.float64)
    _check_finite(out)
    return out


def _check_finite(sq_norms) -> None:
    """A NaN/inf feature row would win every arg-max and turn every distance into NaN (the rest of the
    picks then follow index order): refused, naming the first such row. Checked on the squared norms,
    which are computed anyway (no extra pass over a memory-mapped array)."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(sq_norms)))
    if bad.size:
        raise ValueError(f"features have {bad.size} row(s) with NaN or infinite values (first: row {bad[0]}); "
                         f"k-center needs finite features")


def min_sq_dists(x: np.ndarray, centers: np.ndarray, x_sq: np.ndarray | None = None,
                 chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Squared distance from each row of x to its nearest row of centers, chunked both ways."""
    n = x.shape[0]
    x_sq = _sqnorms(x, chunk) if x_sq is None else x_sq
    best = np.full(n, np.inf)
    if len(centers) == 0:
        return best
    c_sq = _sqnorms(centers, chunk)
    # every temporary is at most chunk * 128 doubles (8 MiB by default)
    chunk_c = max(1, min(len(centers), 1024))
    row_chunk = max(1, (chunk * 128) // chunk_c)
    for cs in range(0, len(centers), chunk_c):
        c = centers[cs : cs + chunk_c]
        csq = c_sq[cs : cs + chunk_c]
        for s in range(0, n, row_chunk):
            dot = (x[s : s + row_chunk] @ c.T).astype(np.float64)
            d = x_sq[s : s + row_chunk, None] - 2.0 * dot + csq[None, :]
            np.minimum(best[s : s + row_chunk], d.min(axis=1), out=best[s : s + row_chunk])
    np.maximum(best, 0.0, out=best)
    return best


class _Updater:
    """Distances from all points to one new center, in chunks (float64 accumulation)."""

    def __init__(self, x: np.ndarray, chunk: int):
        self.x, self.chunk = x, chunk
        self.x_sq = _sqnorms(x, chunk)

    def update(self, best: np.ndarray, j: int) -> None:
        c = self.x[j]
        csq = self.x_sq[j]
        for s in range(0, self.x.shape[0], self.chunk):
            dot = (self.x[s : s + self.chunk] @ c).astype(np.float64)
            d = self.x_sq[s : s + self.chunk] - 2.0 * dot + csq
            np.maximum(d, 0.0, out=d)
            np.minimum(best[s : s + self.chunk], d, out=best[s : s + self.chunk])



def _k_center_greedy_one_pass(
    features: np.ndarray,
    labeled: np.ndarray | list[int],
    budget: int,
    candidates: np.ndarray | None = None,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """The implementation before pruning (one full pass over the features per pick), kept
    verbatim: the fallback for inputs that are not C-contiguous, and the reference the tests and
    ``benchmarks/bench_kcenter.py`` compare against.

    features: (N, d) array of every item (labeled and unlabeled).
    labeled: indices used as initial centers; never returned.
    candidates: indices that may be picked (default: all not labeled).
    Returns the picked indices in pick order (at most len(candidates)).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    n = x.shape[0]
    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    if candidates is None:
        mask = np.ones(n, dtype=bool)
        mask[labeled] = False
    else:
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(candidates, dtype=np.int64)] = True
        mask[labeled] = False
    budget = int(min(budget, mask.sum()))
    if budget <= 0:
        return np.empty(0, dtype=np.int64)

    upd = _Updater(x, chunk)
    best = min_sq_dists(x, x[labeled], x_sq=upd.x_sq, chunk=chunk)
    picks = np.empty(budget, dtype=np.int64)
    for k in range(budget):
        if k == 0 and len(labeled) == 0:
            cand_idx = np.flatnonzero(mask)
            j = int(cand_idx[np.random.default_rng(seed).integers(len(cand_idx))])
        else:
            masked = np.where(mask, best, -1.0)
            j = int(np.argmax(masked))  # first index among equal maxima
        picks[k] = j
        mask[j] = False
        upd.update(best, j)
    return picks


# ------------------------------------------------------------------ pruned k-center greedy

_BLAS_CTL = None


def seeded_first_center(mask: np.ndarray, seed: int) -> int:
    """The first center when nothing is labeled: a uniform choice among the candidates (``mask``), seeded."""
    cand_idx = np.flatnonzero(mask)
    return int(cand_idx[np.random.default_rng(seed).integers(len(cand_idx))])


def _blas_threads() -> int:
    """Threads numpy's OpenBLAS uses now (0 when numpy's BLAS is not OpenBLAS or unknown)."""
    global _BLAS_CTL
    try:
        if _BLAS_CTL is None:
            from threadpoolctl import ThreadpoolController

            blas = [c for c in ThreadpoolController().lib_controllers if c.internal_api == "openblas"]
            ours = [c for c in blas if "numpy" in str(c.filepath)]  # numpy's wheel bundles its own
            libs = ours or (blas if len(blas) == 1 else [])  # else: a single OpenBLAS (conda, distro)
            _BLAS_CTL = libs[0] if libs else False
        return int(_BLAS_CTL.num_threads) if _BLAS_CTL else 0
    except Exception:  # pragma: no cover - threadpoolctl missing or broken
        _BLAS_CTL = False
        return 0


class _OldLayout:
    """Where the one-pass version's GEMV put each row, so a gathered row gets the same bits.

    ``x[s:s+chunk] @ c`` (C-contiguous, so OpenBLAS gemv_t with m=d, n=rows) is split
    into thread blocks of ceil(rest / threads_left) (at least 4) rows when rows*d >= 9216;
    in each block, rows come in groups of 4 and the last (width mod 4) go through a
    different kernel (which kernel depends on how many are left: 1, 2 or 3). numpy computes
    a 1-row call as a dot product. ``rem`` lists the rows in such remainders, with the
    first row and length of their group, ``dot1`` the rows alone in their chunk.
    """

    def __init__(self, n: int, d: int, chunk: int, threads: int):
        self.threads = max(1, threads)
        self.emulate = threads > 0
        rem, rem_start, rem_len, dot1 = [], [], [], []
        if self.emulate:
            full, last_start = n // chunk, (n // chunk) * chunk
            sizes = [(chunk, np.arange(full, dtype=np.int64) * chunk)]
            if last_start < n:
                sizes.append((n - last_start, np.array([last_start], dtype=np.int64)))
            for m, starts in sizes:
                if len(starts) == 0:
                    continue
                if m == 1:
                    dot1.append(starts)
                    continue
                offs, first, length = self._remainder_offsets(m, d)
                if len(offs):
                    rem.append((starts[:, None] + offs[None, :]).ravel())
                    rem_start.append((starts[:, None] + first[None, :]).ravel())
                    rem_len.append(np.broadcast_to(length, (len(starts), len(length))).ravel())
        order = np.argsort(np.concatenate(rem)) if rem else np.empty(0, np.int64)
        self.rem = np.concatenate(rem)[order] if rem else np.empty(0, np.int64)
        # first row of each remainder row's group: the group is recomputed together
        self.rem_start = np.concatenate(rem_start)[order] if rem else np.empty(0, np.int64)
        self.rem_len = np.concatenate(rem_len)[order] if rem else np.empty(0, np.int64)
        self.dot1 = np.sort(np.concatenate(dot1)) if dot1 else np.empty(0, np.int64)

    def _remainder_offsets(self, m: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.threads
        blocks = []
        if t <= 1 or m * d < _OPENBLAS_MT_MIN:
            blocks = [(0, m)]
        else:
            rest, b, k = m, 0, 0
            while rest > 0:
                w = min(max(-(-rest // (t - k)) if t > k else rest, 4), rest)
                blocks.append((b, w))
                b, rest, k = b + w, rest - w, k + 1
        offs = [(r, b + 4 * (w // 4), w % 4) for b, w in blocks for r in range(b + 4 * (w // 4), b + w)]
        return tuple(np.array([o[i] for o in offs], dtype=np.int64) for i in range(3))

    @staticmethod
    def _member(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
        if len(table) == 0:
            return np.zeros(len(rows), dtype=bool)
        pos = np.minimum(np.searchsorted(table, rows), len(table) - 1)
        return table[pos] == rows

    def dots(self, x: np.ndarray, rows: np.ndarray, c: np.ndarray, dt, piece: int) -> np.ndarray:
        """x[rows] @ c (rows sorted), each value as the one-pass version computed it."""
        out = np.empty(len(rows), dtype=dt)
        rem = self._member(rows, self.rem)
        one = self._member(rows, self.dot1)
        main = ~(rem | one)
        mrows = rows[main]
        # padded to a multiple of 16 * threads: every thread block is a multiple of 4 rows
        unit = 16 * self.threads
        piece = max(unit, (piece // unit) * unit)
        mvals = np.empty(len(mrows), dtype=dt)
        for s in range(0, len(mrows), piece):
            r = mrows[s : s + piece]
            npad = -(-len(r) // unit) * unit
            buf = np.empty((npad, x.shape[1]), dtype=dt)
            if x.dtype == dt:
                np.take(x, r, axis=0, out=buf[: len(r)])
            else:
                buf[: len(r)] = x[r]
            buf[len(r) :] = 0
            mvals[s : s + len(r)] = (buf @ c)[: len(r)]
        out[main] = mvals
        if rem.any():
            # a remainder group (1-3 rows, the kernel depends on how many) after 4 zero rows:
            # the same kernels as in the one-pass call
            ri = np.flatnonzero(rem)
            starts = self.rem_start[np.searchsorted(self.rem, rows[ri])]
            for g in np.unique(starts):
                end = g + int(self.rem_len[np.searchsorted(self.rem, g)])
                buf = np.zeros((4 + end - g, x.shape[1]), dtype=dt)
                buf[4:] = x[g:end]
                vals = (buf @ c)[4:]
                sel = ri[starts == g]
                out[sel] = vals[rows[sel] - g]
        for i in np.flatnonzero(one):
            out[i] = (np.asarray(x[rows[i] : rows[i] + 1], dtype=dt) @ c)[0]
        return out


def _init_nearest(x, labeled, x_sq, chunk, dt):
    """min_sq_dists(x, x[labeled]) with the same blocks and bits, plus the nearest center's position."""
    n = x.shape[0]
    centers = np.asarray(x[labeled], dtype=dt)
    c_sq = _sqnorms(centers, chunk)
    best = np.full(n, np.inf)
    arg = np.zeros(n, dtype=np.int64)
    chunk_c = max(1, min(len(centers), 1024))
    row_chunk = max(1, (chunk * 128) // chunk_c)
    for cs in range(0, len(centers), chunk_c):
        c = centers[cs : cs + chunk_c]
        csq = c_sq[cs : cs + chunk_c]
        for s in range(0, n, row_chunk):
            dot = (np.asarray(x[s : s + row_chunk], dtype=dt) @ c.T).astype(np.float64)
            d = x_sq[s : s + row_chunk, None] - 2.0 * dot + csq[None, :]
            a = d.argmin(axis=1)
            v = d[np.arange(len(a)), a]
            b = best[s : s + row_chunk]
            better = v < b
            b[better] = v[better]
            arg[s : s + row_chunk][better] = a[better] + cs
    np.maximum(best, 0.0, out=best)
    return best, arg


def _rounding_bound(d: int, dt, max_sq: float) -> float:
    """Bound on |computed - exact| squared distance for any two rows (norms <= max_sq):
    dot product gamma_d |x||c|, twice, float64 norms and two float64 additions; doubled."""
    u = np.finfo(dt).eps / 2
    u64 = np.finfo(np.float64).eps / 2
    g = d * u / max(1 - d * u, 1e-3)
    g64 = d * u64 / (1 - d * u64)
    return 2.0 * (2 * g + 2 * g64 + 8 * u64) * max_sq


def k_center_greedy(
    features: np.ndarray,
    labeled: np.ndarray | list[int],
    budget: int,
    candidates: np.ndarray | None = None,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Pick ``budget`` indices by k-center greedy.

    features: (N, d) array of every item (labeled and unlabeled); float16/float32 may be a
    memory map (read in blocks, cast to float32 per block).
    labeled: indices used as initial centers; never returned.
    candidates: indices that may be picked (default: all not labeled).
    Returns the picked indices in pick order (at most len(candidates)).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {x.shape}")
    if not x.flags.c_contiguous or x.size <= ONE_PASS_MAX_ELEMENTS:
        return _k_center_greedy_one_pass(x, labeled, budget, candidates=candidates, seed=seed, chunk=chunk)
    dt = _work_dtype(x)
    n = x.shape[0]
    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    if candidates is None:
        mask = np.ones(n, dtype=bool)
        mask[labeled] = False
    else:
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(candidates, dtype=np.int64)] = True
        mask[labeled] = False
    budget = int(min(budget, mask.sum()))
    if budget <= 0:
        return np.empty(0, dtype=np.int64)
    return _Pruned(x, dt, labeled, mask, budget, seed, chunk).run()


class _Pruned:
    """State of one pruned k-center run; see the module docstring."""

    def __init__(self, x, dt, labeled, mask, budget, seed, chunk):
        self.x, self.dt, self.chunk, self.budget, self.seed = x, dt, chunk, budget, seed
        self.labeled, self.mask = labeled, mask
        n, dim = x.shape
        self.n = n
        self.x_sq = _sqnorms(x, chunk)
        self.eps = _rounding_bound(dim, dt, float(self.x_sq.max()) if n else 0.0)
        self.layout = _OldLayout(n, dim, chunk, _blas_threads())
        self.stats = {"rows_read": 0, "full_passes": 0, "groups_checked": 0}
        self.backoff = self.backoff_left = 0  # picks to run as plain full passes after a failed pruning

    # --- distances to one new center, the one-pass version's way
    def _full_pass(self, c, csq, gid):
        x, best, assign = self.x, self.best, self.assign
        top = -1.0
        for s in range(0, self.n, self.chunk):
            dot = (np.asarray(x[s : s + self.chunk], dtype=self.dt) @ c).astype(np.float64)
            d = self.x_sq[s : s + self.chunk] - 2.0 * dot + csq
            np.maximum(d, 0.0, out=d)
            b = best[s : s + self.chunk]
            moved = d < b  # rows not alive hold -1 and never move
            np.minimum(b, d, out=b)
            np.copyto(assign[s : s + self.chunk], gid, where=moved)
            top = max(top, float(np.max(b, where=moved, initial=-1.0)))
        self.stats["rows_read"] += self.n
        self.stats["full_passes"] += 1
        # rows only left their groups, so the other radii stay upper bounds
        self.radius[gid] = top

    def _gathered(self, rows, c, csq, gid):
        piece = max(1, (1 << 19) // max(1, self.x.shape[1] * np.dtype(self.dt).itemsize))  # ~512 KiB: stays in cache
        dot = self.layout.dots(self.x, rows, c, self.dt, piece).astype(np.float64)
        d = self.x_sq[rows] - 2.0 * dot + csq
        np.maximum(d, 0.0, out=d)
        b = self.best[rows]
        moved = d < b
        self.best[rows[moved]] = d[moved]
        self.assign[rows[moved]] = gid
        self.stats["rows_read"] += len(rows)

    def _add_center(self, j, gid):
        """Make row j the center of group gid and update every candidate it may be nearer to."""
        c = np.asarray(self.x[j], dtype=self.dt)
        csq = self.x_sq[j]
        self.cmat[gid] = c
        self.csq[gid] = csq
        if self.backoff_left > 0:  # pruning failed just before: do not pay for the bookkeeping again yet
            self.backoff_left -= 1
            self._full_pass(c, csq, gid)
            return
        act = np.flatnonzero(self.radius[:gid] >= 0)
        if len(act) == 0:
            if gid == 0:  # first center, nothing labeled: every candidate is its member
                self._full_pass(c, csq, gid)
            return
        cm = self.cmat[:gid] if len(act) > gid // 2 else self.cmat[act]
        dots = (cm @ c).astype(np.float64)
        if len(act) > gid // 2:
            dots = dots[act]
        d2 = self.csq[act] - 2.0 * dots + csq
        # skip x in group g iff best[x] <= D2/4 - 1.25 eps (triangle inequality with rounding margins)
        thr = d2 * (0.25 * (1 - 1e-12)) - 1.25 * self.eps * (1 + 1e-12) - 1e-300
        check = self.radius[act] > thr
        self.stats["groups_checked"] += int(check.sum())
        if not check.any():
            return
        ex = act[check]
        in_ex = np.zeros(len(self.radius), dtype=bool)
        in_ex[ex] = True
        thr_g = np.full(len(self.radius), np.inf)
        thr_g[ex] = thr[check]
        rows_g = np.flatnonzero(in_ex[self.assign])
        sel = rows_g[self.best[rows_g] > thr_g[self.assign[rows_g]]]
        if len(sel) > FULL_PASS_FRACTION * self.n:
            self._full_pass(c, csq, gid)
            self.backoff = min(2 * self.backoff + 1, 15)
            self.backoff_left = self.backoff
            return
        self.backoff = 0
        if len(sel):
            self._gathered(sel, c, csq, gid)
        self.radius[ex] = -1.0
        self.radius[gid] = -1.0
        np.maximum.at(self.radius, self.assign[rows_g], self.best[rows_g])

    def run(self):
        n, budget, mask = self.n, self.budget, self.mask
        picks = np.empty(budget, dtype=np.int64)
        # best: squared distance to the nearest center for candidates not yet picked, -1 otherwise
        self.best = np.full(n, -1.0)
        if len(self.labeled):
            b0, a0 = _init_nearest(self.x, self.labeled, self.x_sq, self.chunk, self.dt)
            rows = np.flatnonzero(mask)
            used, comp = np.unique(a0[rows], return_inverse=True)
            del a0
            g0 = len(used)
            first = 0
        else:
            g0, first = 0, 1
        ngroups = g0 + budget
        sentinel = ngroups
        self.assign = np.full(n, sentinel, dtype=np.int32)
        self.radius = np.full(ngroups + 1, -1.0)  # largest best[] of a group's members (upper bound)
        self.cmat = np.empty((ngroups, self.x.shape[1]), dtype=self.dt)
        self.csq = np.empty(ngroups)
        if len(self.labeled):
            self.best[rows] = b0[rows]
            self.assign[rows] = comp
            del b0
            lab_rows = self.labeled[used]
            for s in range(0, g0, self.chunk):
                self.cmat[s : min(s + self.chunk, g0)] = self.x[lab_rows[s : s + self.chunk]]
            self.csq[:g0] = self.x_sq[lab_rows]
            np.maximum.at(self.radius, comp, self.best[rows])
        else:
            self.best[mask] = np.inf
            j = seeded_first_center(mask, self.seed)
            picks[0] = j
            self.best[j] = -1.0
            self._add_center(j, 0)
        for k in range(first, budget):
            j = int(np.argmax(self.best))  # first index among equal maxima; non-candidates hold -1
            picks[k] = j
            self.best[j] = -1.0
            self.assign[j] = sentinel
            self._add_center(j, g0 + k)
        return picks
