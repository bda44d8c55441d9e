"""MemoryGraph against hand-computed values, a naive sequential writer and networkx / plain-Python oracles."""

from __future__ import annotations

import io
import math

import networkx as nx
import numpy as np
import pytest
import torch

from gbmr.core.errors import GbmrError
from gbmr.memory import graph as graph_module
from gbmr.memory import radius as radius_module
from gbmr.memory.graph import _PROBE_EVERY, MemoryGraph
from gbmr.memory.radius import RadiusGrid

# ---------------------------------------------------------------------------- helpers


def edge_table(g: MemoryGraph) -> dict[tuple[int, int, int], tuple[float, float, int]]:
    e = g.alive_edges()
    return {(int(g.edge_src[i]), int(g.edge_dst[i]), int(g.edge_action[i])):
            (float(g.edge_weight[i]), float(g.edge_reward[i]), int(g.edge_visits[i])) for i in e}


def check_invariants(g: MemoryGraph) -> None:
    """Capacity, no dangling edge, no stale lookup entry, linked lists that list exactly the alive edges."""
    per_table = g.node_alive[: g.terminal_node].reshape(g.num_tables, g.capacity).sum(1)
    assert (per_table <= g.capacity).all() and per_table.sum() == g.num_nodes
    assert g.num_edges <= g.edge_capacity
    e = g.alive_edges()
    assert len(e) == g.num_edges
    assert g.node_alive[g.edge_src[e]].all() and g.node_alive[g.edge_dst[e]].all()
    assert sorted(g._table[g._table >= 0].tolist()) == e.tolist()  # the lookup table holds the alive edges
    for i in e.tolist():
        assert g.edge_id(g.edge_src[i], g.edge_dst[i], g.edge_action[i]) == i
    for head, nxt, end in ((g._out_head, g._out_next, g.edge_src), (g._in_head, g._in_next, g.edge_dst)):
        listed = []
        for v in range(len(head)):
            i = head[v]
            while i >= 0:
                assert end[i] == v and g.edge_alive[i]
                listed.append(int(i))
                i = nxt[i]
        assert sorted(listed) == sorted(e.tolist())
    free = {int(t): g._node_free[t, : g._node_num_free[t]] for t in range(g.num_tables)}
    for t, slots in free.items():
        assert not g.node_alive[slots].any() and len(set(slots.tolist())) == len(slots)
        assert ((slots // g.capacity) == t).all()


class NaiveGraph:
    """The write rule of GBMR.md done one step at a time with exhaustive search and a dict of edges, using the
    same slot policy (free stack, lowest ids first, evicted slot reused first) so ids can be compared."""

    def __init__(self, dim, capacity, num_actions, layout, dist_th, eta):
        self.tables = num_actions if layout == "per_action" else 1
        self.cap, self.th, self.eta = capacity, dist_th, eta
        self.keys = np.zeros((self.tables * capacity, dim), np.float32)
        self.alive = np.zeros(self.tables * capacity, bool)
        self.visits = np.zeros(self.tables * capacity, np.int64)
        self.last = np.zeros(self.tables * capacity, np.int64)
        self.free = [list(range(t * capacity, (t + 1) * capacity))[::-1] for t in range(self.tables)]
        self.edges: dict[tuple[int, int, int], list] = {}
        self.clock = 0
        self.terminal = self.tables * capacity

    def write(self, keys, actions, rewards, returns):
        nodes: list[int] = []
        for h, a in zip(keys, actions, strict=True):
            self.clock += 1
            table = int(a) if self.tables > 1 else 0
            ids = [i for i in range(table * self.cap, (table + 1) * self.cap) if self.alive[i]]
            h64 = h.astype(np.float64)
            d = math.inf
            if ids:
                d2 = ((self.keys[ids].astype(np.float64) - h64) ** 2).sum(1)
                best, d = ids[int(np.argmin(d2))], math.sqrt(d2.min())
            if d < self.th:
                self.keys[best] = (self.keys[best].astype(np.float64) + d * h64) / (1.0 + d)
                self.visits[best] += 1
            else:
                if not self.free[table]:
                    victim = min(ids, key=lambda i: (self.last[i], i))
                    self.alive[victim] = False
                    self.edges = {k: v for k, v in self.edges.items() if victim not in k[:2]}
                    self.free[table].append(victim)
                    nodes = [-1 if n == victim else n for n in nodes]
                best = self.free[table].pop()
                self.keys[best], self.visits[best], self.alive[best] = h, 1, True
            self.last[best] = self.clock
            nodes.append(best)
        for t, (s, a) in enumerate(zip(nodes, actions, strict=True)):
            d = nodes[t + 1] if t + 1 < len(nodes) else self.terminal
            if s < 0 or d < 0:
                continue
            key = (s, d, int(a))
            if key not in self.edges:
                self.edges[key] = [float(returns[t]), float(rewards[t]), 1]
            else:
                w, r, v = self.edges[key]
                self.edges[key] = [w + self.eta * (returns[t] - w), r + (rewards[t] - r) / (v + 1), v + 1]
        return np.array(nodes)


def random_episode(rng, T, dim, num_actions, scale=0.3):
    keys = np.cumsum(rng.normal(0, scale, (T, dim)), 0).astype(np.float32)
    actions = rng.integers(0, num_actions, T)
    rewards = rng.integers(-1, 2, T).astype(np.float64)
    returns = np.cumsum(rewards[::-1])[::-1].copy()
    return keys, actions, rewards, returns


def random_graph(seed, n=30, m=150, num_actions=3, node_value="mean"):
    """Nodes with random keys and random edges (repeats give visits > 1), some into the sentinels."""
    rng = np.random.default_rng(seed)
    g = MemoryGraph(dim=4, capacity=n, num_actions=num_actions, node_value=node_value, eta=0.3,
                    edge_capacity=4 * m)
    ids = g.add_nodes(rng.normal(size=(n, 4)))
    src = rng.choice(ids, m)
    dst = rng.choice(np.append(ids, [g.terminal_node, g.truncated_node]), m)
    g.add_transitions(src, dst, rng.integers(0, num_actions, m), rng.normal(size=m), rng.normal(size=m) * 3)
    return g


def oracle_values(graph: nx.MultiDiGraph, weights: dict[int, float], node_value: str) -> dict[int, float]:
    """V(u) = max_a Q(u, a) from a networkx copy, Q the visit-weighted mean (or max) per action."""
    values = {}
    for u in graph.nodes:
        per_action: dict[int, list[tuple[float, int]]] = {}
        for _, _, key, data in graph.out_edges(u, keys=True, data=True):
            per_action.setdefault(data["action"], []).append((weights[key], data["visits"]))
        qs = [max(w for w, _ in wv) if node_value == "max"
              else sum(w * v for w, v in wv) / sum(v for _, v in wv) for wv in per_action.values()]
        values[u] = max(qs) if qs else 0.0
    return values


def oracle_backup(graph, weights, edges, gamma, eta, node_value, reference_backup, truncated):
    values = oracle_values(graph, weights, node_value)
    new = {}
    for e in edges:
        u, v, data = next((u, v, d) for u, v, k, d in graph.edges(keys=True, data=True) if k == e)
        if v == truncated:
            continue
        target = values[v] if reference_backup else data["reward"] + gamma * values[v]
        new[e] = weights[e] + eta * (target - weights[e])
    weights.update(new)


# ---------------------------------------------------------------------------- reads


def three_node_graph(**kwargs) -> MemoryGraph:
    g = MemoryGraph(dim=2, capacity=5, num_actions=2, **kwargs)
    n = g.add_nodes(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    T = g.terminal_node
    g.add_transitions([n[0], n[1], n[1], n[2]], [T, T, n[2], T], [0, 0, 1, 1], [0, 0, 0, 0],
                      [1.0, 3.0, 2.0, 5.0])
    return g


def test_kernel_read_three_nodes_by_hand():
    g = three_node_graph()
    out = g.read(np.array([[0.5, 0.0]]), k=3, delta=1e-3)
    w = np.array([1 / 0.251, 1 / 0.251, 1 / 4.251])
    np.testing.assert_allclose(out.weights[0, 0], w)
    assert sorted(out.nodes[0, 0].tolist()[:2]) == [0, 1] and out.nodes[0, 0, 2] == 2
    # zero: a node without an out-edge labelled a counts with value 0
    np.testing.assert_allclose(out.q[0], [(w[0] * 1 + w[1] * 3) / w.sum(), (w[1] * 2 + w[2] * 5) / w.sum()])
    skip = g.read(np.array([[0.5, 0.0]]), k=3, delta=1e-3, missing="skip").q[0]
    np.testing.assert_allclose(skip, [(w[0] * 1 + w[1] * 3) / (w[0] + w[1]),
                                      (w[1] * 2 + w[2] * 5) / (w[1] + w[2])])
    # fewer than k nodes -> 0
    assert (g.read(np.array([[0.5, 0.0]]), k=4).q == 0).all()
    with pytest.raises(GbmrError, match="Did you mean 'skip'"):
        g.read(np.zeros((1, 2)), k=3, missing="skp")


def test_node_q_visit_weighted_mean_and_max():
    for node_value, expected in (("mean", (1 * 1 + 2 * 4.2) / 3), ("max", 4.2)):
        g = MemoryGraph(dim=2, capacity=4, num_actions=2, node_value=node_value, eta=0.1)
        a, b = g.add_nodes(np.eye(2))
        g.add_transitions([a, a, a], [g.terminal_node, b, b], [0, 0, 0], [0, 0, 0], [1.0, 4.0, 6.0])
        q, has = g.node_q(np.array([a, b]))
        np.testing.assert_allclose(q, [[expected, 0], [0, 0]])
        assert has.tolist() == [[True, False], [False, False]]
        np.testing.assert_allclose(g.node_values(np.array([a, b])), [expected, 0])


# ---------------------------------------------------------------------------- writes


def test_merge_and_edge_update_rules_by_hand():
    g = MemoryGraph(dim=2, capacity=10, num_actions=2, dist_th=1.0, eta=0.1)
    T = g.terminal_node
    ids = g.write_episode(np.array([[0, 0], [3, 0]]), np.array([0, 1]), np.array([1.0, 2.0]),
                          np.array([5.0, 2.0]))
    assert ids.tolist() == [0, 1]
    assert edge_table(g) == {(0, 1, 0): (5.0, 1.0, 1), (1, T, 1): (2.0, 2.0, 1)}
    ids = g.write_episode(np.array([[0.3, 0.4], [3, 0]]), np.array([0, 1]), np.array([3.0, 4.0]),
                          np.array([7.0, 4.0]))
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(g.node_keys[0], np.array([0.15, 0.2]) / 1.5, rtol=1e-6)  # d = 0.5
    np.testing.assert_array_equal(g.node_keys[1], [3, 0])
    assert g.node_visits[:2].tolist() == [2, 2] and g.node_last_used[:2].tolist() == [3, 4]
    table = edge_table(g)
    np.testing.assert_allclose(table[(0, 1, 0)], (5.2, 2.0, 2))
    np.testing.assert_allclose(table[(1, T, 1)], (2.2, 3.0, 2))
    # in one episode a step merges into a node inserted by an earlier step (self-loop), far keys insert;
    # a truncated episode ends in the truncated sentinel
    ids = g.write_episode(np.array([[0, 5], [0.2, 5]]), np.array([1, 1]), np.array([0.0, 1.0]),
                          np.array([1.0, 1.0]), terminated=False)
    assert ids.tolist() == [2, 2]
    np.testing.assert_allclose(g.node_keys[2], [0.04 / 1.2, 5.0], rtol=1e-6)
    assert set(edge_table(g)) == {(0, 1, 0), (1, T, 1), (2, 2, 1), (2, g.truncated_node, 1)}


def test_per_action_layout_writes_into_the_table_of_the_action():
    g = MemoryGraph(dim=2, capacity=4, num_actions=3, layout="per_action", dist_th=1.0)
    ids = g.write_episode(np.zeros((3, 2)), np.array([0, 1, 1]), np.zeros(3), np.ones(3))
    assert ids.tolist() == [0, 4, 4] and g.num_nodes == 2 and g.num_tables == 3
    q = g.read(np.zeros((1, 2)), k=1).q
    np.testing.assert_allclose(q, [[1.0, 1.0, 0.0]])
    with pytest.raises(GbmrError, match="Did you mean 'per_action'"):
        MemoryGraph(dim=2, capacity=4, num_actions=3, layout="per-action")


def test_lru_eviction_removes_the_node_and_its_edges():
    g = MemoryGraph(dim=1, capacity=2, num_actions=1, dist_th=0.5)
    g.write_episode(np.array([[0.0], [10.0]]), np.zeros(2, int), np.zeros(2), np.ones(2))
    g.write_episode(np.array([[10.0]]), np.zeros(1, int), np.zeros(1), np.ones(1))  # touches node 1
    ids = g.write_episode(np.array([[20.0]]), np.zeros(1, int), np.zeros(1), np.ones(1))
    assert ids.tolist() == [0]  # node 0 was the least recently used: evicted, its slot reused
    assert set(edge_table(g)) == {(1, g.terminal_node, 0), (0, g.terminal_node, 0)}
    assert edge_table(g)[(0, g.terminal_node, 0)] == (1.0, 0.0, 1)
    check_invariants(g)


@pytest.mark.parametrize(("layout", "dist_th"), [("joint", 0.6), ("per_action", 0.6), ("joint", 0.0),
                                                  ("joint", math.inf)])
def test_write_matches_naive_sequential_writer(layout, dist_th):
    """Grid search + recency lists == one-step-at-a-time exhaustive search, including merges into nodes moved
    earlier in the episode, evictions, (capacity < episode) in-episode evictions and the grid's refits; also
    with dist_th 0 (never merge) and inf (always merge: searched without the grid)."""
    rng = np.random.default_rng(1)
    capacity = 25
    g = MemoryGraph(dim=3, capacity=capacity, num_actions=2, layout=layout, dist_th=dist_th, eta=0.1,
                    edge_capacity=10_000)  # the naive writer has no edge capacity
    naive = NaiveGraph(3, capacity, 2, layout, dist_th, 0.1)
    for _ in range(30):
        episode = random_episode(rng, int(rng.integers(1, 60)), 3, 2, scale=0.25)
        np.testing.assert_array_equal(g.write_episode(*episode), naive.write(*episode))
        check_invariants(g)
    np.testing.assert_array_equal(g.node_alive[: g.terminal_node], naive.alive)
    np.testing.assert_array_equal(g.node_keys[: g.terminal_node][naive.alive], naive.keys[naive.alive])
    np.testing.assert_array_equal(g.node_visits[: g.terminal_node][naive.alive], naive.visits[naive.alive])
    ours = edge_table(g)
    assert set(ours) == set(naive.edges)
    for key, (w, r, v) in naive.edges.items():
        np.testing.assert_allclose(ours[key], (w, r, v), rtol=1e-12)


def graph_state(g: MemoryGraph) -> tuple:
    """Everything a write decides: alive nodes, their keys, visits and stamps, and the edges."""
    ids = g.alive_nodes()
    return (ids.tolist(), g.node_keys[ids].tolist(), g.node_visits[ids].tolist(), g.node_last_used[ids].tolist(),
            edge_table(g))


@pytest.mark.parametrize(("layout", "tolerance"), [("joint", 0.0), ("per_action", 0.0), ("joint", 0.4)])
def test_grid_and_candidate_writes_give_identical_graphs(layout, tolerance, monkeypatch):
    """The two exact write searches (grid; batched brute-force candidates with the float32 / tolerance floor)
    and the naive writer agree step for step: merges into nodes touched earlier in the episode, evictions,
    in-episode evictions (episodes longer than a table), and candidate lists all touched (2 candidates per
    step here, so that this happens often: the grid decides)."""
    monkeypatch.setattr(graph_module, "_CANDIDATES", 2)
    rng = np.random.default_rng(21)
    make = dict(dim=3, capacity=40, num_actions=2, layout=layout, dist_th=0.5, eta=0.1, edge_capacity=10_000,
                index_tolerance=tolerance)
    grid, cands = MemoryGraph(**make, write_search="grid"), MemoryGraph(**make, write_search="candidates")
    naive = NaiveGraph(3, 40, 2, layout, 0.5, 0.1)
    for _ in range(40):
        episode = random_episode(rng, int(rng.integers(1, 90)), 3, 2, scale=0.2)
        ids = grid.write_episode(*episode)
        np.testing.assert_array_equal(cands.write_episode(*episode), ids)
        np.testing.assert_array_equal(naive.write(*episode), ids)
        cands.read(np.zeros((1, 3)), k=1)  # an agent reads between episodes: with a tolerance, keys lag
    assert graph_state(grid) == graph_state(cands)
    assert cands.num_nodes == cands.capacity * cands.num_tables  # full: evictions happened
    assert (cands._grid.stats[2] > 0).all()  # some steps had every candidate touched: the grid decided
    assert (cands._by_candidates & ~grid._by_candidates).all()
    check_invariants(cands)


def test_auto_write_search_switches_by_cost():
    """Auto starts on the grid; isotropic keys in 24 dims defeat its 3-direction projection (a search examines
    most of the table), so it moves to brute-force candidates; once the table holds keys spread over 3 wide
    directions, a probe finds the grid cheap again and it moves back. Results equal the grid's throughout."""
    rng = np.random.default_rng(22)
    make = dict(dim=24, capacity=600, num_actions=2, dist_th=2.0, edge_capacity=20_000)
    auto, grid = MemoryGraph(**make), MemoryGraph(**make, write_search="grid")
    assert not auto._by_candidates[0]

    def write(keys: np.ndarray) -> None:
        T = len(keys)
        episode = (keys.astype(np.float32), rng.integers(0, 2, T), np.zeros(T), np.ones(T))
        np.testing.assert_array_equal(auto.write_episode(*episode), grid.write_episode(*episode))

    for _ in range(5):
        write(rng.normal(0, 1, (100, 24)))
    assert auto._by_candidates[0]
    wide = np.zeros((50, 24))
    for _ in range(3 * _PROBE_EVERY):
        wide[:, :3] = rng.uniform(-100, 100, (50, 3))
        write(wide)
    assert not auto._by_candidates[0]
    assert graph_state(auto) == graph_state(grid)


def brute_nearest(keys: np.ndarray, ids: np.ndarray, query: np.ndarray) -> tuple[int, float]:
    """The nearest of `ids` to `query` by numpy's exact float64 distance, ties to the lowest id."""
    if ids.size == 0:
        return -1, math.inf
    d2 = ((keys[ids].astype(np.float64) - query.astype(np.float64)) ** 2).sum(1)
    return int(ids[np.argmin(d2)]), float(d2.min())  # ids ascending: argmin takes the lowest tied id


def check_grid(grid: RadiusGrid, alive: np.ndarray, queries: np.ndarray) -> int:
    """Within the radius the grid finds exactly the brute-force nearest node of each table; beyond it, nothing
    closer than the radius. Returns how many queries had a node within the radius."""
    within = 0
    for table in range(grid.num_tables):
        lo = table * grid.capacity
        ids = np.flatnonzero(alive[lo:lo + grid.capacity]) + lo
        got_ids, got_d2 = grid.nearest(queries, table, alive)
        for q, got, d2 in zip(queries, got_ids.tolist(), got_d2.tolist(), strict=True):
            best, best_d2 = brute_nearest(grid.keys, ids, q)
            if math.sqrt(best_d2) < grid.radius:
                assert (got, d2) == (best, best_d2)
                within += 1
            else:
                assert math.sqrt(d2) >= grid.radius and (got < 0 or lo <= got < lo + grid.capacity)
    return within


@pytest.mark.parametrize("dim", [2, 5])
def test_radius_grid_agrees_with_brute_force(dim):
    """Random inserts, key moves (small and large) and removals in two tables, with refits on the way: the
    grid always finds the exact nearest node within its radius, ties included (duplicated keys)."""
    rng = np.random.default_rng(11)
    capacity, tables, radius = 300, 2, 0.4
    keys = np.zeros((tables * capacity + 2, dim), dtype=np.float32)
    alive = np.zeros(len(keys), dtype=bool)
    grid = RadiusGrid(keys, radius, capacity, tables)
    centres = rng.normal(0, 3, (6, dim))  # clustered keys: many queries have neighbours within the radius
    within = 0
    for _ in range(30):
        free = np.flatnonzero(~alive[: tables * capacity])
        for v in rng.choice(free, min(40, free.size), replace=False).tolist():
            keys[v] = centres[rng.integers(6)] + rng.normal(0, 0.5, dim)
            if rng.random() < 0.1 and alive[:tables * capacity].any():  # a duplicate of a key of the table
                same = np.flatnonzero(alive[v // capacity * capacity:(v // capacity + 1) * capacity])
                if same.size:
                    keys[v] = keys[same[0] + v // capacity * capacity]
            alive[v] = True
            radius_module.grid_add(v, keys[v], grid.arrays)
        used = np.flatnonzero(alive[: tables * capacity])
        for v in rng.choice(used, 30, replace=False).tolist():
            keys[v] += rng.normal(0, 0.05 if rng.random() < 0.8 else 2.0, dim).astype(np.float32)
            radius_module.grid_move(v, keys[v], grid.arrays)
        for v in rng.choice(used, 25, replace=False).tolist():
            alive[v] = False
            radius_module.grid_remove(v, grid.arrays)
        grid.refit_due()
        queries = np.concatenate([keys[rng.choice(np.flatnonzero(alive), 10)] + rng.normal(0, 0.2, (10, dim)),
                                  rng.normal(0, 3, (5, dim))]).astype(np.float32)
        within += check_grid(grid, alive, queries)
    assert within > 100  # the test exercised merges, not only misses
    assert (grid.stats[1] > 0).all()  # both tables were refitted
    grid.rebuild(alive)  # from the keys alone (after loading a state): the same answers
    check_grid(grid, alive, rng.normal(0, 3, (50, dim)).astype(np.float32))


def test_write_ties_go_to_the_lowest_id():
    g = MemoryGraph(dim=2, capacity=10, num_actions=1, dist_th=1.5)
    g.add_nodes(np.array([[0.0, -1.0], [1.0, 0.0]]))
    g.add_nodes(np.array([[-1.0, 0.0], [0.0, 1.0]]))  # in other cubes, filed later
    ids = g.write_episode(np.zeros((2, 2)), np.zeros(2, int), np.zeros(2), np.zeros(2))  # all at distance 1
    assert ids.tolist() == [0, 0] and g.node_visits[:4].tolist() == [3, 1, 1, 1]


@pytest.mark.parametrize("layout", ["joint", "per_action"])
def test_capacity_never_exceeded_over_ten_times_capacity_writes(layout):
    rng = np.random.default_rng(2)
    g = MemoryGraph(dim=4, capacity=50, num_actions=3, layout=layout, edge_capacity=60, dist_th=0.3)
    written, most_edges = 0, 0
    while written < 10 * 50 * g.num_tables:
        episode = random_episode(rng, 40, 4, 3)
        ids = g.write_episode(*episode)
        assert (ids >= 0).all() and g.node_alive[ids].all()
        written += 40
        most_edges = max(most_edges, g.num_edges)
        check_invariants(g)
    assert g.num_nodes == 50 * g.num_tables and most_edges == 60  # both filled up, and stayed consistent


# ---------------------------------------------------------------------------- persistence


def test_state_dict_round_trip_gives_identical_reads_and_writes():
    rng = np.random.default_rng(3)
    g = MemoryGraph(dim=4, capacity=40, num_actions=3, dist_th=0.5)
    for _ in range(8):
        g.write_episode(*random_episode(rng, 30, 4, 3))
    buffer = io.BytesIO()
    torch.save(g.state_dict(), buffer)
    buffer.seek(0)
    h = MemoryGraph(dim=4, capacity=40, num_actions=3, dist_th=0.5)
    h.load_state_dict(torch.load(buffer, weights_only=True))
    queries = rng.normal(size=(7, 4))
    for a, b in zip(g.read(queries, k=5), h.read(queries, k=5), strict=True):
        np.testing.assert_array_equal(a, b)
    episode = random_episode(rng, 30, 4, 3)
    np.testing.assert_array_equal(g.write_episode(*episode), h.write_episode(*episode))
    assert edge_table(g) == edge_table(h)
    check_invariants(h)
    with pytest.raises(ValueError, match="saved with"):
        MemoryGraph(dim=4, capacity=41, num_actions=3).load_state_dict(g.state_dict())


# ---------------------------------------------------------------------------- nearest-node index

HNSW = {"M": 16, "ef_construction": 200, "ef_search": 400}  # on a few hundred nodes: searches are exact


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def check_index(g: MemoryGraph) -> None:
    """Each table's index holds exactly its alive nodes, at most tolerance * dist_th from their true keys,
    once it has taken in the latest writes (as it does before every search)."""
    g._flush_index()
    for t, index in enumerate(g._indexes):
        lo = t * g.capacity
        alive = g.node_alive[lo:lo + g.capacity]
        np.testing.assert_array_equal(index.alive, alive)
        slots = np.flatnonzero(alive)
        moved = np.sqrt(((index.get(slots).astype(np.float64) - g.node_keys[slots + lo]) ** 2).sum(1))
        assert (moved <= g._drift[slots + lo] + 1e-6).all()
        assert (g._drift[slots + lo] <= g.index_tolerance * g.dist_th).all()


def write_random(g: MemoryGraph, seed: int, episodes: int, T: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [g.write_episode(*random_episode(rng, T, g.dim, g.num_actions)) for _ in range(episodes)]


def test_state_dict_round_trip_continues_evictions_and_merges_identically():
    """The recency lists and the grid are not saved: rebuilt from the keys and stamps, they give the same
    victims and merges (per-action tables, full, so every insert evicts)."""
    make = dict(dim=3, capacity=30, num_actions=2, layout="per_action", dist_th=0.5, edge_capacity=200)
    g = MemoryGraph(**make)
    write_random(g, 12, 20, T=25)
    h = MemoryGraph(**make)
    h.load_state_dict(round_trip(g.state_dict()))
    assert h.num_nodes == 60
    for a, b in zip(write_random(g, 13, 10, T=25), write_random(h, 13, 10, T=25), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(g.node_keys, h.node_keys)
    np.testing.assert_array_equal(g.node_last_used, h.node_last_used)
    assert edge_table(g) == edge_table(h)
    check_invariants(h)
    queries = np.random.default_rng(14).normal(size=(40, 3)).astype(np.float32) * 2
    assert check_grid(h._grid, h.node_alive, queries) > 0


@pytest.mark.parametrize("layout", ["joint", "per_action"])
def test_hnsw_index_gives_the_exact_graph(layout):
    """Same writes and reads as the exact index where HNSW finds the true neighbours (small tables, large ef);
    10x capacity writes keep every index in sync with its table through evictions."""
    exact = MemoryGraph(dim=4, capacity=60, num_actions=3, layout=layout, dist_th=0.3)
    hnsw = MemoryGraph(dim=4, capacity=60, num_actions=3, layout=layout, dist_th=0.3, index="hnsw",
                       index_options=HNSW)
    for a, b in zip(write_random(exact, 4, 45), write_random(hnsw, 4, 45), strict=True):
        np.testing.assert_array_equal(a, b)
    assert exact.num_nodes == hnsw.num_nodes == 60 * exact.num_tables  # full: evictions happened
    check_invariants(hnsw)
    check_index(hnsw)
    queries = np.random.default_rng(5).normal(size=(20, 4))
    for x, y in zip(exact.read(queries, k=7), hnsw.read(queries, k=7), strict=True):
        np.testing.assert_array_equal(x, y)


def test_index_tolerance_bounds_the_read_error():
    """With a tolerance the index holds keys up to tau = tolerance * dist_th old: each returned neighbour is
    alive, the returned k-th distance is at most 2 tau beyond the true k-th, and most keys are stale."""
    g = MemoryGraph(dim=3, capacity=80, num_actions=2, dist_th=0.8, index_tolerance=0.5)
    rng = np.random.default_rng(6)
    for _ in range(40):  # a read between episodes, as an agent acts: the index takes in each episode's writes
        g.write_episode(*random_episode(rng, 30, 3, 2))
        g.read(np.zeros((1, 3)), k=1)
    check_invariants(g)
    check_index(g)
    assert (g._drift[g.alive_nodes()] > 0).sum() > 10  # the tolerance was used
    queries = (np.random.default_rng(7).normal(size=(50, 3)) * 2).astype(np.float32)  # as the graph reads
    k, tau = 10, 0.5 * 0.8
    out = g.read(queries, k=k)
    alive = g.alive_nodes()
    true_d = np.sqrt(((g.node_keys[alive][None].astype(np.float64) - queries[:, None].astype(np.float64)) ** 2)
                     .sum(-1))
    true_kth = np.sort(true_d, 1)[:, k - 1]
    got = out.nodes[:, 0]
    assert g.node_alive[got].all() and all(len(set(row)) == k for row in got.tolist())
    got_d = np.sqrt(((g.node_keys[got].astype(np.float64) - queries[:, None].astype(np.float64)) ** 2).sum(-1))
    assert (got_d.max(1) <= true_kth + 2 * tau + 1e-9).all()
    np.testing.assert_allclose(out.weights[:, 0], 1 / (got_d**2 + 1e-3))  # weights use the true keys


@pytest.mark.parametrize("index, tolerance", [("hnsw", 0.0), ("hnsw", 0.3), ("exact", 0.3)])
def test_state_dict_round_trip_with_the_index(index, tolerance):
    """The saved index comes back as it was (HNSW graph, lagging keys): identical reads after loading; a graph
    with another index kind rebuilds its own from the keys."""
    make = dict(dim=4, capacity=50, num_actions=3, dist_th=0.6, index=index, index_tolerance=tolerance,
                index_options=HNSW if index == "hnsw" else None)
    g = MemoryGraph(**make)
    write_random(g, 8, 12, T=30)
    h = MemoryGraph(**make)
    h.load_state_dict(round_trip(g.state_dict()))
    queries = np.random.default_rng(9).normal(size=(15, 4))
    for a, b in zip(g.read(queries, k=6), h.read(queries, k=6), strict=True):
        np.testing.assert_array_equal(a, b)
    check_index(h)
    episode = random_episode(np.random.default_rng(10), 30, 4, 3)
    np.testing.assert_array_equal(g.write_episode(*episode), h.write_episode(*episode))
    other = MemoryGraph(**{**make, "index": "exact" if index == "hnsw" else "hnsw", "index_tolerance": 0.0})
    other.load_state_dict(round_trip(h.state_dict()))
    check_index(other)
    assert edge_table(other) == edge_table(h)


# ---------------------------------------------------------------------------- backups


@pytest.mark.parametrize("node_value", ["mean", "max"])
@pytest.mark.parametrize("reference_backup", [False, True])
def test_sweep_matches_python_oracle(node_value, reference_backup):
    for seed in range(3):
        g = random_graph(seed, node_value=node_value)
        graph = g.to_networkx()
        weights = {int(e): float(g.edge_weight[e]) for e in g.alive_edges()}
        for _ in range(4):
            oracle_backup(graph, weights, list(weights), 0.9, 0.3, node_value, reference_backup,
                          g.truncated_node)
        g.sweep(gamma=0.9, eta=0.3, iterations=4, reference_backup=reference_backup)
        np.testing.assert_allclose([g.edge_weight[e] for e in weights], list(weights.values()), atol=1e-6)


@pytest.mark.parametrize(("min_visits", "w_into_u"), [
    (1, 0.5 * 5.0),  # V(u) = max(Q(u, 0) = 1, Q(u, 1) = 0 + 0.5 V(v) = 5)
    (2, 0.5 * 1.0),  # action 1 was taken once at u: V(u) = Q(u, 0), taken 3 times
    (4, 0.5 * (3 * 1.0 + 1 * 5.0) / 4),  # no action taken 4 times: the visit-weighted mean of u's edges
])
def test_sweep_min_visits_by_hand(min_visits, w_into_u):
    g = MemoryGraph(dim=1, capacity=3, num_actions=2)
    p, u, v = g.add_nodes(np.array([[0.0], [1.0], [2.0]]))
    T = g.terminal_node
    for _ in range(3):  # u -0-> T three times (reward 1), u -1-> v once, v -> T once (reward 10)
        g.add_transitions([u], [T], [0], [1.0], [1.0])
    g.add_transitions([p, u, v], [u, v, T], [0, 1, 0], [0.0, 0.0, 10.0], [0.0, 0.0, 10.0])
    g.sweep(gamma=0.5, eta=1.0, iterations=3, min_visits=min_visits)
    # v's single edge is its only value whatever min_visits (the mean of one edge), so Q(u, 1) = 5 always
    np.testing.assert_allclose(g.edge_weight[[g.edge_id(u, v, 1), g.edge_id(p, u, 0)]], [5.0, w_into_u])
    with pytest.raises(ValueError, match="min_visits must be >= 1"):
        g.sweep(gamma=0.5, eta=1.0, min_visits=0)


def test_backup_along_a_chain_by_hand():
    g = MemoryGraph(dim=1, capacity=3, num_actions=1)
    n = g.add_nodes(np.array([[0.0], [1.0], [2.0]]))
    e = g.add_transitions([n[0], n[1], n[2]], [n[1], n[2], g.terminal_node], [0, 0, 0], [1.0, 2.0, 3.0],
                          [0.0, 0.0, 10.0])
    g.backup_paths([e[:2]], gamma=0.9, eta=0.5)
    w12 = 0.5 * (2.0 + 0.9 * 10.0)  # last edge first, from V(n2) = 10
    w01 = 0.5 * (1.0 + 0.9 * w12)  # then from the updated V(n1)
    np.testing.assert_allclose(g.edge_weight[e], [w01, w12, 10.0])
    g.backup_paths([e[:2]], gamma=0.9, eta=0.5, reference_backup=True)  # target = V(dst) only
    np.testing.assert_allclose(g.edge_weight[e[1]], w12 + 0.5 * (10.0 - w12))


@pytest.mark.parametrize("node_value", ["mean", "max"])
def test_backup_paths_matches_python_oracle(node_value):
    for seed in range(3):
        g = random_graph(seed, node_value=node_value)
        paths = g.reconstruct_paths(g.alive_nodes()[:8])
        assert len(paths) > 10
        graph = g.to_networkx()
        weights = {int(e): float(g.edge_weight[e]) for e in g.alive_edges()}
        width = max(len(p) for p in paths)
        for back in range(1, width + 1):  # paths aligned at their last edge, one position per step
            column = sorted({int(p[-back]) for p in paths if len(p) >= back})
            oracle_backup(graph, weights, column, 0.95, 0.3, node_value, False, g.truncated_node)
        g.backup_paths(paths, gamma=0.95, eta=0.3)
        np.testing.assert_allclose([g.edge_weight[e] for e in weights], list(weights.values()), atol=1e-6)


# ---------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("n", "m", "every"), [(40, 90, 4), (100, 250, 1)])
def test_shortest_paths_agree_with_networkx(n, m, every):
    """Same pairs and lengths as networkx BFS; 100 critical nodes take two passes of the 64-wide search."""
    for seed in range(3):
        g = random_graph(seed, n=n, m=m)
        crit = g.alive_nodes()[::every]
        paths = g.reconstruct_paths(crit)
        digraph = nx.DiGraph(g.to_networkx())
        found = {}
        for p in paths:
            src, dst = g.edge_src[p], g.edge_dst[p]
            assert (dst[:-1] == src[1:]).all()  # a chain
            found[(int(src[0]), int(dst[-1]))] = len(p)
        expected = {}
        for s in crit.tolist():
            for t, length in nx.single_source_shortest_path_length(digraph, s).items():
                if t in crit and t != s:
                    expected[(s, t)] = length
        assert found == expected


def two_route_graph() -> tuple[MemoryGraph, np.ndarray]:
    """0 -> 3 directly (reward 0) or 0 -> 1 -> 2 -> 3 (reward 1 each). Keys make the long route take big
    steps in state space (lengths 5, 10, 5.5; mean edge length 5.25), the direct one a small step (0.5):
    diversity costs exp(-0.5/5.25) = 0.909 against exp(-5/5.25) + exp(-10/5.25) + exp(-5.5/5.25) = 0.886."""
    g = MemoryGraph(dim=1, capacity=4, num_actions=1)
    n = g.add_nodes(np.array([[0.0], [5.0], [-5.0], [0.5]]))
    g.add_transitions([n[0], n[0], n[1], n[2]], [n[3], n[1], n[2], n[3]], [0] * 4, [0.0, 1.0, 1.0, 1.0],
                      [0.0] * 4)
    return g, n


@pytest.mark.parametrize(("score", "length"), [("shortest", 1), ("reward", 3), ("diversity", 3)])
def test_path_scores_choose_their_route(score, length):
    g, n = two_route_graph()
    paths = g.reconstruct_paths(np.array([n[0], n[3]]), path_score=score)
    assert len(paths) == 1 and len(paths[0]) == length  # 3 -> 0 has no path
    with pytest.raises(GbmrError):
        g.reconstruct_paths(n, path_score="longest")


# ---------------------------------------------------------------------------- critical nodes


def test_critical_nodes_crossing():
    g = MemoryGraph(dim=1, capacity=10, num_actions=1)
    g.add_nodes(np.arange(10.0)[:, None])
    episodes = [np.array([1, 3, 5, 6]), np.array([3, 3, 4]), np.array([2, 5, 7, 3])]
    rewards = [np.array([0, 1, 1, 0]), np.array([1, 1, 1]), np.array([0, 1, 1, 0])]
    critical = g.critical_nodes_crossing(episodes, rewards, [10.0, 1.0, 8.0], top=2)
    assert critical.tolist() == [5]  # 3 is rewarded in the dropped episode and unrewarded in the third
    assert g.critical_nodes_crossing(episodes, rewards, [10.0, 1.0, 8.0], top=3).tolist() == [3, 5]


def test_critical_nodes_degree_prefers_rarely_visited_hubs():
    g = MemoryGraph(dim=1, capacity=10, num_actions=1)
    n = g.add_nodes(np.arange(8.0)[:, None])
    leaves = n[1:5]
    g.add_transitions(np.r_[np.full(4, n[0]), leaves], np.r_[leaves, np.full(4, n[0])], np.zeros(8, int),
                      np.zeros(8), np.zeros(8))
    g.add_transitions([n[5], n[6]], [n[6], n[7]], [0, 0], [0, 0], [0, 0])
    assert g.critical_nodes_degree(1).tolist() == [n[0]]
    g.node_visits[n[0]] = 10_000  # same degree, but visited all the time: no longer a bottleneck
    assert g.critical_nodes_degree(1).tolist() != [n[0]]


def test_critical_nodes_cluster_picks_blob_centres():
    g = MemoryGraph(dim=2, capacity=30, num_actions=1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    offsets = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float64)
    ids = g.add_nodes((centres[:, None, :] + offsets[None]).reshape(-1, 2))
    assert g.critical_nodes_cluster(3, seed=0).tolist() == sorted(ids[[0, 5, 10]].tolist())


def test_critical_nodes_gnn_picks_the_rewarding_neighbourhood():
    g = MemoryGraph(dim=1, capacity=10, num_actions=1)
    n = g.add_nodes(np.arange(6.0)[:, None])
    T = g.terminal_node
    g.add_transitions([n[0], n[1], n[2]], [n[1], n[2], T], [0, 0, 0], [5.0, 5.0, 5.0], [15.0, 10.0, 5.0])
    g.add_transitions([n[3], n[4], n[5]], [n[4], n[5], T], [0, 0, 0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert sorted(g.critical_nodes_gnn(3, hops=2).tolist()) == n[:3].tolist()
    # no propagation: z-scores value (15, 10, 5, 0, 0, 0) and degree (1, 2, 2, 1, 2, 2): node 1 scores
    # 0.866 + 0.5 * 0.707 against node 0's 1.732 - 0.5 * 1.414 (equal reward, equal visits)
    assert g.critical_nodes_gnn(1, hops=0).tolist() == [n[1]]
