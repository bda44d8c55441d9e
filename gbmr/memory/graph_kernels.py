"""numba kernels of MemoryGraph: the sequential and per-node parts that were Python loops.

Writes are sequential by definition (each step sees the memory the previous one left) and reads of one query
touch ~50 nodes: per-step Python and many tiny numpy calls dominated both. These kernels run them compiled
(``cache=True``: compiled once per machine, then loaded from ``__pycache__``). MemoryGraph holds the state;
the kernels take it as two tuples of arrays, see ``MemoryGraph._node_arrays`` and ``MemoryGraph._edge_arrays``:

- nodes: ``(keys f32 [n, d], visits, last_used, alive, free [tables, cap], num_free [tables], drift f64,
  capacity)``
- edges: ``(ints [5, e] = src dst action visits last_used, floats [2, e] = reward weight, alive,
  links [4, e] = out_next out_prev in_next in_prev, heads [2, n] = out_head in_head, table, free, num_free [1],
  n_slots, num_actions)``

``table`` is the (src, dst, action) -> edge lookup: open addressing with linear probing over edge ids (the key
is read back from the edge arrays, so the table is one int64 array; deletion shifts entries back instead of
leaving tombstones), power-of-two size >= 1.5 x edge capacity.

Squared distances are summed in numpy's pairwise order (``_pairwise``), so that they equal ``(x * x).sum(-1)``
bit for bit and the numpy oracles of the tests and benchmarks agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SRC, DST, ACT, VIS, LAST = range(5)  # rows of the edge int array
REW, WEIGHT = range(2)  # rows of the edge float array
ONEXT, OPREV, INEXT, IPREV = range(4)  # rows of the edge link array
OUT, IN = range(2)  # rows of the node head array
_MIX = np.uint64(0x9E3779B97F4A7C15)


def table_size(edge_capacity: int) -> int:
    """Lookup table slots: the power of two >= 1.5 x edge capacity (load factor <= 2/3)."""
    return 1 << max(3, math.ceil(math.log2(1.5 * edge_capacity + 1)))


# ------------------------------------------------------------------ distances
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


@njit(cache=True)
def _half(n):
    """Where numpy splits a pairwise sum of n > 128 terms."""
    half = n // 2
    return half - half % 8


# numpy recurses; numba's cache cannot load recursive functions, so the recursion is unrolled to 3 levels
# (exact up to 512 terms; longer sums add 128-term blocks left to right, within an ulp or so of numpy)
@njit(cache=True)
def _pairwise3(a, lo, n):
    if n <= 128:
        return _block(a, lo, n)
    res = 0.0
    for start in range(lo, lo + n, 128):
        res += _block(a, start, min(128, lo + n - start))
    return res


@njit(cache=True)
def _pairwise2(a, lo, n):
    if n <= 128:
        return _block(a, lo, n)
    h = _half(n)
    return _pairwise3(a, lo, h) + _pairwise3(a, lo + h, n - h)


@njit(cache=True)
def _pairwise(a, lo, n):
    if n <= 128:
        return _block(a, lo, n)
    h = _half(n)
    return _pairwise2(a, lo, h) + _pairwise2(a, lo + h, n - h)


@njit(cache=True)
def _sqdist(key, h64, buf):
    """||float64(key) - h64||^2 as numpy computes it; `buf` is scratch of length dim."""
    for j in range(h64.size):
        x = np.float64(key[j]) - h64[j]
        buf[j] = x * x
    return _pairwise(buf, 0, h64.size)


@njit(cache=True)
def rerank(queries, cand, keys):
    """Exact float64 squared distances of candidate ids (-1: inf) to each query, ascending (stable)."""
    B, k = cand.shape
    ids = np.empty((B, k), dtype=np.int64)
    d2 = np.empty((B, k))
    buf = np.empty(queries.shape[1])
    h64 = np.empty(queries.shape[1])
    row = np.empty(k)
    for b in range(B):
        for j in range(queries.shape[1]):
            h64[j] = np.float64(queries[b, j])
        for j in range(k):
            c = cand[b, j]
            row[j] = _sqdist(keys[c], h64, buf) if c >= 0 else np.inf
        order = np.argsort(row, kind="mergesort")
        for j in range(k):
            ids[b, j] = cand[b, order[j]]
            d2[b, j] = row[order[j]]
    return ids, d2


# ------------------------------------------------------------------ edge lookup table
@njit(cache=True)
def _home(src, dst, act, n_slots, num_actions, mask):
    x = np.uint64((src * n_slots + dst) * num_actions + act) * _MIX
    return np.int64((x ^ (x >> np.uint64(29))) & np.uint64(mask))


@njit(cache=True)
def find_edge(src, dst, act, edges):
    """The edge src -act-> dst, or -1."""
    ints, table, n_slots, num_actions = edges[0], edges[5], edges[8], edges[9]
    mask = table.size - 1
    i = _home(src, dst, act, n_slots, num_actions, mask)
    while True:
        e = table[i]
        if e < 0:
            return -1
        if ints[SRC, e] == src and ints[DST, e] == dst and ints[ACT, e] == act:
            return e
        i = (i + 1) & mask


@njit(cache=True)
def _table_insert(e, edges):
    ints, table, n_slots, num_actions = edges[0], edges[5], edges[8], edges[9]
    mask = table.size - 1
    i = _home(ints[SRC, e], ints[DST, e], ints[ACT, e], n_slots, num_actions, mask)
    while table[i] >= 0:
        i = (i + 1) & mask
    table[i] = e


@njit(cache=True)
def _table_delete(e, edges):
    """Remove e and shift later entries of its probe run back (no tombstones)."""
    ints, table, n_slots, num_actions = edges[0], edges[5], edges[8], edges[9]
    mask = table.size - 1
    i = _home(ints[SRC, e], ints[DST, e], ints[ACT, e], n_slots, num_actions, mask)
    while table[i] != e:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        f = table[j]
        if f < 0:
            break
        home = _home(ints[SRC, f], ints[DST, f], ints[ACT, f], n_slots, num_actions, mask)
        if ((j - home) & mask) >= ((j - i) & mask):  # f may move back to i without leaving its run
            table[i] = f
            i = j
    table[i] = -1


@njit(cache=True)
def rebuild_table(edges):
    """Fill the lookup table from the alive edges (after loading a state)."""
    alive, table = edges[2], edges[5]
    table[:] = -1
    for e in range(alive.size):
        if alive[e]:
            _table_insert(e, edges)


# ------------------------------------------------------------------ edges and nodes
@njit(cache=True)
def _link(e, end, head, nxt, prv):
    first = head[end]
    nxt[e], prv[e], head[end] = first, -1, e
    if first >= 0:
        prv[first] = e


@njit(cache=True)
def _unlink(e, end, head, nxt, prv):
    p, n = prv[e], nxt[e]
    if p >= 0:
        nxt[p] = n
    else:
        head[end] = n
    if n >= 0:
        prv[n] = p


@njit(cache=True)
def remove_edge(e, edges):
    ints, alive, links, heads, free, num_free = edges[0], edges[2], edges[3], edges[4], edges[6], edges[7]
    _table_delete(e, edges)
    _unlink(e, ints[SRC, e], heads[OUT], links[ONEXT], links[OPREV])
    _unlink(e, ints[DST, e], heads[IN], links[INEXT], links[IPREV])
    alive[e] = False
    free[num_free[0]] = e
    num_free[0] += 1


@njit(cache=True)
def remove_edges(ids, edges):
    for e in ids:
        remove_edge(e, edges)


@njit(cache=True)
def add_edges(src, dst, actions, rewards, returns, clocks, eta, edges):
    """Add or update edges in order (the caller made room); returns their ids."""
    ints, floats, alive, links, heads, free, num_free = (edges[0], edges[1], edges[2], edges[3], edges[4],
                                                          edges[6], edges[7])
    out = np.empty(src.size, dtype=np.int64)
    for i in range(src.size):
        s, d, a = src[i], dst[i], actions[i]
        e = find_edge(s, d, a, edges)
        if e < 0:
            num_free[0] -= 1
            e = free[num_free[0]]
            ints[SRC, e], ints[DST, e], ints[ACT, e], ints[VIS, e] = s, d, a, 1
            floats[REW, e], floats[WEIGHT, e] = rewards[i], returns[i]
            alive[e] = True
            _table_insert(e, edges)
            _link(e, s, heads[OUT], links[ONEXT], links[OPREV])
            _link(e, d, heads[IN], links[INEXT], links[IPREV])
        else:
            v = ints[VIS, e] + 1
            ints[VIS, e] = v
            floats[WEIGHT, e] += eta * (returns[i] - floats[WEIGHT, e])
            floats[REW, e] += (rewards[i] - floats[REW, e]) / v
        ints[LAST, e] = clocks[i]
        out[i] = e
    return out


@njit(cache=True)
def evict_node(v, nodes, edges):
    """Remove node v and every edge into or out of it; its slot goes back on its table's free stack."""
    alive, free, num_free, capacity = nodes[3], nodes[4], nodes[5], nodes[7]
    links, heads = edges[3], edges[4]
    e = heads[OUT, v]
    while e >= 0:
        following = links[ONEXT, e]
        remove_edge(e, edges)
        e = following
    e = heads[IN, v]
    while e >= 0:
        following = links[INEXT, e]
        remove_edge(e, edges)
        e = following
    alive[v] = False
    t = v // capacity
    free[t, num_free[t]] = v
    num_free[t] += 1


