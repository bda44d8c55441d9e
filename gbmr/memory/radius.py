"""Exact squared distances and ``RadiusGrid``, the exact fixed-radius nearest search of the graph's writes.

A write only needs, per step, the nearest node of its table *if* it lies within ``dist_th`` (merge), else
nothing (insert). A k-NN search answers a harder question: brute force spent ~80% of a write in matmul + topk
over all keys. The grid answers the radius question exactly and is updated in place as nodes appear, move
(merges drift keys) and disappear, one at a time, in the write loop itself:

- **Projection.** Each table has 3 orthonormal directions (its keys' top principal axes, refitted from time to
  time; the first coordinate axes before any key; zero rows below 3 dims). A projection never lengthens a
  vector, so a node within ``radius`` of a query is within ``radius`` of it in projected space too.
- **Cubes.** Projected space is cut into cubes of side ``radius``; a node lives in the list of its cube's hash
  bucket (``buckets`` heads, per-node doubly linked ``links``; hashing (table, cube) to a fixed number of
  buckets keeps memory bounded; a bucket may mix cubes and tables, which costs a few extra comparisons).
- **Query.** Only the <= 27 cubes whose box lies within ``radius`` (plus a rounding margin) of the projected
  query are walked; a node there is compared by its exact float64 distance unless its projected distance or a
  partial sum of its squared differences already rules it out; equal distances go to the lowest id. The
  answer is the exact nearest node whenever that one is within ``radius``: results never depend on the
  projection, the refits or the hashing, only the speed does.
- **Refits** (PCA of the table's keys) run when a table has had as many inserts as it held nodes at the last
  fit (at least ``_MIN_REFIT``): amortised O(dim^2) per insert. Nothing is saved: ``rebuild`` recomputes the
  grid from the keys (after loading a state).

The grid prunes well while the keys spread over at least 3 directions much wider than ``radius`` (trajectory
embeddings do); if they do not, it degrades towards a scan of the table, still exact (MemoryGraph's auto write
search then moves the table to batched brute-force candidates, by the ``stats`` count of examined nodes).

Squared distances are summed in numpy's pairwise order (``_pairwise``), so that they equal ``(x * x).sum(-1)``
bit for bit and the numpy oracles of the tests and benchmarks agree exactly.

Kernels take the grid as a tuple ``(buckets [nb], links [3, n_slots] = next prev bucket, coords [n_slots, 3]
f64 (projected keys), proj [tables, 3, dim] f64, stats [3, tables] = inserts since fit / size at fit / nodes
examined by searches (a running count: the search cost, for the caller to compare with brute force), radius,
side, capacity)``; ``side`` is the cube side (the radius, or 1 if the radius is 0 or infinite: then the cubes
are not searched); node ``v`` is in table ``v // capacity``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

NEXT, PREV, BUCKET = range(3)  # rows of the grid's link array
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIN_REFIT = 256  # inserts before a table's first refit
_PCA_SAMPLE = 20_000  # keys (about) that a refit's principal axes are computed from
_MARGIN = 1e-7  # relative widening of the searched range: projections and cells are rounded


# ------------------------------------------------------------------ exact distances
@njit(cache=True)
def _block(a, lo, n):
    """numpy's pairwise sum of a[lo:lo+n] for n <= 128: 8 accumulators, same rounding."""
    if n < 8:
        res = a[lo]
        for i in range(1, n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


# numpy recurses (split at half the length, rounded down to a multiple of 8); numba's cache cannot load
# recursive functions, so two levels are written out: exact up to 512 terms; longer sums add 128-term blocks
# left to right below the first split (within an ulp or so of numpy)
@njit(cache=True)
def _pairwise2(a, lo, n):
    if n <= 128:
        return _block(a, lo, n)
    if n <= 256:
        h = n // 2 - (n // 2) % 8
        return _block(a, lo, h) + _block(a, lo + h, n - h)
    res = 0.0
    for start in range(lo, lo + n, 128):
        res += _block(a, start, min(128, lo + n - start))
    return res


@njit(cache=True)
def _pairwise(a, lo, n):
    if n <= 128:
        return _block(a, lo, n)
    h = n // 2 - (n // 2) % 8
    return _pairwise2(a, lo, h) + _pairwise2(a, lo + h, n - h)


@njit(cache=True)
def sqdist(key, h64, buf):
    """||float64(key) - h64||^2 as numpy computes it; `buf` is scratch of length dim."""
    for j in range(h64.size):
        x = np.float64(key[j]) - h64[j]
        buf[j] = x * x
    return _pairwise(buf, 0, h64.size)


# ------------------------------------------------------------------ the grid
@njit(cache=True)
def _project(x, table, proj):
    """proj[table] @ float64(x): the 3 projected coordinates."""
    p0 = p1 = p2 = 0.0
    for k in range(x.size):
        xk = np.float64(x[k])
        p0 += proj[table, 0, k] * xk
        p1 += proj[table, 1, k] * xk
        p2 += proj[table, 2, k] * xk
    return p0, p1, p2


@njit(cache=True)
def _bucket_of(table, c0, c1, c2, mask):
    """The bucket of cube (c0, c1, c2) of `table`."""
    x = np.uint64(table + 1) * _MIX
    for c in (c0, c1, c2):
        x = (x ^ np.uint64(c)) * _MIX
        x ^= x >> np.uint64(29)
    return np.int64(x & np.uint64(mask))


@njit(cache=True)
def _file(v, key, grid):
    """Project node v's float32 key into coords[v]; the bucket of its cube."""
    buckets, coords, proj, side, capacity = grid[0], grid[2], grid[3], grid[6], grid[7]
    table = v // capacity
    p0, p1, p2 = _project(key, table, proj)
    coords[v, 0], coords[v, 1], coords[v, 2] = p0, p1, p2
    return _bucket_of(table, math.floor(p0 / side), math.floor(p1 / side), math.floor(p2 / side),
                      buckets.size - 1)


@njit(cache=True)
def _link(v, b, grid):
    buckets, links = grid[0], grid[1]
    first = buckets[b]
    links[NEXT, v], links[PREV, v], links[BUCKET, v] = first, -1, b
    if first >= 0:
        links[PREV, first] = v
    buckets[b] = v


@njit(cache=True)
def grid_remove(v, grid):
    """Take node v out of its list (no-op if it is in none)."""
    buckets, links = grid[0], grid[1]
    b = links[BUCKET, v]
    if b < 0:
        return
    p, n = links[PREV, v], links[NEXT, v]
    if p >= 0:
        links[NEXT, p] = n
    else:
        buckets[b] = n
    if n >= 0:
        links[PREV, n] = p
    links[BUCKET, v] = -1


@njit(cache=True)
def grid_add(v, key, grid):
    """File a new node v (key: its float32 key); counts as an insert towards the next refit."""
    _link(v, _file(v, key, grid), grid)
    grid[4][0, v // grid[7]] += 1


@njit(cache=True)
def grid_move(v, key, grid):
    """Node v's key changed: re-file it (relinked only if its cube changed)."""
    b = _file(v, key, grid)
    if b != grid[1][BUCKET, v]:
        grid_remove(v, grid)
        _link(v, b, grid)


@njit(cache=True)
def _gap(c, p, side):
    """How far coordinate p lies outside cell c."""
    below, above = c * side - p, p - (c + 1) * side
    return below if below > 0 else (above if above > 0 else 0.0)


@njit(cache=True)
def grid_nearest(h64, table, keys, alive, grid, buf):
    """The nearest node of `table` to h64 (ties: lowest id) and its exact squared distance, guaranteed exact
    when that distance is below radius^2; (-1, inf) if no node is found. A non-finite radius: brute force.

    Cubes farther than the radius from the projected query are skipped; a node is compared exactly only if
    neither its projected distance nor a partial sum of its squared differences already exceeds
    min(best so far, radius^2) (both bounds widened by a relative margin that covers rounding)."""
    buckets, links, coords, proj, radius, side, capacity = grid[0], grid[1], grid[2], grid[3], grid[5], \
        grid[6], grid[7]
    first, end = table * capacity, (table + 1) * capacity
    best, best_d2 = -1, np.inf
    if not radius > 0:
        return best, best_d2
    if not math.isfinite(radius):
        grid[4][2, table] += capacity
        for v in range(first, end):
            if alive[v]:
                d2 = sqdist(keys[v], h64, buf)
                if d2 < best_d2 or (d2 == best_d2 and v < best):
                    best, best_d2 = v, d2
        return best, best_d2
    dim = h64.size
    p0, p1, p2 = _project(h64, table, proj)
    norm = 0.0
    for x in h64:
        norm += abs(x)
    r = radius + _MARGIN * (radius + norm)
    r2 = r * r
    mask = buckets.size - 1
    examined = 0
    for c0 in range(math.floor((p0 - r) / side), math.floor((p0 + r) / side) + 1):
        g0 = _gap(c0, p0, side) ** 2
        for c1 in range(math.floor((p1 - r) / side), math.floor((p1 + r) / side) + 1):
            g1 = g0 + _gap(c1, p1, side) ** 2
            if g1 > r2:
                continue
            for c2 in range(math.floor((p2 - r) / side), math.floor((p2 + r) / side) + 1):
                if g1 + _gap(c2, p2, side) ** 2 > r2:
                    continue
                v = buckets[_bucket_of(table, c0, c1, c2, mask)]
                while v >= 0:
                    examined += 1
                    if first <= v < end and ((coords[v, 0] - p0) ** 2 + (coords[v, 1] - p1) ** 2
                                             + (coords[v, 2] - p2) ** 2) <= r2:
                        bound = min(best_d2, r2) * (1.0 + _MARGIN)
                        key = keys[v]
                        s = 0.0
                        j = 0
                        while j < dim and s <= bound:
                            s += (np.float64(key[j]) - h64[j]) ** 2
                            j += 1
                        if s <= bound:
                            d2 = sqdist(key, h64, buf)
                            if d2 < best_d2 or (d2 == best_d2 and v < best):
                                best, best_d2 = v, d2
                    v = links[NEXT, v]
    grid[4][2, table] += examined
    return best, best_d2


@njit(cache=True)
def grid_refile(ids, keys, grid):
    """Re-file `ids` (after their table's projection changed, or into an empty grid)."""
    for v in ids:
        grid_remove(v, grid)
        _link(v, _file(v, keys[v], grid), grid)


@njit(cache=True)
def grid_search(queries, table, keys, alive, grid):
    """grid_nearest for each query row: ids [B] and squared distances [B]."""
    ids = np.empty(queries.shape[0], dtype=np.int64)
    d2 = np.empty(queries.shape[0])
    h64 = np.empty(queries.shape[1])
    buf = np.empty(queries.shape[1])
    for b in range(queries.shape[0]):
        for j in range(queries.shape[1]):
            h64[j] = np.float64(queries[b, j])
        ids[b], d2[b] = grid_nearest(h64, table, keys, alive, grid, buf)
    return ids, d2


class RadiusGrid:
    """The grid over the nodes of all tables of a key array (see the module notes); the keys stay the
    caller's: every change to a key or to aliveness goes through grid_add / grid_move / grid_remove."""

    def __init__(self, keys: np.ndarray, radius: float, capacity: int, num_tables: int):
        self.keys, self.radius = keys, float(radius)
        self.capacity, self.num_tables = int(capacity), int(num_tables)
        dim = keys.shape[1]
        m = min(3, dim)  # below 3 dims, the missing directions are zero rows: one layer of cubes
        self.buckets = np.full(1 << max(3, math.ceil(math.log2(2 * capacity * num_tables))), -1, dtype=np.int64)
        self.links = np.full((3, len(keys)), -1, dtype=np.int64)
        self.coords = np.zeros((len(keys), 3))  # each filed node's projected key
        self.proj = np.zeros((num_tables, 3, dim))
        self.proj[:, np.arange(m), np.arange(m)] = 1.0
        self.stats = np.zeros((3, num_tables), dtype=np.int64)
        side = self.radius if 0 < self.radius < math.inf else 1.0
        self.arrays = (self.buckets, self.links, self.coords, self.proj, self.stats, self.radius, side,
                       self.capacity)

    def refit_due(self) -> None:
        """Refit the tables that had as many inserts as they held at their last fit (a cheap check)."""
        due = self.stats[0] >= np.maximum(self.stats[1], _MIN_REFIT)
        if due.any():
            for table in np.flatnonzero(due).tolist():
                self.refit(table)

    def refit(self, table: int) -> None:
        """Project `table` onto its keys' top principal axes and re-file its nodes."""
        lo = table * self.capacity
        ids = np.flatnonzero(self.links[BUCKET, lo:lo + self.capacity] >= 0) + lo
        if ids.size > 1:
            m = min(3, self.keys.shape[1])
            x = self.keys[ids[:: max(1, ids.size // _PCA_SAMPLE)]].astype(np.float64)
            x -= x.mean(0)
            _, vectors = np.linalg.eigh(x.T @ x)
            self.proj[table, :m] = vectors[:, ::-1][:, :m].T
            grid_refile(ids, self.keys, self.arrays)
        self.stats[:2, table] = 0, ids.size

    def rebuild(self, alive: np.ndarray) -> None:
        """File every alive node anew (`alive`: mask over the key rows; rows past the tables are ignored)."""
        self.buckets[:] = -1
        self.links[:] = -1
        grid_refile(np.flatnonzero(alive[: self.capacity * self.num_tables]), self.keys, self.arrays)
        for table in range(self.num_tables):
            self.refit(table)

    def nearest(self, queries: np.ndarray, table: int, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the nearest node of `table` and its squared distance, exact whenever that distance is
        below radius^2 (otherwise some farther node, or -1 and inf)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.keys.shape[1])
        return grid_search(queries, int(table), self.keys, alive, self.arrays)
