"""The memory agents' cost per step at 5e5 nodes, HNSW recall on real embeddings, GBMR vs DQN end to end.

    python benchmarks/memory.py                  # ~4-5 min on 2 busy cores (building HNSW over 5e5 keys: 1-2 min)
    python benchmarks/memory.py --capacity 100000 --e2e-steps 500   # quick look, ~1 min

1. **Real run.** A GBMR agent (paper preset: random-projection encoder, d = 64, joint layout, k = 50,
   dist_th 1, N = 100) plays MinAtar Breakout for ``--real-steps`` steps (its memory sized to hold them all;
   capacity only changes the search cost, not the behaviour, while the memory is not full). Each step's
   embedding, action and reward is kept; the collection stops at the last finished episode.
2. **Fill to 5e5.** Breakout under this policy has only a few hundred distinct states, so a real run cannot
   reach 5e5 nodes. The memory (``--capacity`` nodes, default 5e5) is filled with the real per-step
   embeddings tiled in order, each copy plus isotropic Gaussian jitter whose expected norm is ``--jitter``
   (default 1.0) x the median nearest-neighbour distance of the distinct real embeddings (~1 here: about
   the merge threshold, so copies sit as far apart as a real graph's nodes). Consecutive copies are joined
   by the real edges (action, reward, discounted return; episode ends go to the terminal sentinel).
3. **Per step.** The graph's own nearest-node index behind the same GQ/GBMR agent code (``MemoryGraph(index=...)``):
   ``exact`` (torch brute force, the default), ``hnsw`` (M 16, ef_construction 100, ef_search 128) re-indexing
   every moved node, and ``hnsw`` with ``index_tolerance`` (a merged node is re-indexed only once its key moved
   more than that fraction of dist_th). Writes search with ``write_search="auto"`` (the default: HNSW
   candidates with HNSW; with the exact index the radius grid or batched brute-force candidates, whichever
   costs less), and, for comparison, the exact index forced onto the grid (``write_search="grid"``).
   *Lookup* = one joint k-NN query (k = 50) + exact re-rank + the node-Q read of the 50 neighbours + the
   kernel, i.e. the read of every action of one step (``agent.q_values`` of one observation). *Write* = the
   real episodes written into the full memory one after another (``agent.write``: N-step bootstrap reads,
   merge-or-insert with its nearest-node search (grid or candidates) and LRU eviction, edge updates, index
   updates) divided by the steps written. Each variant starts from the filled state (the HNSW graph is built
   once, then restored from its saved state).
4. **Recall@50** of the HNSW graph's reads (the 50 nodes a read uses) against the exact graph's, queries = real
   per-step embeddings; ef_search sweep.
5. **End to end.** ``start_run`` on MinAtar Breakout for ``--e2e-steps`` steps each, eval off: DQN (minatar
   preset), GBMR with its minatar preset (5e4 nodes, dist_th 0.5) and GBMR with the paper preset (5e5 nodes).
   Short runs: GBMR reconstructs every 1000 steps (presets: 5000 / 10000) and DQN learns from step 500
   (preset: 5000), so all do their steady-state work. steps/s leaves out the final checkpoint (timed; the
   wall clock with everything is shown too).

One torch thread (as the agents run); hnswlib queries may use both cores. Timings are means over repeated
calls on a shared machine: expect +-20 %.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import numpy as np
import torch

from gbmr.agents import build_agent
from gbmr.agents.dqn import DQNConfig
from gbmr.agents.gbmr import GBMRAgent, GBMRConfig
from gbmr.config import RunConfig, build_config
from gbmr.core.run_dir import RunDir
from gbmr.envs import env_family, make_env
from gbmr.experiment.train import start_run
from gbmr.memory.episodes import Episode, n_step_returns
from gbmr.memory.graph import MemoryGraph

ENV = "MinAtar/Breakout-v1"
K = 50
HNSW = dict(M=16, ef_construction=100, ef_search=128)
TOLERANCE = 0.25  # index_tolerance of the third variant


@dataclass
class RealRun:
    """A real run's per-step data: embeddings [T, d], actions, rewards, episode ends; its observations."""

    obs: np.ndarray
    keys: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    ends: np.ndarray  # bool [T]: the step ends its episode
    terminated: np.ndarray  # bool [T]: ... by termination (else truncation)

    def episodes(self) -> list[Episode]:
        """The run's episodes as the agent's collector hands them over (embeddings, not observations)."""
        bounds = np.flatnonzero(self.ends) + 1
        return [Episode(self.keys[s:e], self.actions[s:e], self.rewards[s:e], bool(self.terminated[e - 1]),
                        self.keys[e - 1])  # final state's key: only read for truncated episodes
                for s, e in zip(np.r_[0, bounds[:-1]], bounds, strict=True)]