@njit(cache=True)
def evict_nodes(ids, nodes, edges):
    for v in ids:
        evict_node(v, nodes, edges)


@njit(cache=True)
def _oldest(table, nodes):
    """The least recently used alive node of `table` (ties: lowest id)."""
    last, alive, capacity = nodes[2], nodes[3], nodes[7]
    best = -1
    for v in range(table * capacity, (table + 1) * capacity):
        if alive[v] and (best < 0 or last[v] < last[best]):
            best = v
    return best


@njit(cache=True)
def assign_nodes(table, steps, keys, clocks, cand, cand_d2, th, lru, lru_stamp, mark, nodes, edges, out):
    """Sequential merge-or-insert of `steps` (all in `table`), writing their node ids into `out`.

    `cand` / `cand_d2`: per step the nearest old nodes by exact distance, ascending, searched before the episode.
    Old nodes not touched during this episode keep their keys, so the nearest of them is the first untouched
    candidate. Touched nodes (at most one per step; an evicted slot is refilled at once) are compared exactly
    at each step. If all candidates were touched and the last is still closer than dist_th, an exhaustive
    search decides (rare). `lru`: the oldest nodes with their stamps (a stamp that changed = merged since:
    skipped). `mark` is scratch [n_slots] of -1. Returns the touched nodes in first-touch order."""
    node_keys, visits, last, alive, free, num_free, drift, capacity = nodes
    dim = keys.shape[1]
    touched = np.empty(steps.size, dtype=np.int64)
    n_touched, li = 0, 0
    h64 = np.empty(dim)
    buf = np.empty(dim)
    for r in range(steps.size):
        i = steps[r]
        for j in range(dim):
            h64[j] = np.float64(keys[i, j])
        best, best_d2 = -1, np.inf
        exhausted = True
        for c_idx in range(cand.shape[1]):
            c = cand[r, c_idx]
            if c < 0:
                exhausted = False
                break
            if mark[c] < 0:  # untouched: its key and distance are as precomputed
                best, best_d2 = c, cand_d2[r, c_idx]
                exhausted = False
                break
        if exhausted and cand.shape[1] > 0 and math.sqrt(cand_d2[r, cand.shape[1] - 1]) < th:
            for v in range(table * capacity, (table + 1) * capacity):
                if alive[v]:
                    d2 = _sqdist(node_keys[v], h64, buf)
                    if d2 < best_d2:
                        best, best_d2 = v, d2
        for t in range(n_touched):
            d2 = _sqdist(node_keys[touched[t]], h64, buf)
            if d2 < best_d2:
                best, best_d2 = touched[t], d2
        d = math.sqrt(best_d2)
        if d < th:  # merge: slow key drift towards the new state
            moved = 0.0
            for j in range(dim):
                old = node_keys[best, j]
                node_keys[best, j] = np.float32((np.float64(old) + d * h64[j]) / (1.0 + d))
                moved += (np.float64(node_keys[best, j]) - np.float64(old)) ** 2
            drift[best] += math.sqrt(moved)
            visits[best] += 1
        else:
            if num_free[table] == 0:
                victim = -1
                while li < lru.size and victim < 0:
                    c = lru[li]
                    if alive[c] and last[c] == lru_stamp[li]:
                        victim = c
                    li += 1
                if victim < 0:  # the list ran out (merges touched some of it): ask again
                    victim = _oldest(table, nodes)
                    for j in range(out.size):  # only if the table is smaller than the episode
                        if out[j] == victim:
                            out[j] = -1
                evict_node(victim, nodes, edges)
            num_free[table] -= 1
            best = free[table, num_free[table]]
            node_keys[best] = keys[i]
            visits[best] = 1
            alive[best] = True
            drift[best] = np.inf  # never indexed
        last[best] = clocks[i]
        if mark[best] < 0:
            mark[best] = n_touched
            touched[n_touched] = best
            n_touched += 1
        out[i] = best
    touched = touched[:n_touched]
    mark[touched] = -1
    return touched


