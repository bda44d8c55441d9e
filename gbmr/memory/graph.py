"""MemoryGraph: the directed memory graph of GQ / GCMR / GBMR, held as arrays.

Nodes and edges are structs of arrays with fixed capacity, alive masks and free lists, so that writes, reads,
critical-node scoring, path search and Bellman backups never go through per-step or per-edge Python (the seed
notes: networkx was "too slow"). Whole-array work is numpy / scipy; the inherently sequential parts (merge-or-insert,
edge updates, evictions) and the per-node walks (node values, reads, sweeps) are numba kernels
(``gbmr.memory.graph_kernels``). Conventions, decided once here:

- **Layout.** ``joint`` (default): one node table; a node is a cluster of states, its out-edges carry any
  action. ``per_action``: one table per action, each with its own ``capacity``; a node lives in the table of
  the action taken, so all its out-edges carry that action. Table ``t`` owns the node ids
  ``[t * capacity, (t + 1) * capacity)``.
- **Distances.** Writes use the Euclidean distance d (not squared): merge when ``d < dist_th`` and move the
  key to ``(key + d * h) / (1 + d)`` (GBMR.md). Reads use the squared distance in the kernel
  ``w_i = 1 / (||h - h_i||^2 + delta)``. Exact distances are computed in float64 from the float32 keys.
- **Search.** Reads need k nearest nodes: each table has a ``KeyIndex`` (``gbmr.memory.knn``;
  ``index="exact"``: torch brute force, ``"hnsw"``: hnswlib, ``"auto"``: HNSW from 1e5 nodes) holding its
  alive node keys. The index only proposes candidates; they are re-ranked by their true keys (exact float64).
  Writes need, per step, the nearest node only if it lies within ``dist_th``, from one of two sources (one
  write loop, ``kernels.write_steps``; ``write_search`` chooses, per table and episode):

  - the **grid**: a ``RadiusGrid`` (``gbmr.memory.radius``), exact whatever the index, updated in the write
    loop itself; cheap while the keys spread over 3 principal directions much wider than ``dist_th``
    (d = 8 random walks: ~10 nodes examined per step), but it degrades towards a scan of the table when they
    do not (real d = 64 embeddings at 5e5 nodes: ~20 ms per step);
  - the **candidates**: before the loop, one batched index search gives the ``_CANDIDATES`` nearest nodes of
    every step (re-ranked exactly); the loop takes the nearest candidate that this episode has not touched,
    compares the nodes it touched exactly, and asks the grid only when every candidate was touched and the
    rest of the table may still be within reach. With the exact index this is exact too: nodes outside the
    candidates are bounded below by the last candidate's distance, less the float32 rounding of the index's
    matmul scores and the index tolerance (``_candidate_floor``). With HNSW it is approximate, as its reads
    are: a step may insert (or merge into a farther node) when HNSW misses its nearest node.

  ``write_search="grid"`` / ``"candidates"`` force a source; ``"auto"`` (default) takes the candidates with
  HNSW, and with the exact index starts on the grid, counts the nodes a grid search examines, and moves a
  table to the batched brute force once they exceed ``_GRID_SHARE`` of its nodes (and ``_MIN_EXAMINED``);
  every ``_PROBE_EVERY`` episodes a few steps go through the grid again to see whether it has become the
  cheaper one. Both exact
  sources give identical graphs, so the choice never changes results. The write loop records
  the nodes it changes; the index takes them in before its next search (``_flush_index``). Merged keys drift
  slowly, and moving a point in HNSW costs about as much as inserting it, so ``index_tolerance`` > 0
  re-indexes a merged node only once its key has moved (summed over merges, an upper bound of the true
  distance) more than ``index_tolerance * dist_th`` since it was last indexed. Consequence: the index ranks
  by keys at most tau = ``index_tolerance * dist_th`` from the true ones, so a returned k-th neighbour is at
  most 2 tau farther than the true k-th (exact index). 0 (default) re-indexes every move: reads are then
  exact with the exact index.
- **Episode ends.** Two sentinel nodes follow the table nodes: ``terminal_node`` and ``truncated_node``. They
  have no key, are never searched, evicted or chosen as critical nodes, and have no out-edges (so V = 0). The
  last step of an episode gets an edge ``node_{T-1} -> terminal_node`` (or ``truncated_node``) labelled
  ``a_{T-1}`` carrying ``r_{T-1}`` and ``R_{T-1}``, so its return counts in Q(node_{T-1}, a_{T-1}) like any
  other edge. Backups target ``r_e + gamma * 0`` on terminal edges and leave truncated edges alone (their
  written return already holds the bootstrap, which the graph cannot recompute).
- **Recency.** ``clock`` ticks once per written step; a merge or insert stamps the node and the edge with it.
  LRU eviction takes the smallest (last_used, id), the head of a per-table recency list (``node_last_used``
  is the state; the list is rebuilt from it on load). Reads do not touch recency: reading never changes
  memory.
- **Edges** are unique per (src, dst, action); an open-addressing hash table over edge ids gives O(1) lookup.
  Per-node doubly linked lists (arrays) of out- and in-edges make evicting a node and all its edges
  O(degree), and give each node's out-edges to reads and backups without any sorted view to rebuild.
- **Node value** Q(u, a): the visit-weighted mean of u's out-edge weights labelled a (``node_value="max"``:
  their max); V(u) = max_a Q(u, a), 0 without out-edges.

Node ids are slots: an evicted node's id is reused by a later insert, so callers that keep node ids (expert
episodes) should keep recent ones; ids of nodes no longer alive are ignored where ids are accepted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import networkx as nx
import numpy as np
from scipy import sparse
from scipy.cluster.vq import kmeans2, vq
from scipy.sparse import csgraph

from gbmr.core.errors import unknown_choice
from gbmr.core.state import to_numpy, to_saveable
from gbmr.memory import graph_kernels as kernels
from gbmr.memory.knn import HNSWIndex, make_index
from gbmr.memory.radius import RadiusGrid

LAYOUTS = ("joint", "per_action")
NODE_VALUES = ("mean", "max")
MISSING = ("zero", "skip")
PATH_SCORES = ("shortest", "reward", "diversity")

WRITE_SEARCHES = ("auto", "grid", "candidates")

_CANDIDATES = 32  # nearest nodes fetched per written step by the candidate search
_GRID_SHARE = 0.1  # auto: a grid search examining more than this share of the table is slower than brute force
_MIN_EXAMINED = 256  # auto: below this many nodes per grid search, its cost does not matter (small tables)
_PROBE_EVERY, _PROBE_STEPS = 16, 4  # auto: episodes between grid probes of a brute-force table, steps probed
_F32_EPS = 2.0**-24  # float32 unit roundoff
_PATH_EPS = 1e-3  # per-edge cost added to normalised path costs: equal scores go to fewer edges
_GNN_WEIGHTS = np.array([1.0, 1.0, 0.5, 0.5])  # value, mean reward, log visits, degree (z-scored)

_NODE_STATE = ("node_keys", "node_visits", "node_last_used", "node_alive", "_node_free", "_node_num_free",
               "_out_head", "_in_head")
_EDGE_STATE = ("edge_src", "edge_dst", "edge_action", "edge_reward", "edge_visits", "edge_weight",
               "edge_last_used", "edge_alive", "_out_next", "_out_prev", "_in_next", "_in_prev", "_edge_free")


class GraphRead(NamedTuple):
    """A kernel read: Q values and, for interpretability, which nodes were retrieved with which weights."""

    q: np.ndarray  # [B, num_actions]
    nodes: np.ndarray  # [B, num_tables, k] neighbour ids, -1 where a table holds fewer than k nodes
    weights: np.ndarray  # [B, num_tables, k] kernel weights w_i (0 where absent)


class MemoryGraph:
    """Capacity-bounded directed memory graph with merge-or-insert writes and vectorised backups."""

    def __init__(self, dim: int, capacity: int, num_actions: int, layout: str = "joint",
                 edge_capacity: int | None = None, dist_th: float = 1.0, eta: float = 0.1,
                 node_value: str = "mean", index: str = "exact", index_tolerance: float = 0.0,
                 index_options: dict[str, Any] | None = None, write_search: str = "auto"):
        """``index`` in {"exact", "hnsw", "auto"}, ``index_tolerance`` (fraction of dist_th, see the module
        notes), ``index_options`` (HNSWIndex keywords: M, ef_construction, ef_search, add_threads, seed) and
        ``write_search`` in {"auto", "grid", "candidates"} choose the nearest-node searches; they never change
        what a read or write means (except that HNSW is approximate)."""
        if layout not in LAYOUTS:
            raise unknown_choice("graph layout", layout, LAYOUTS)
        if node_value not in NODE_VALUES:
            raise unknown_choice("node value", node_value, NODE_VALUES)
        if dim <= 0 or capacity <= 0 or num_actions <= 0:
            raise ValueError("dim, capacity and num_actions must be positive")
        if write_search not in WRITE_SEARCHES:
            raise unknown_choice("write search", write_search, WRITE_SEARCHES)
        if index_tolerance < 0:
            raise ValueError(f"index_tolerance must be >= 0, got {index_tolerance}")
        self.dim, self.capacity, self.num_actions = dim, capacity, num_actions
        self.layout, self.node_value = layout, node_value
        self.dist_th, self.eta = float(dist_th), float(eta)
        self.num_tables = num_actions if layout == "per_action" else 1
        n_real = self.num_tables * capacity
        self.terminal_node, self.truncated_node = n_real, n_real + 1
        self._n_slots = n = n_real + 2
        self.edge_capacity = e = int(edge_capacity or 4 * n_real)

        self.node_keys = np.zeros((n, dim), dtype=np.float32)
        self.node_visits = np.zeros(n, dtype=np.int64)
        self.node_last_used = np.zeros(n, dtype=np.int64)
        self.node_alive = np.zeros(n, dtype=bool)
        self.node_alive[n_real:] = True  # the sentinels
        # free stacks, one per table; the top is at [t, num_free - 1] so the lowest ids are used first
        self._node_free = np.arange(n_real, dtype=np.int64).reshape(self.num_tables, capacity)[:, ::-1].copy()
        self._node_num_free = np.full(self.num_tables, capacity, dtype=np.int64)
        self._heads = np.full((2, n), -1, dtype=np.int64)
        self._out_head, self._in_head = self._heads
        self._drift = np.zeros(n)  # how far each key may have moved since it was indexed (inf: never indexed)
        self._lru = np.full((2, n), -1, dtype=np.int64)  # per-table recency lists: older, newer neighbour
        self._lru_ends = np.full((2, self.num_tables), -1, dtype=np.int64)  # oldest, newest node per table
        self._dirty = np.zeros(n, dtype=bool)  # nodes changed since the index last took them in
        self._dirty_ids = np.zeros(n, dtype=np.int64)
        self._dirty_count = np.zeros(1, dtype=np.int64)
        self._grid = RadiusGrid(self.node_keys, self.dist_th, capacity, self.num_tables)

        self._edge_ints = np.zeros((5, e), dtype=np.int64)
        self.edge_src, self.edge_dst, self.edge_action, self.edge_visits, self.edge_last_used = self._edge_ints
        self._edge_floats = np.zeros((2, e))
        self.edge_reward, self.edge_weight = self._edge_floats
        self.edge_alive = np.zeros(e, dtype=bool)
        self._links = np.full((4, e), -1, dtype=np.int64)
        self._out_next, self._out_prev, self._in_next, self._in_prev = self._links
        self._edge_free = np.arange(e, dtype=np.int64)[::-1].copy()
        self._edge_nfree = np.array([e], dtype=np.int64)
        self._table = np.full(kernels.table_size(e), -1, dtype=np.int64)
        self.clock = 0

        self._nodes = (self.node_keys, self.node_visits, self.node_last_used, self.node_alive, self._node_free,
                       self._node_num_free, self._drift, capacity, self._lru, self._lru_ends, self._dirty,
                       self._dirty_ids, self._dirty_count, self._grid.arrays)
        self._edges = (self._edge_ints, self._edge_floats, self.edge_alive, self._links, self._heads, self._table,
                       self._edge_free, self._edge_nfree, n, num_actions)
        self.index_tolerance = float(index_tolerance)
        self._tau = self.index_tolerance * self.dist_th if index_tolerance > 0 else 0.0  # (0 * inf: 0)
        self._indexes = [make_index(index, capacity, dim, **(index_options or {})) for _ in range(self.num_tables)]
        self._hnsw = isinstance(self._indexes[0], HNSWIndex)
        self.write_search = write_search
        # per table: writes search the candidates (else the grid); episodes since the last grid probe; an upper
        # bound of every key's norm (inserted keys' norms: a merge moves a key between two of them), kept only
        # while the table is on candidates (nan: unknown, recomputed when needed)
        by_candidates = write_search == "candidates" or (write_search == "auto" and self._hnsw)
        self._by_candidates = np.full(self.num_tables, by_candidates)
        self._since_probe = np.zeros(self.num_tables, dtype=np.int64)
        self._key_norm = np.full(self.num_tables, np.nan)

    # ------------------------------------------------------------------ sizes and lookups
    @property
    def num_nodes(self) -> int:
        """Alive table nodes (sentinels not counted)."""
        return int(self.num_tables * self.capacity - self._node_num_free.sum())

    @property
    def _edge_num_free(self) -> int:
        return int(self._edge_nfree[0])

    @property
    def num_edges(self) -> int:
        return self.edge_capacity - self._edge_num_free

    def alive_nodes(self) -> np.ndarray:
        """Ids of alive table nodes, ascending (sentinels excluded)."""
        return np.flatnonzero(self.node_alive[: self.terminal_node])

    def alive_edges(self) -> np.ndarray:
        return np.flatnonzero(self.edge_alive)

    def edge_id(self, src: int, dst: int, action: int) -> int:
        """The edge src -a-> dst, or -1: O(1)."""
        return int(kernels.find_edge(int(src), int(dst), int(action), self._edges))

    # ------------------------------------------------------------------ nearest-node search
    def nearest(self, queries: np.ndarray, table: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest alive nodes of `table` per query: ids (-1 if fewer) and exact squared distances
        (float64, inf if absent), ascending: the table's index proposes, the true keys decide the order."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return kernels.rerank(queries, self._candidates(queries, table, min(k, self.capacity)), self.node_keys)

    def _candidates(self, queries: np.ndarray, table: int, k: int) -> np.ndarray:
        """Node ids [B, k] proposed by the table's index (-1 pads)."""
        self._flush_index()
        slots = self._indexes[table].search(queries, k)[1]
        return np.where(slots >= 0, slots + table * self.capacity, -1)

    def _sync_index(self, nodes: np.ndarray) -> None:
        """Bring the index up to date for `nodes` whose key or aliveness may have changed: dead ones leave it,
        alive ones that moved more than the tolerance (or were never indexed) are (re-)indexed."""
        nodes = np.unique(nodes)
        limit = self._tau
        for table in np.unique(nodes // self.capacity).tolist():
            lo = table * self.capacity
            ids = nodes[(nodes >= lo) & (nodes < lo + self.capacity)]
            alive = self.node_alive[ids]
            stale = ids[alive & (self._drift[ids] > limit)]
            self._indexes[table].remove(ids[~alive] - lo)
            self._indexes[table].add(stale - lo, self.node_keys[stale])
            self._drift[stale] = 0.0

    def _flush_index(self) -> None:
        """Let the indexes take in the nodes that writes changed since the last search."""
        count = int(self._dirty_count[0])
        if count:
            ids = self._dirty_ids[:count].copy()
            self._dirty[ids] = False
            self._dirty_count[0] = 0
            self._sync_index(ids)

    def reindex(self, nodes: np.ndarray | None = None) -> None:
        """Re-index `nodes` (all alive nodes if None, from an empty index) exactly, whatever the tolerance:
        after their keys were changed in place, or after loading a state without the index."""
        self._flush_index()
        if nodes is None:
            for index in self._indexes:
                index.clear()
            nodes = self.alive_nodes()
        nodes = np.asarray(nodes, dtype=np.int64).ravel()
        self._drift[nodes] = np.inf
        self._sync_index(nodes)
        self._key_norm[:] = np.nan

    # ------------------------------------------------------------------ node and edge bookkeeping
    def add_nodes(self, keys: np.ndarray, table: int = 0) -> np.ndarray:
        """Insert nodes without merging (building graphs directly: tests, benchmarks, tabular mazes); evicts
        the least recently used nodes of `table` if it lacks room. Returns the new ids."""
        keys = np.ascontiguousarray(keys, dtype=np.float32).reshape(-1, self.dim)
        n = len(keys)
        if n > self.capacity:
            raise ValueError(f"{n} nodes do not fit a table of capacity {self.capacity}")
        kernels.evict_oldest(table, max(n - int(self._node_num_free[table]), 0), self._nodes, self._edges)
        nf = int(self._node_num_free[table])
        ids = self._node_free[table, nf - n:nf][::-1].copy()  # the evicted slots are on top: all refilled
        self._node_num_free[table] = nf - n
        self.clock += 1
        order = np.argsort(ids)
        kernels.place_nodes(ids[order], keys[order], self.clock, self._nodes)
        self._bound_norms(keys, np.full(n, table))
        return ids

    def add_transitions(self, src: np.ndarray, dst: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                        returns: np.ndarray) -> np.ndarray:
        """Add or update edges src -a-> dst in order (GBMR.md): a new edge takes weight R; an existing one
        moves w += eta (R - w), its reward is a running mean and its visits grow. Returns the edge ids."""
        self.clock += 1
        src, dst, actions = (np.asarray(x, dtype=np.int64).ravel() for x in (src, dst, actions))
        rewards, returns = (np.asarray(x, dtype=np.float64).ravel() for x in (rewards, returns))
        n = len(src)
        if not (len(dst) == len(actions) == len(rewards) == len(returns) == n):
            raise ValueError("src, dst, actions, rewards and returns must have the same length")
        if n and not (self.node_alive[src].all() and self.node_alive[dst].all()):
            raise ValueError("edges must join alive nodes")
        return self._add_edges(src, dst, actions, rewards, returns, np.full(n, self.clock, dtype=np.int64))

    def _add_edges(self, src: np.ndarray, dst: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                   returns: np.ndarray, clocks: np.ndarray) -> np.ndarray:
        """Add or update valid edges, evicting the least recently used edges if there is no room."""
        n = len(src)
        if n > self.edge_capacity:
            raise ValueError(f"{n} edges do not fit edge capacity {self.edge_capacity}")
        if n > self._edge_num_free:  # make room: evict the least recently used edges, oldest first
            ids, need = self.alive_edges(), n - self._edge_num_free
            rank = self.edge_last_used[ids] * self.edge_capacity + ids
            kernels.remove_edges(ids[np.argpartition(rank, need - 1)[:need]], self._edges)
        contiguous = (np.ascontiguousarray(x) for x in (src, dst, actions, rewards, returns, clocks))
        return kernels.add_edges(*contiguous, self.eta, self._edges)

    # ------------------------------------------------------------------ write
    def write_episode(self, keys: np.ndarray, actions: np.ndarray, rewards: np.ndarray, returns: np.ndarray,
                      terminated: bool = True) -> np.ndarray:
        """Merge-or-insert every step's key into the table of its action, then add / update the edges
        node_t -a_t-> node_{t+1} and node_{T-1} -> terminal (or truncated) sentinel.

        Steps are processed one by one, each searching the grid or its candidates (see the module notes).
        Returns each step's node id; -1 for a step whose node was itself evicted later in the episode (only
        if a table is smaller than the episode); its edges are dropped.
        """
        keys = np.ascontiguousarray(keys, dtype=np.float32).reshape(len(keys), self.dim)
        actions = np.asarray(actions, dtype=np.int64)
        rewards, returns = np.asarray(rewards, dtype=np.float64), np.asarray(returns, dtype=np.float64)
        T = len(keys)
        if not (actions.shape == rewards.shape == returns.shape == (T,)):
            raise ValueError("keys [T, dim], actions [T], rewards [T] and returns [T] must agree on T")
        if T and (actions.min() < 0 or actions.max() >= self.num_actions):
            raise ValueError(f"actions must lie in [0, {self.num_actions})")
        nodes = np.full(T, -1, dtype=np.int64)
        if T == 0:
            return nodes
        clocks = self.clock + 1 + np.arange(T)
        tables = actions if self.layout == "per_action" else np.zeros(T, dtype=np.int64)
        self._grid.refit_due()
        by_grid, cand, cand_d2, floor = self._plan_search(keys, tables)
        examined = self._grid.stats[2].copy()
        kernels.write_steps(tables, keys, clocks, self.dist_th, by_grid, cand, cand_d2, floor, self._nodes,
                            self._edges, nodes)
        if not self._hnsw and self._by_candidates.any():
            self._bound_norms(keys, tables)  # after the loop: these keys were compared exactly
        if self.write_search == "auto" and not self._hnsw:
            self._choose_search(tables, by_grid, self._grid.stats[2] - examined)
        self.clock = int(clocks[-1])
        dst = np.empty(T, dtype=np.int64)
        dst[:-1], dst[-1] = nodes[1:], self.terminal_node if terminated else self.truncated_node
        edges = (nodes, dst, actions, rewards, returns, clocks)
        if nodes.min() < 0:  # nodes evicted within the episode lose their edges
            ok = (nodes >= 0) & (dst >= 0)
            edges = tuple(x[ok] for x in edges)
        self._add_edges(*edges)
        return nodes

    def _bound_norms(self, keys: np.ndarray, tables: np.ndarray) -> None:
        """Raise the tables' key norm bounds to cover `keys` (float32 rounding of merges included; nan stays)."""
        if len(keys):
            norms = np.sqrt(np.einsum("ij,ij->i", keys, keys, dtype=np.float64)) * (1.0 + 1e-6)
            if self.num_tables == 1:
                self._key_norm[0] = max(self._key_norm[0], norms.max())
            else:
                np.maximum.at(self._key_norm, tables, norms)

    def _plan_search(self, keys: np.ndarray, tables: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per step: whether it searches the grid, else its candidates (ids, exact squared distances) and the
        floor of the nodes outside them. A table on candidates still sends probe steps to the grid (auto)."""
        T = len(tables)
        by_grid = ~self._by_candidates[tables]
        if by_grid.all():
            return by_grid, np.zeros((T, 0), dtype=np.int64), np.zeros((T, 0)), np.zeros(T)
        k = min(_CANDIDATES, self.capacity)
        cand, cand_d2 = np.full((T, k), -1, dtype=np.int64), np.full((T, k), np.inf)
        floor = np.full(T, np.inf)
        for table in np.unique(tables[~by_grid]).tolist():
            steps = np.flatnonzero(tables == table)
            if self.write_search == "auto" and not self._hnsw:
                self._since_probe[table] += 1
                if self._since_probe[table] >= _PROBE_EVERY:
                    self._since_probe[table] = 0
                    by_grid[steps[np.linspace(0, len(steps) - 1, min(_PROBE_STEPS, len(steps))).astype(int)]] = True
            steps = steps[~by_grid[steps]]
            if steps.size:
                cand[steps], cand_d2[steps] = self.nearest(keys[steps], table, k)
                floor[steps] = self._candidate_floor(keys[steps], cand_d2[steps, -1], table)
        return by_grid, cand, cand_d2, floor

    def _candidate_floor(self, queries: np.ndarray, last_d2: np.ndarray, table: int) -> np.ndarray:
        """A lower bound of the exact squared distance of every alive node of `table` that the index did not
        return, given the last (farthest) candidate's `last_d2` per query (inf: the index returned them all).

        HNSW: the last candidate's distance (a heuristic: HNSW may miss nearer nodes). Exact index: it ranks by
        the float32 scores ``||k||^2 - 2 q.k`` of keys indexed up to tau = ``index_tolerance * dist_th`` from
        the true ones. A score errs by at most E = (d + 3) u (|k| + |q|)^2 (u the float32 unit roundoff: the
        sums of d products, then one addition), so a node left out has an indexed squared distance of at
        least (D_last - tau)^2 - 2 E, and a true distance tau less (twice E, for safety). This needs IEEE
        float32 matmuls (no TF32)."""
        if self._hnsw:
            return last_d2
        if np.isnan(self._key_norm[table]):
            lo = table * self.capacity
            keys = self.node_keys[lo:lo + self.capacity][self.node_alive[lo:lo + self.capacity]]
            self._key_norm[table] = 0.0
            self._bound_norms(keys, np.full(len(keys), table))
        q = np.sqrt((queries.astype(np.float64) ** 2).sum(1))
        err = 4.0 * (self.dim + 3) * _F32_EPS * (self._key_norm[table] + q) ** 2
        tau = self._tau
        with np.errstate(invalid="ignore"):  # inf - inf where all nodes were returned
            indexed = np.maximum(np.sqrt(last_d2) - tau, 0.0) ** 2 - err
        bound = np.maximum(np.sqrt(np.maximum(indexed, 0.0)) - tau, 0.0) ** 2
        return np.where(np.isinf(last_d2), np.inf, bound)

    def _choose_search(self, tables: np.ndarray, by_grid: np.ndarray, examined: np.ndarray) -> None:
        """Auto with the exact index: from the nodes the grid examined per search in this episode, choose
        each table's source for the next episodes (brute force scans every node, at about 1 / _GRID_SHARE
        times the speed of a grid examination)."""
        searches = np.bincount(tables[by_grid], minlength=self.num_tables)
        probed = searches > 0
        size = self.capacity - self._node_num_free
        self._by_candidates[probed] = examined[probed] > np.maximum(_GRID_SHARE * size[probed], _MIN_EXAMINED) \
            * searches[probed]
        self._since_probe[probed] = 0
        self._key_norm[~self._by_candidates] = np.nan  # not kept up while on the grid

    # ------------------------------------------------------------------ node values
    def node_q(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Q(u, a) for the given nodes as [n, num_actions], and the mask of (u, a) with any out-edge
        labelled a (Q is 0 where the mask is False)."""
        nodes = np.ascontiguousarray(nodes, dtype=np.int64).ravel()
        return kernels.node_q(nodes, self._edges, self.node_value == "max")

    def node_values(self, nodes: np.ndarray) -> np.ndarray:
        """V(u) = max_a Q(u, a); 0 for a node with no out-edge."""
        nodes = np.ascontiguousarray(nodes, dtype=np.int64).ravel()
        return kernels.node_values(nodes, self._edges, self.node_value == "max")

    # ------------------------------------------------------------------ read
    def read(self, query_keys: np.ndarray, k: int, delta: float = 1e-3, missing: str = "zero") -> GraphRead:
        """Kernel lookup Q(h, a) = sum_i w_i Q(u_i, a) / sum_i w_i over the k nearest alive nodes (of the
        table of a), w_i = 1 / (||h - h_i||^2 + delta). A node without an out-edge labelled a contributes 0
        (`missing="zero"`, the reference) or is left out of that action's weights (`"skip"`; all left out:
        0). A table holding fewer than k nodes reads 0."""
        if missing not in MISSING:
            raise unknown_choice("missing-value rule", missing, MISSING)
        queries = np.ascontiguousarray(query_keys, dtype=np.float32).reshape(-1, self.dim)
        B, A = len(queries), self.num_actions
        q = np.zeros((B, A))
        nodes = np.full((B, self.num_tables, k), -1, dtype=np.int64)
        weights = np.zeros((B, self.num_tables, k))
        for table in range(self.num_tables):
            if B == 0 or self.capacity - self._node_num_free[table] < k:
                continue
            vals, nodes[:, table], weights[:, table] = kernels.read(
                queries, self._candidates(queries, table, k), self.node_keys, delta, self._edges,
                self.node_value == "max", missing == "skip")
            if self.layout == "per_action":
                q[:, table] = vals[:, table]
            else:
                q = vals
        return GraphRead(q, nodes, weights)

    # ------------------------------------------------------------------ critical nodes
    def critical_nodes_crossing(self, episodes: list[np.ndarray], episode_rewards: list[np.ndarray],
                                episode_returns: list[float], top: int = 10) -> np.ndarray:
        """The reference default: take the `top` episodes by return, reduce each to the nodes where the
        reward was non-zero; nodes in two or more of them are critical. Ascending ids."""
        best = np.argsort(-np.asarray(episode_returns, dtype=np.float64), kind="stable")[:top]
        sets = [np.unique(np.asarray(episodes[i])[(np.asarray(episode_rewards[i]) != 0)]) for i in best]
        found = np.concatenate(sets + [np.zeros(0, dtype=np.int64)]).astype(np.int64)
        found = found[(found >= 0) & (found < self.terminal_node)]
        ids, counts = np.unique(found[self.node_alive[found]], return_counts=True)
        return ids[counts >= 2]

    def _degrees(self) -> np.ndarray:
        ids = self.alive_edges()
        n = self._n_slots
        return (np.bincount(self.edge_src[ids], minlength=n) + np.bincount(self.edge_dst[ids], minlength=n))

    def critical_nodes_degree(self, k: int) -> np.ndarray:
        """Top k by s(u) = (in_deg + out_deg) / sqrt(visits/N + 1e-6), N = total visits of alive nodes:
        busy junctions that are rarely visited, i.e. bottlenecks. Best first."""
        ids = self.alive_nodes()
        visits = self.node_visits[ids].astype(np.float64)
        score = self._degrees()[ids] / np.sqrt(visits / max(visits.sum(), 1.0) + 1e-6)
        return ids[np.argsort(-score, kind="stable")[:k]]

    def critical_nodes_cluster(self, k: int, seed: int = 0) -> np.ndarray:
        """GCMR: k-means (k-means++ init) on the node keys; the node nearest each centre. Ascending ids."""
        ids = self.alive_nodes()
        if ids.size <= k:
            return ids
        keys = self.node_keys[ids].astype(np.float64)
        centres, _ = kmeans2(keys, k, minit="++", rng=np.random.default_rng(seed))
        nearest, _ = vq(centres, keys)  # for each centre, the index of the nearest key
        return np.unique(ids[nearest])

    def critical_nodes_gnn(self, k: int, hops: int = 2) -> np.ndarray:
        """Seed 001's abstract graph with fixed weights: node features (value, visit-weighted mean out-edge
        reward, log visits, degree), z-scored over alive nodes, averaged `hops` times over each node's
        closed undirected neighbourhood, scored with weights (1, 1, 0.5, 0.5); top k, best first."""
        ids = self.alive_nodes()
        if ids.size == 0:
            return ids
        n, e = self._n_slots, self.alive_edges()
        src, dst = self.edge_src[e], self.edge_dst[e]
        vis = self.edge_visits[e].astype(np.float64)
        rsum = np.bincount(src, self.edge_reward[e] * vis, minlength=n)
        vsum = np.bincount(src, vis, minlength=n)
        feats = np.stack([
            kernels.all_values(self._edges, self.node_value == "max"),
            np.divide(rsum, vsum, out=np.zeros(n), where=vsum > 0),
            np.log1p(self.node_visits.astype(np.float64)),
            self._degrees().astype(np.float64)], 1)[ids]
        std = feats.std(0)
        x = np.zeros((n, feats.shape[1]))
        x[ids] = np.divide(feats - feats.mean(0), std, out=np.zeros_like(feats), where=std > 0)
        real = dst < self.terminal_node
        adj = sparse.coo_matrix((np.ones(real.sum()), (src[real], dst[real])), shape=(n, n)).tocsr()
        adj = ((adj + adj.T + sparse.diags(self.node_alive.astype(np.float64))) > 0).astype(np.float64)
        deg = np.asarray(adj.sum(1)).ravel()
        prop = sparse.diags(np.divide(1.0, deg, out=np.zeros(n), where=deg > 0)) @ adj
        for _ in range(hops):
            x = prop @ x
        score = x[ids] @ _GNN_WEIGHTS
        return ids[np.argsort(-score, kind="stable")[:k]]

    # ------------------------------------------------------------------ paths
    def reconstruct_paths(self, critical: np.ndarray, path_score: str = "shortest") -> list[np.ndarray]:
        """One path (edge ids, first edge first) for every ordered pair of distinct critical nodes joined by
        a path. Between two consecutive nodes a path takes their highest-reward edge (ties: lowest id).
        `path_score`:

        - ``shortest``: fewest edges; one multi-source BFS from all critical nodes at once (numba; on 100k
          nodes / 400k edges and 20 sources, 20 scipy BFS calls take ~4x longer and
          csgraph.shortest_path(unweighted=True, indices=...) ~20x longer).
        - ``reward``: approximately the largest cumulative reward: least total cost (Dijkstra from all
          critical nodes at once) where an edge costs its reward shortfall from the best edge reward,
          normalised to [0, 1], plus 1e-3 (ties -> fewer edges). Exact max-reward paths are NP-hard.
        - ``diversity``: approximately the most distinct states: consecutive states should differ as much as
          possible, so an edge costs exp(-||key_u - key_v|| / l), l the mean edge length in key space; a
          route of several large state changes can beat a shorter one of small changes.

        Paths from a shortest-path tree never repeat a node.
        """
        if path_score not in PATH_SCORES:
            raise unknown_choice("path score", path_score, PATH_SCORES)
        crit = np.unique(np.asarray(critical, dtype=np.int64))
        crit = crit[(crit >= 0) & (crit < self.terminal_node)]
        crit = crit[self.node_alive[crit]]
        e = self.alive_edges()
        e = e[self.edge_dst[e] < self.terminal_node]
        if crit.size < 2 or e.size == 0:
            return []
        n, src, dst = self._n_slots, self.edge_src[e], self.edge_dst[e]
        if path_score == "shortest":
            pred = kernels.multi_bfs(crit, src, dst, n).T
        else:
            if path_score == "reward":
                reward = self.edge_reward[e]
                span = reward.max() - reward.min()
                cost = (reward.max() - reward) / (span if span > 0 else 1.0) + _PATH_EPS
            else:
                keys = self.node_keys.astype(np.float64)
                length = np.sqrt(((keys[src] - keys[dst]) ** 2).sum(1))
                mean = length.mean()
                cost = np.exp(-length / (mean if mean > 0 else 1.0)) + 1e-12  # csgraph drops exact zeros
            pairs, inverse = np.unique(src * n + dst, return_inverse=True)
            best = np.full(pairs.size, np.inf)
            np.minimum.at(best, inverse, cost)  # parallel edges: the cheapest (highest-reward) one
            graph = sparse.csr_matrix((best, (pairs // n, pairs % n)), shape=(n, n))
            pred = csgraph.dijkstra(graph, directed=True, indices=crit, return_predecessors=True)[1]
        rows, cols = np.nonzero((pred[:, crit] >= 0) & (crit[:, None] != crit[None, :]))
        if rows.size == 0:
            return []
        start, cur = crit[rows], crit[cols]
        seq = [cur]
        while (cur != start).any():  # walk all paths back at once, one node per iteration
            cur = np.where(cur != start, pred[rows, cur], cur)
            seq.append(cur)
        seq = np.stack(seq[::-1], 1)  # [P, L+1] node sequences, left-padded by repeating the source
        u, v = seq[:, :-1], seq[:, 1:]
        real = u != v
        edges = np.full(u.shape, -1, dtype=np.int64)
        edges[real] = self._best_edges(u[real], v[real])
        return [row[row >= 0] for row in edges]

    def _best_edges(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """For each pair, the highest-reward alive edge u -> v (any action; ties: lowest id), or -1."""
        return kernels.best_edges(np.ascontiguousarray(u), np.ascontiguousarray(v), self._edges)

    # ------------------------------------------------------------------ backups
    def _backup(self, edges: np.ndarray, values: np.ndarray, gamma: float, eta: float,
                reference_backup: bool) -> None:
        """w_e += eta (target - w_e) given V(dst_e) in `values`; target r_e + gamma V or, as in the reference
        code, V alone."""
        target = values if reference_backup else self.edge_reward[edges] + gamma * values
        self.edge_weight[edges] += eta * (target - self.edge_weight[edges])

    def backup_paths(self, paths: list[np.ndarray], gamma: float, eta: float,
                     reference_backup: bool = False) -> None:
        """Back up along every path, last edge first: w_e += eta (r_e + gamma V(dst_e) - w_e).

        All paths go together, aligned at their last edge: step p updates the p-th-from-last edge of every
        path at once from the values before that step (an edge shared by several paths at the same step is
        updated once). The reference processes paths one after another; only the order differs."""
        paths = [np.asarray(p, dtype=np.int64) for p in paths if len(p)]
        if not paths:
            return
        lens = np.array([len(p) for p in paths])
        width = int(lens.max())
        grid = np.full((len(paths), width), -1, dtype=np.int64)
        rows = np.repeat(np.arange(len(paths)), lens)
        cols = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(width - lens, lens)
        grid[rows, cols] = np.concatenate(paths)
        for c in range(width - 1, -1, -1):
            edges = np.unique(grid[:, c])
            edges = edges[edges >= 0]
            edges = edges[self.edge_alive[edges] & (self.edge_dst[edges] != self.truncated_node)]
            dst, inverse = np.unique(self.edge_dst[edges], return_inverse=True)
            self._backup(edges, self.node_values(dst)[inverse], gamma, eta, reference_backup)

    def sweep(self, gamma: float, eta: float, iterations: int = 1, reference_backup: bool = False,
              min_visits: int = 1) -> None:
        """The same backup on all edges at once, `iterations` times (value iteration on the graph; each
        iteration uses the values from before it). Edges into the truncated sentinel are left alone.

        With `min_visits` > 1, V(u) maximises only over the actions taken at u that often, and a node with
        none takes the visit-weighted mean of its out-edges: the max over one-sample estimates of a
        stochastic world is biased upwards, and chaining it along paths compounds the bias."""
        if min_visits < 1:
            raise ValueError(f"min_visits must be >= 1, got {min_visits}")
        kernels.sweep(int(iterations), float(gamma), float(eta), bool(reference_backup), self.truncated_node,
                      self._edges, self.node_value == "max", int(min_visits))

    # ------------------------------------------------------------------ persistence and views
    def _config(self) -> dict[str, Any]:
        """What a saved state must agree on (the index is a search structure: it may differ, see load)."""
        return {"dim": self.dim, "capacity": self.capacity, "num_actions": self.num_actions,
                "layout": self.layout, "edge_capacity": self.edge_capacity, "dist_th": self.dist_th,
                "eta": self.eta, "node_value": self.node_value}

    def _index_state(self) -> dict[str, Any] | None:
        """The indexes as they are, when rebuilding them from the keys would not give the same reads:
        HNSW (its graph depends on the insertion history) or a tolerance (indexed keys lag the true ones)."""
        hnsw = isinstance(self._indexes[0], HNSWIndex)
        self._flush_index()
        if not hnsw and self.index_tolerance == 0:
            return None
        return {"hnsw": hnsw, "drift": self._drift.copy(), "tables": [index.state_dict() for index in self._indexes]}

    def state_dict(self) -> dict[str, Any]:
        """Everything as tensors / plain values (torch.load(weights_only=True) accepts it); a copy."""
        arrays = {name: getattr(self, name).copy() for name in _NODE_STATE + _EDGE_STATE}
        return to_saveable({"config": self._config(), "clock": self.clock, "edge_num_free": self._edge_num_free,
                            "arrays": arrays, "index": self._index_state()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state; reads are then identical. The indexes are restored as saved if they are of this
        graph's kind, else rebuilt from the keys (exactly; slow for HNSW at large sizes)."""
        if state["config"] != self._config():
            raise ValueError(f"graph state was saved with {state['config']}, this graph is {self._config()}")
        for name, value in to_numpy(state["arrays"]).items():
            getattr(self, name)[...] = value
        self.clock, self._edge_nfree[0] = int(state["clock"]), int(state["edge_num_free"])
        kernels.rebuild_table(self._edges)
        self._rebuild_lru()
        self._grid.rebuild(self.node_alive)
        self._key_norm[:] = np.nan
        self._dirty[:] = False
        self._dirty_count[0] = 0
        saved = state.get("index")
        if saved is not None and saved["hnsw"] == isinstance(self._indexes[0], HNSWIndex):
            for index, table_state in zip(self._indexes, saved["tables"], strict=True):
                index.load_state_dict(table_state)
            self._drift[:] = to_numpy(saved["drift"])
        else:
            self.reindex()

    def _rebuild_lru(self) -> None:
        """The recency lists from node_last_used (ties: lower id older)."""
        self._lru[:] = -1
        self._lru_ends[:] = -1
        for table in range(self.num_tables):
            lo = table * self.capacity
            ids = np.flatnonzero(self.node_alive[lo:lo + self.capacity]) + lo
            if ids.size:
                ids = ids[np.argsort(self.node_last_used[ids], kind="stable")]
                self._lru[0, ids[1:]], self._lru[1, ids[:-1]] = ids[:-1], ids[1:]
                self._lru_ends[:, table] = ids[0], ids[-1]

    def to_networkx(self) -> nx.MultiDiGraph:
        """A networkx copy for plots and tests (edge keys are edge ids); not for the hot path."""
        graph = nx.MultiDiGraph()
        for v in self.alive_nodes().tolist():
            graph.add_node(v, key=self.node_keys[v].copy(), visits=int(self.node_visits[v]))
        graph.add_node(self.terminal_node, sentinel="terminal")
        graph.add_node(self.truncated_node, sentinel="truncated")
        for e in self.alive_edges().tolist():
            graph.add_edge(int(self.edge_src[e]), int(self.edge_dst[e]), key=e,
                           action=int(self.edge_action[e]), reward=float(self.edge_reward[e]),
                           weight=float(self.edge_weight[e]), visits=int(self.edge_visits[e]))
        return graph