def gbmr_config(steps: int, overrides: tuple[str, ...] = (), preset: str = "default") -> RunConfig:
    """GBMR on Breakout, CPU, seed 1; preset ``default`` = the paper's Atari setting (capacity 5e5, dist_th 1)."""
    return build_config("gbmr", ENV, GBMRConfig, env_family(ENV), preset=preset, seed=1, total_steps=steps,
                        overrides=["device=cpu", *overrides])


def collect(steps: int) -> tuple[RunConfig, RealRun]:
    """Play `steps` steps with a GBMR agent, as the runner would, recording what its memory sees."""
    config = gbmr_config(steps, (f"capacity={steps}",))
    env = make_env(ENV, config.seed)
    agent = build_agent(config, env.observation_space, env.action_space)
    obs, _ = env.reset(seed=config.seed)
    rows = []
    for _ in range(steps):
        action = agent.act(obs[None])
        next_obs, reward, term, trunc, _ = env.step(int(action[0]))
        agent.observe(obs[None], action, np.array([reward]), next_obs[None], np.array([term]), np.array([trunc]))
        rows.append((obs, int(action[0]), float(reward), term or trunc, term))
        obs = next_obs if not (term or trunc) else env.reset()[0]
    env.close()
    last = max(i for i, row in enumerate(rows) if row[3]) + 1
    obs, actions, rewards, ends, terminated = (np.array(c) for c in zip(*rows[:last], strict=True))
    return config, RealRun(obs, agent.embed(obs), actions, rewards, ends, terminated)


def median_nn_distance(keys: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    distinct = np.unique(keys, axis=0)
    distinct = distinct[np.random.default_rng(seed).permutation(len(distinct))[:sample]].astype(np.float64)
    d2 = (distinct**2).sum(1)[:, None] + (distinct**2).sum(1)[None] - 2 * distinct @ distinct.T
    np.fill_diagonal(d2, np.inf)
    return float(np.median(np.sqrt(np.maximum(d2.min(1), 0.0))))


def fill(graph: MemoryGraph, real: RealRun, jitter: float, gamma: float, seed: int = 0) -> float:
    """Fill the whole table with jittered copies of the real steps, joined by the real edges; returns the
    jitter's per-dimension standard deviation."""
    n, T = graph.capacity, len(real.keys)
    sigma = jitter * median_nn_distance(real.keys) / np.sqrt(graph.dim)
    step = np.arange(n) % T
    keys = real.keys[step] + np.random.default_rng(seed).normal(0.0, sigma, (n, graph.dim)).astype(np.float32)
    ids = graph.add_nodes(keys)
    returns = np.concatenate([n_step_returns(e.rewards, np.zeros(len(e.rewards)), 0, gamma, True)
                              for e in real.episodes()])
    end = np.where(real.terminated, graph.terminal_node, graph.truncated_node)[step]
    dst = np.where(real.ends[step], end, np.r_[ids[1:], -1])
    ok = dst >= 0  # the very last node, mid-episode, has no successor
    graph.add_transitions(ids[ok], dst[ok], real.actions[step][ok], real.rewards[step][ok], returns[step][ok])
    return float(sigma)


def mean_ms(fn: Callable[[int], object], calls: int, blocks: int = 3) -> float:
    """Milliseconds per call of fn(i): the best of `blocks` blocks of calls / blocks calls each (other
    processes' load only ever adds time), after two warm-up calls."""
    fn(0)
    fn(1)
    per_block, best = max(calls // blocks, 1), float("inf")
    for b in range(blocks):
        start = time.perf_counter()
        for i in range(b * per_block, (b + 1) * per_block):
            fn(i)
        best = min(best, (time.perf_counter() - start) / per_block)
    return 1e3 * best


def per_step(agent: GBMRAgent, real: RealRun, queries: np.ndarray, calls: int, write_steps: int) -> dict:
    """Lookup (and its parts) and amortised write of one step, in ms, on the agent's current memory."""
    graph, keys = agent.graph, agent.embed(queries)
    ids = graph.nearest(keys, 0, K)[0]
    out = {
        "knn": mean_ms(lambda i: graph.nearest(keys[i % len(keys)][None], 0, K), calls),
        "node_q": mean_ms(lambda i: graph.node_q(ids[i % len(ids)]), calls),
        "lookup": mean_ms(lambda i: agent.q_values(queries[i % len(queries)][None]), calls),
    }
    written, write_s = 0, 0.0
    for episode in real.episodes():
        start = time.perf_counter()
        agent.write(episode)
        write_s += time.perf_counter() - start
        written += len(episode.actions)
        if written >= write_steps:
            break
    out.update(write=1e3 * write_s / written, written=written)
    out["total"] = out["lookup"] + out["write"]
    return out


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(t, g).size / t.size for t, g in zip(truth, got, strict=True)]))