# ------------------------------------------------------------------ node values and reads
@njit(cache=True)
def _node_q(u, edges, use_max, q, has, vsum):
    """Q(u, a) into q[a] and has[a] (reset here); vsum is scratch [num_actions]."""
    ints, floats, links, heads = edges[0], edges[1], edges[3], edges[4]
    q[:] = 0.0
    has[:] = False
    vsum[:] = 0.0
    e = heads[OUT, u]
    while e >= 0:
        a = ints[ACT, e]
        w = floats[WEIGHT, e]
        if use_max:
            q[a] = w if not has[a] else max(q[a], w)
        else:
            v = np.float64(ints[VIS, e])
            q[a] += w * v
            vsum[a] += v
        has[a] = True
        e = links[ONEXT, e]
    if not use_max:
        for a in range(q.size):
            if has[a]:
                q[a] /= vsum[a]


@njit(cache=True)
def node_q(ids, edges, use_max):
    """Q(u, a) [n, num_actions] and the mask of actions with an out-edge."""
    A = edges[9]
    q = np.zeros((ids.size, A))
    has = np.zeros((ids.size, A), dtype=np.bool_)
    vsum = np.empty(A)
    for i in range(ids.size):
        _node_q(ids[i], edges, use_max, q[i], has[i], vsum)
    return q, has


