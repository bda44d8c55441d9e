"""numba kernels of MemoryGraph: the sequential and per-node parts that were Python loops.

Writes are sequential by definition (each step sees the memory the previous one left) and reads of one query
touch ~50 nodes: per-step Python and many tiny numpy calls dominated both. These kernels run them compiled
(``cache=True``: compiled once per machine, then loaded from ``__pycache__``). MemoryGraph holds the state;
the kernels take it as two tuples of arrays, see ``MemoryGraph._node_arrays`` and ``MemoryGraph._edge_arrays``:

- nodes: ``(keys f32 [n, d], visits, last_used, alive, free [tables, cap], num_free [tables], drift f64,
  capacity, lru [2, n] = older newer, lru_ends [2, tables] = oldest newest, dirty [n] bool, dirty_ids [n],
  dirty_count [1], grid)``; ``grid`` is the ``RadiusGrid`` tuple (``gbmr.memory.radius``).

Per table, the alive nodes form a doubly linked list in (last_used, id) order: a write stamps its node with a
clock later than every stamp, so it moves to the newest end, and the least recently used node is the oldest
end. Every node whose key or aliveness changes is recorded once in ``dirty_ids`` (the search index of the
reads is brought up to date from it before the next search).
- edges: ``(ints [5, e] = src dst action visits last_used, floats [2, e] = reward weight, alive,
  links [4, e] = out_next out_prev in_next in_prev, heads [2, n] = out_head in_head, table, free, num_free [1],
  n_slots, num_actions)``

``table`` is the (src, dst, action) -> edge lookup: open addressing with linear probing over edge ids (the key
is read back from the edge arrays, so the table is one int64 array; deletion shifts entries back instead of
leaving tombstones), power-of-two size >= 1.5 x edge capacity.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gbmr.memory.radius import grid_add, grid_move, grid_nearest, grid_remove, sqdist

SRC, DST, ACT, VIS, LAST = range(5)  # rows of the edge int array
REW, WEIGHT = range(2)  # rows of the edge float array
ONEXT, OPREV, INEXT, IPREV = range(4)  # rows of the edge link array
OUT, IN = range(2)  # rows of the node head array
_MIX = np.uint64(0x9E3779B97F4A7C15)
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)  # the index of a single set bit, by a de Bruijn sequence
_BIT = np.zeros(64, dtype=np.int64)
_BIT[[((1 << i) * int(_DEBRUIJN) % 2**64) >> 58 for i in range(64)]] = np.arange(64)


def table_size(edge_capacity: int) -> int:
    """Lookup table slots: the power of two >= 1.5 x edge capacity (load factor <= 2/3)."""
    return 1 << max(3, math.ceil(math.log2(1.5 * edge_capacity + 1)))


# ------------------------------------------------------------------ distances
@njit(cache=True)
def rerank(queries, cand, keys):
    """Exact float64 squared distances of candidate ids (-1: inf) to each query, ascending (stable: an
    insertion sort, k is small)."""
    B, k = cand.shape
    ids = np.empty((B, k), dtype=np.int64)
    d2 = np.empty((B, k))
    buf = np.empty(queries.shape[1])
    h64 = np.empty(queries.shape[1])
    for b in range(B):
        for j in range(queries.shape[1]):
            h64[j] = np.float64(queries[b, j])
        for j in range(k):
            c = cand[b, j]
            x = sqdist(keys[c], h64, buf) if c >= 0 else np.inf
            i = j
            while i > 0 and d2[b, i - 1] > x:
                ids[b, i], d2[b, i] = ids[b, i - 1], d2[b, i - 1]
                i -= 1
            ids[b, i], d2[b, i] = c, x
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
def _lru_unlink(v, nodes):
    lru, ends, capacity = nodes[8], nodes[9], nodes[7]
    older, newer = lru[0, v], lru[1, v]
    if older >= 0:
        lru[1, older] = newer
    else:
        ends[0, v // capacity] = newer
    if newer >= 0:
        lru[0, newer] = older
    else:
        ends[1, v // capacity] = older


@njit(cache=True)
def _lru_append(v, nodes):
    """Make v the most recently used node of its table (v must not be listed)."""
    lru, ends, capacity = nodes[8], nodes[9], nodes[7]
    t = v // capacity
    last = ends[1, t]
    lru[0, v], lru[1, v] = last, -1
    if last >= 0:
        lru[1, last] = v
    else:
        ends[0, t] = v
    ends[1, t] = v


@njit(cache=True)
def _mark_dirty(v, nodes):
    dirty, ids, count = nodes[10], nodes[11], nodes[12]
    if not dirty[v]:
        dirty[v] = True
        ids[count[0]] = v
        count[0] += 1


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
    _lru_unlink(v, nodes)
    grid_remove(v, nodes[13])
    _mark_dirty(v, nodes)


@njit(cache=True)
def evict_oldest(table, count, nodes, edges):
    """Evict the `count` least recently used nodes of `table`."""
    ends = nodes[9]
    for _ in range(count):
        evict_node(ends[0, table], nodes, edges)


@njit(cache=True)
def place_nodes(ids, keys, clock, nodes):
    """New nodes `ids` (free slots, ascending: equal stamps are ordered by id) with their keys, one visit."""
    node_keys, visits, last, alive = nodes[0], nodes[1], nodes[2], nodes[3]
    for i in range(ids.size):
        v = ids[i]
        for j in range(keys.shape[1]):
            node_keys[v, j] = keys[i, j]
        visits[v], last[v], alive[v] = 1, clock, True
        nodes[6][v] = np.inf  # never indexed
        _lru_append(v, nodes)
        grid_add(v, node_keys[v], nodes[13])
        _mark_dirty(v, nodes)


@njit(cache=True)
def _from_candidates(h64, table, cand, cand_d2, floor, th, nodes, buf):
    """The nearest node of `table` to h64 (ties: lowest id) and its squared distance, exact whenever it is
    within `th`, from candidates searched before the episode: `cand` / `cand_d2`, ids ascending by exact
    squared distance (-1 pads), and `floor`, a lower bound of the squared distance of every other node that
    the search saw.

    Precondition: ``dirty`` was empty at the search, so the dirty nodes are exactly those this episode
    changed (merged, inserted, evicted). An untouched candidate kept its key and distance; touched nodes are
    compared exactly; any other node lies at least `floor` away. Only if that bound does not rule the others
    out (all candidates touched and the floor within reach) does the grid decide, exactly."""
    keys, alive, capacity, dirty, dirty_ids, dirty_count = nodes[0], nodes[3], nodes[7], nodes[10], nodes[11], \
        nodes[12]
    best, best_d2 = -1, np.inf
    for j in range(cand.size):
        c = cand[j]
        if c < 0 or cand_d2[j] > best_d2:
            break
        if not dirty[c] and (cand_d2[j] < best_d2 or c < best):
            best, best_d2 = c, cand_d2[j]
    first, end = table * capacity, (table + 1) * capacity
    for t in range(dirty_count[0]):
        v = dirty_ids[t]
        if first <= v < end and alive[v]:
            d2 = sqdist(keys[v], h64, buf)
            if d2 < best_d2 or (d2 == best_d2 and v < best):
                best, best_d2 = v, d2
    if floor <= best_d2 and floor < th * th * (1.0 + 1e-9):
        return grid_nearest(h64, table, keys, alive, nodes[13], buf)
    return best, best_d2


@njit(cache=True)
def write_steps(tables, keys, clocks, th, by_grid, cand, cand_d2, floor, nodes, edges, out):
    """Sequential merge-or-insert of every step into the table `tables[i]`, node ids into `out`.

    Each step takes the nearest node of its table (exact within `th`) from the grid (``by_grid[i]``) or from
    its row of candidates (``_from_candidates``; rows of grid steps are ignored): merge if it is closer than
    `th`, else insert, evicting the least recently used node of a full table. A step whose node is evicted
    later in the episode (only if a table is smaller than the episode) gets -1."""
    node_keys, visits, last, alive, free, num_free, drift, grid = (nodes[0], nodes[1], nodes[2], nodes[3],
                                                                   nodes[4], nodes[5], nodes[6], nodes[13])
    dim = keys.shape[1]
    h64 = np.empty(dim)
    buf = np.empty(dim)
    for i in range(tables.size):
        table = tables[i]
        for j in range(dim):
            h64[j] = np.float64(keys[i, j])
        if by_grid[i]:
            best, best_d2 = grid_nearest(h64, table, node_keys, alive, grid, buf)
        else:
            best, best_d2 = _from_candidates(h64, table, cand[i], cand_d2[i], floor[i], th, nodes, buf)
        d = math.sqrt(best_d2)
        if d < th:  # merge: slow key drift towards the new state
            moved = 0.0
            for j in range(dim):
                old = node_keys[best, j]
                node_keys[best, j] = np.float32((np.float64(old) + d * h64[j]) / (1.0 + d))
                moved += (np.float64(node_keys[best, j]) - np.float64(old)) ** 2
            drift[best] += math.sqrt(moved)
            visits[best] += 1
            grid_move(best, node_keys[best], grid)
            _lru_unlink(best, nodes)
        else:
            if num_free[table] == 0:
                victim = nodes[9][0, table]
                if last[victim] >= clocks[0]:  # written earlier in this episode
                    for j in range(i):
                        if out[j] == victim:
                            out[j] = -1
                evict_node(victim, nodes, edges)
            num_free[table] -= 1
            best = free[table, num_free[table]]
            for j in range(dim):
                node_keys[best, j] = keys[i, j]
            visits[best] = 1
            alive[best] = True
            drift[best] = np.inf  # never indexed
            grid_add(best, node_keys[best], grid)
        last[best] = clocks[i]
        _lru_append(best, nodes)
        _mark_dirty(best, nodes)
        out[i] = best


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
    out = np.empty(u.size, dtype=np.int64)
    for i in range(u.size):
        out[i] = -1
        e = heads[OUT, u[i]]
        while e >= 0:
            if ints[DST, e] == v[i]:
                b = out[i]
                if b < 0 or floats[REW, e] > floats[REW, b] or (floats[REW, e] == floats[REW, b] and e < b):
                    out[i] = e
            e = links[ONEXT, e]
    return out


@njit(cache=True)
def multi_bfs(sources, src, dst, n):
    """Breadth-first search from every source at once over the edges src -> dst of n nodes: predecessors
    [n, len(sources)] (int32, -1: not reached or a source), each column a BFS tree of its source.

    Up to 64 searches share one pass (multi-source BFS): a node holds a bit mask of the searches that reached
    it, and its out-edges are scanned once per level for all the searches whose frontier it is in, instead of
    once per search. Each level scans the frontier in id order (nearby ids are often neighbours: cache hits)."""
    indptr = np.zeros(n + 1, dtype=np.int64)  # CSR by counting sort
    for u in src:
        indptr[u + 1] += 1
    for u in range(n):
        indptr[u + 1] += indptr[u]
    fill = indptr[:-1].copy()
    succ = np.empty(src.size, dtype=np.int64)
    for i in range(src.size):
        succ[fill[src[i]]] = dst[i]
        fill[src[i]] += 1
    pred = np.empty((n, sources.size), dtype=np.int32)
    for v in range(n):
        for j in range(sources.size):
            pred[v, j] = -1
    seen = np.zeros(n, dtype=np.uint64)
    front = np.zeros(n, dtype=np.uint64)
    nxt = np.zeros(n, dtype=np.uint64)
    for first in range(0, sources.size, 64):
        seen[:] = 0
        lo, hi = n, 0  # the frontier lies in [lo, hi)
        for b in range(min(64, sources.size - first)):
            s = sources[first + b]
            seen[s] |= np.uint64(1) << np.uint64(b)
            front[s] |= np.uint64(1) << np.uint64(b)
            lo, hi = min(lo, s), max(hi, s + 1)
        while lo < hi:
            next_lo, next_hi = n, 0
            for u in range(lo, hi):
                f = front[u]
                if f == 0:
                    continue
                front[u] = 0
                for p in range(indptr[u], indptr[u + 1]):
                    v = succ[p]
                    new = f & ~seen[v]
                    if new:
                        nxt[v] |= new
                        seen[v] |= new
                        next_lo, next_hi = min(next_lo, v), max(next_hi, v + 1)
                        while new:  # one bit per search, lowest first
                            low = new & (~new + np.uint64(1))
                            pred[v, first + _BIT[(low * _DEBRUIJN) >> np.uint64(58)]] = u
                            new ^= low
            front, nxt = nxt, front  # the old frontier is all zero again
            lo, hi = next_lo, next_hi
    return pred


@njit(cache=True)
def sweep(iterations, gamma, eta, reference_backup, skip_dst, edges, use_max, min_visits):
    """`iterations` synchronous backups of every alive edge not into `skip_dst` (the truncated sentinel):
    w += eta (target - w), target r + gamma V(dst) (reference: V(dst)), V from the weights before the iteration.
    V(u) is the max over the actions taken at u at least `min_visits` times; at a node with none, the
    visit-weighted mean of all its out-edges (the behaviour's value). Edges are gathered once in out-list
    order so that the iterations run over contiguous arrays."""
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
    w, rew, vis = np.empty(m), np.empty(m), np.empty(m)
    act, dst = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64)
    for p in range(m):  # loops, not fancy indexing: cheaper to compile
        e = order[p]
        w[p], rew[p], vis[p] = floats[WEIGHT, e], floats[REW, e], ints[VIS, e]
        act[p], dst[p] = ints[ACT, e], ints[DST, e]
    values = np.zeros(n)
    q, vsum = np.empty(A), np.empty(A)  # vsum: visits of (u, a)
    has = np.empty(A, dtype=np.bool_)
    for _ in range(iterations):
        for o in range(n_own):
            q[:] = 0.0
            vsum[:] = 0.0
            has[:] = False
            behaviour, visits = 0.0, 0.0
            for p in range(start[o], start[o + 1]):
                a = act[p]
                if use_max:
                    q[a] = w[p] if not has[a] else max(q[a], w[p])
                else:
                    q[a] += w[p] * vis[p]
                vsum[a] += vis[p]
                has[a] = True
                behaviour += w[p] * vis[p]
                visits += vis[p]
            best = -np.inf
            for a in range(A):
                if has[a] and vsum[a] >= min_visits:
                    qa = q[a] if use_max else q[a] / vsum[a]
                    best = max(best, qa)
            values[owners[o]] = best if best > -np.inf else behaviour / visits
        for p in range(m):
            if dst[p] != skip_dst:
                target = values[dst[p]] if reference_backup else rew[p] + gamma * values[dst[p]]
                w[p] += eta * (target - w[p])
    for p in range(m):
        floats[WEIGHT, order[p]] = w[p]


@njit(cache=True)
def all_values(edges, use_max):
    """V of every node slot."""
    n = edges[4].shape[1]
    return node_values(np.arange(n), edges, use_max)