def end_to_end(algo: str, config: RunConfig) -> tuple[float, float, float]:
    """(loop steps/s without the final checkpoint, wall-clock steps/s with everything, checkpoint seconds)."""
    saves: list[float] = []
    save = RunDir.save_checkpoint

    def timed_save(self: RunDir, state: dict) -> None:
        start = time.perf_counter()
        save(self, state)
        saves.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(RunDir, "save_checkpoint", timed_save):
        start = time.perf_counter()
        start_run(config, f"{tmp}/{algo}", progress=False)
        wall = time.perf_counter() - start
    steps = config.total_steps
    return steps / (wall - sum(saves)), steps / wall, sum(saves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=500_000, help="memory nodes (default 5e5)")
    parser.add_argument("--real-steps", type=int, default=5000, help="steps of the real GBMR run")
    parser.add_argument("--jitter", type=float, default=1.0,
                        help="jitter norm of the tiled copies, in median real nearest-neighbour distances")
    parser.add_argument("--calls", type=int, default=300, help="lookups timed per variant")
    parser.add_argument("--write-steps", type=int, default=1000, help="steps written per variant")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall")
    parser.add_argument("--e2e-steps", type=int, default=2000, help="steps of each end-to-end run (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    config, real = collect(args.real_steps)
    print(f"real run: GBMR on {ENV}, {len(real.keys)} steps, {len(real.episodes())} episodes, "
          f"{len(np.unique(real.keys, axis=0))} distinct embeddings ({time.perf_counter() - start:.1f} s)")
    env = make_env(ENV)
    agent = build_agent(gbmr_config(args.real_steps, (f"capacity={args.capacity}",)), env.observation_space,
                        env.action_space)
    env.close()
    graph = agent.graph
    start = time.perf_counter()
    sigma = fill(graph, real, args.jitter, config.agent.gamma)
    print(f"memory: {graph.num_nodes:,} nodes, {graph.num_edges:,} edges = the real steps tiled "
          f"{graph.capacity / len(real.keys):.0f}x, jitter N(0, {sigma:.3f}^2) per dimension "
          f"(norm ~{sigma * np.sqrt(graph.dim):.2f}) ({time.perf_counter() - start:.1f} s)")
    snapshot = graph.state_dict()
    config_args = snapshot["config"]
    start = time.perf_counter()
    hnsw_graph = MemoryGraph(**config_args, index="hnsw", index_options={**HNSW, "add_threads": 2})
    hnsw_graph.load_state_dict(snapshot)  # a state without an HNSW index: built from the keys
    hnsw_index = hnsw_graph._indexes[0]
    hnsw_index.add_threads = 1  # writes during the measurement: one thread, as an agent would run
    build_s = time.perf_counter() - start
    hnsw_snapshot = hnsw_graph.state_dict()
    print(f"HNSW build ({graph.num_nodes:,} keys, 2 threads): {build_s:.1f} s")

    rng = np.random.default_rng(0)
    pick = rng.choice(len(real.keys), min(args.queries, len(real.keys)), replace=False)
    queries, qkeys = real.obs[pick], real.keys[pick]
    truth = graph.read(qkeys, K).nodes[:, 0]
    print(f"\n**Recall@{K} of the HNSW graph's reads (M {HNSW['M']}, ef_construction {HNSW['ef_construction']}) "
          f"against the exact graph's, {len(pick)} real embeddings as queries, {graph.num_nodes:,} keys, "
          f"d={graph.dim}**\n")
    print("| ef_search | recall@50 | ms / single k-NN query (index + exact re-rank) |")
    print("|---:|---:|---:|")
    for ef in (64, 128, 256, 512):
        hnsw_index.ef_search = ef
        got = hnsw_graph.read(qkeys, K).nodes[:, 0]
        ms = mean_ms(lambda i: hnsw_graph.nearest(qkeys[i % len(qkeys)][None], 0, K), args.calls)
        print(f"| {ef}{' (used)' if ef == HNSW['ef_search'] else ''} | {recall(truth, got):.3f} | {ms:.3f} |",
              flush=True)
    hnsw_index.ef_search = HNSW["ef_search"]

    def restore(index: str, tolerance: float, write_search: str) -> MemoryGraph:
        """A fresh copy of the filled memory with the given index (HNSW: restored from its saved graph)."""
        options = {**HNSW, "add_threads": 1} if index == "hnsw" else None
        fresh = MemoryGraph(**config_args, index=index, index_tolerance=tolerance, index_options=options,
                            write_search=write_search)
        fresh.load_state_dict(hnsw_snapshot if index == "hnsw" else snapshot)
        return fresh

    rows = []
    variants = [
        ("exact (torch brute force), writes: grid (forced)", "exact", 0.0, "grid"),
        ("exact (torch brute force), writes: auto", "exact", 0.0, "auto"),
        (f"hnsw (ef_search {HNSW['ef_search']}), tolerance 0", "hnsw", 0.0, "auto"),
        (f"hnsw (ef_search {HNSW['ef_search']}), tolerance {TOLERANCE}", "hnsw", TOLERANCE, "auto"),
    ]
    for name, index, tolerance, write_search in variants:
        agent.graph = restore(index, tolerance, write_search)
        rows.append((name, per_step(agent, real, queries, args.calls, args.write_steps)))
        if write_search == "auto" and index == "exact":
            name += f" (ended on {'candidates' if agent.graph._by_candidates[0] else 'grid'})"
            rows[-1] = (name, rows[-1][1])
        print(f"measured {name}", flush=True)
        agent.graph = None  # free it before the next copy

    print(f"\n**Per agent step at {graph.capacity:,} nodes (joint layout, d={graph.dim}, k={K}, one torch thread), "
          f"ms**\n")
    print("| graph index | k-NN query | node-Q read | lookup (all actions) | write / step | **total / step** |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['knn']:.3f} | {r['node_q']:.3f} | {r['lookup']:.3f} | {r['write']:.3f} | "
              f"**{r['total']:.3f}** |")
    print("\nk-NN query = `MemoryGraph._nearest` (index search + exact float64 re-rank); lookup = `agent.q_values` "
          f"of one observation (encoder + k-NN + node-Q + kernel), best of 3 blocks of {args.calls // 3} calls; "
          f"write = `agent.write` of real episodes into the full memory ({rows[0][1]['written']} steps).")

    if args.e2e_steps > 0:
        steps = args.e2e_steps
        quick = ("eval_episodes=0",)
        runs = {
            "dqn (minatar preset)": build_config("dqn", ENV, DQNConfig, env_family(ENV), seed=1, total_steps=steps,
                                                 overrides=["device=cpu", *quick, "learning_starts=500"]),
            "gbmr (minatar preset, 5e4 nodes)": gbmr_config(steps, (*quick, "reconstruct_every=1000"), "minatar"),
            "gbmr (paper preset, 5e5 nodes)": gbmr_config(steps, (*quick, "reconstruct_every=1000")),
        }
        results = {name: end_to_end(name.split()[0], cfg) for name, cfg in runs.items()}
        dqn = results["dqn (minatar preset)"]
        print(f"\n**End to end on {ENV}, {steps} steps each, same process, one torch thread**\n")
        print("| agent | steps/s (without the final checkpoint) | steps/s (wall, all included) | "
              "final checkpoint s | / DQN |")
        print("|---|---:|---:|---:|---:|")
        for name, (loop, wall, ckpt) in results.items():
            print(f"| {name} | {loop:,.0f} | {wall:,.0f} | {ckpt:.1f} | {loop / dqn[0]:.2f}x |")


if __name__ == "__main__":
    main()