@njit(cache=True)
def _value(u, edges, use_max, q, has, vsum):
    if edges[4][OUT, u] < 0:
        return 0.0
    _node_q(u, edges, use_max, q, has, vsum)
    best = -np.inf
    for a in range(q.size):
        if has[a] and q[a] > best:
            best = q[a]
    return best


@njit(cache=True)
def node_values(ids, edges, use_max):
    """V(u) = max_a Q(u, a), 0 without out-edges."""
    A = edges[9]
    q, vsum = np.empty(A), np.empty(A)
    has = np.empty(A, dtype=np.bool_)
    out = np.empty(ids.size)
    for i in range(ids.size):
        out[i] = _value(ids[i], edges, use_max, q, has, vsum)
    return out


@njit(cache=True)
def read(queries, cand, keys, delta, edges, use_max, skip):
    """Kernel read over candidate ids [B, k] (one table): exact re-rank, w = 1 / (d^2 + delta), Q of each
    neighbour from its out-edges, weighted mean per action (skip: over neighbours with that action)."""
    A = edges[9]
    ids, d2 = rerank(queries, cand, keys)
    B, k = ids.shape
    w = 1.0 / (d2 + delta)
    out = np.zeros((B, A))
    q, vsum, num, den = np.empty(A), np.empty(A), np.empty(A), np.empty(A)
    has = np.empty(A, dtype=np.bool_)
    for b in range(B):
        num[:] = 0.0
        den[:] = 0.0
        for j in range(k):
            if ids[b, j] < 0:
                continue
            _node_q(ids[b, j], edges, use_max, q, has, vsum)
            for a in range(A):
                if has[a] or not skip:
                    num[a] += w[b, j] * q[a]
                    den[a] += w[b, j]
        for a in range(A):
            if den[a] > 0:
                out[b, a] = num[a] / den[a]
    return out, ids, w


@njit(cache=True)
def best_edges(u, v, edges):
    """For each pair, the highest-reward alive edge u -> v (any action; ties: lowest id), or -1."""
    ints, floats, links, heads = edges[0], edges[1], edges[3], edges[4]
    out = np.full(u.size, -1, dtype=np.int64)
    for i in range(u.size):
        e = heads[OUT, u[i]]
        while e >= 0:
            if ints[DST, e] == v[i]:
                b = out[i]
                if b < 0 or floats[REW, e] > floats[REW, b] or (floats[REW, e] == floats[REW, b] and e < b):
                    out[i] = e
            e = links[ONEXT, e]
    return out


@njit(cache=True)
def sweep(iterations, gamma, eta, reference_backup, skip_dst, edges, use_max):
    """`iterations` synchronous backups of every alive edge not into `skip_dst` (the truncated sentinel):
    w += eta (target - w), target r + gamma V(dst) (reference: V(dst)), V from the weights before the iteration.
    Edges are gathered once in out-list order so that the iterations run over contiguous arrays."""
    ints, floats, alive, links, heads, A = edges[0], edges[1], edges[2], edges[3], edges[4], edges[9]
    n = heads.shape[1]
    m = 0
    for e in range(alive.size):
        m += alive[e]
    order = np.empty(m, dtype=np.int64)
    owners = np.empty(n, dtype=np.int64)  # nodes with out-edges, and where their edges start in `order`
    start = np.empty(n + 1, dtype=np.int64)
    pos, n_own = 0, 0
    for u in range(n):
        e = heads[OUT, u]
        if e < 0:
            continue
        owners[n_own], start[n_own] = u, pos
        n_own += 1
        while e >= 0:
            order[pos] = e
            pos += 1
            e = links[ONEXT, e]
    start[n_own] = pos
    w, act, dst = floats[WEIGHT][order], ints[ACT][order], ints[DST][order]
    vis = ints[VIS][order].astype(np.float64)
    rew = floats[REW][order]
    values = np.zeros(n)
    q, vsum = np.empty(A), np.empty(A)
    has = np.empty(A, dtype=np.bool_)
    for _ in range(iterations):
        for o in range(n_own):
            q[:] = 0.0
            vsum[:] = 0.0
            has[:] = False
            for p in range(start[o], start[o + 1]):
                a = act[p]
                if use_max:
                    q[a] = w[p] if not has[a] else max(q[a], w[p])
                else:
                    q[a] += w[p] * vis[p]
                    vsum[a] += vis[p]
                has[a] = True
            best = -np.inf
            for a in range(A):
                if has[a]:
                    qa = q[a] if use_max else q[a] / vsum[a]
                    best = max(best, qa)
            values[owners[o]] = best
        for p in range(m):
            if dst[p] != skip_dst:
                target = values[dst[p]] if reference_backup else rew[p] + gamma * values[dst[p]]
                w[p] += eta * (target - w[p])
    floats[WEIGHT][order] = w


@njit(cache=True)
def all_values(edges, use_max):
    """V of every node slot."""
    n = edges[4].shape[1]
    return node_values(np.arange(n), edges, use_max)
