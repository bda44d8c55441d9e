"""gbmr-dqn's cost: end to end against DQN, and its memory term by slot map against a k-NN search.

    python benchmarks/gbmr_dqn.py                 # ~3 min on 2 cores
    python benchmarks/gbmr_dqn.py --steps 20000 --repeats 3

1. **End to end.** ``start_run`` on MinAtar Breakout for ``--steps`` steps, eval off, learning from step 500:
   DQN (minatar preset), gbmr-dqn (minatar preset: the same DQN plus a 1e5-node memory graph with
   value-iteration sweeps every 1000 steps) and gbmr-dqn acting by ``memory_act=max`` (a nearest-node search
   per step), alternating, best of ``--repeats``; setup and the final checkpoint count on all sides.
2. **Memory term per replayed batch of 32**, on the graph of the last gbmr-dqn run: ``memory_values`` (the slot ->
   node map: encode, gather, node-Q read) against what a k-NN search for each state's node would cost, the
   graph's own ``read(keys, k=1)``, at its size after the run and on an HNSW index of 1e5 random keys (d 64,
   the graph's HNSW parameters: M 16, ef_search 128), the size the preset's graph reaches.
3. **Acting with memory_act=max**, per step of one state: the network's forward pass against ``known_values``
   (encode, nearest node, node-Q read) on the same graph.

One torch thread; hnswlib queries may use both cores. Timings on a shared machine: expect +-20 %.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from gbmr.agents import agent_class
from gbmr.agents.gbmr_dqn import GBMRDQNAgent
from gbmr.config import RunConfig, build_config
from gbmr.envs import env_family
from gbmr.experiment.train import load_trained_agent, start_run
from gbmr.memory.knn import HNSWIndex

ENV = "MinAtar/Breakout-v1"
BATCH = 32


AGENTS = {  # label: (algo, overrides)
    "dqn": ("dqn", []),
    "gbmr-dqn": ("gbmr-dqn", []),
    "gbmr-dqn memory_act=max": ("gbmr-dqn", ["memory_act=max"]),
}


def config(algo: str, steps: int, overrides: list[str]) -> RunConfig:
    return build_config(algo, ENV, agent_class(algo).Config, env_family(ENV), seed=1, total_steps=steps,
                        overrides=["device=cpu", "eval_episodes=0", "learning_starts=500", *overrides])


def timed_run(algo: str, steps: int, overrides: list[str], run_dir: str) -> float:
    """Steps/s of one whole run (setup and final checkpoint included)."""
    cfg = config(algo, steps, overrides)
    start = time.perf_counter()
    start_run(cfg, run_dir, progress=False)
    return steps / (time.perf_counter() - start)


def best_ms(fn: Callable[[], object], calls: int = 300, blocks: int = 3) -> float:
    best = np.inf
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls // blocks):
            fn()
        best = min(best, (time.perf_counter() - start) / (calls // blocks))
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000, help="env steps of each end-to-end run")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each agent (best is kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    speeds: dict[str, list[float]] = {label: [] for label in AGENTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for i, (label, (algo, overrides)) in enumerate(AGENTS.items()):
                speeds[label].append(timed_run(algo, args.steps, overrides, f"{tmp}/{i}_{repeat}"))
        _, agent = load_trained_agent(f"{tmp}/{list(AGENTS).index('gbmr-dqn')}_{args.repeats - 1}")
    assert isinstance(agent, GBMRDQNAgent)
    dqn = max(speeds["dqn"])
    print(f"**End to end on {ENV}, {args.steps:,} steps (minatar presets), best of {args.repeats}, one torch "
          "thread**\n")
    print("| agent | steps/s | / DQN |")
    print("|---|---:|---:|")
    for label, runs in speeds.items():
        print(f"| {label} | {max(runs):,.0f} | {max(runs) / dqn:.2f}x |")

    rng = np.random.default_rng(0)
    batch = agent.buffer.sample(BATCH)
    actions = np.asarray(batch.actions, dtype=np.int64)
    graph, keys = agent.memory.graph, agent.memory.embed(batch.obs)
    slot_ms = best_ms(lambda: agent.memory_values(batch.obs, actions, batch.indices))
    read_ms = best_ms(lambda: graph.read(keys, 1))
    index = HNSWIndex(100_000, 64, seed=0)
    random_keys = rng.standard_normal((100_000, 64)).astype(np.float32)
    index.add(np.arange(100_000), random_keys)
    queries = random_keys[rng.integers(0, 100_000, BATCH)]
    hnsw_ms = best_ms(lambda: index.search(queries, 1), calls=60)
    print(f"\n**Memory term per batch of {BATCH}** (graph of the last gbmr-dqn run: {graph.num_nodes:,} nodes)\n")
    print("| how the node of each replayed state is found | ms per batch |")
    print("|---|---:|")
    print(f"| slot -> node map (`memory_values`: encode, gather, node-Q) | {slot_ms:.3f} |")
    print(f"| k-NN search, the graph's `read(keys, k=1)` at {graph.num_nodes:,} nodes | {read_ms:.3f} |")
    print(f"| k-NN search, HNSW over 1e5 random keys (d 64, M 16, ef 128) | {hnsw_ms:.3f} |")

    state = batch.obs[:1]
    with torch.inference_mode():
        forward_ms = best_ms(lambda: agent.policy.q(torch.as_tensor(state)))
    known_ms = best_ms(lambda: agent.known_values(state))
    print("\n**Acting, per step of one state** (same graph)\n")
    print("| part | ms |")
    print("|---|---:|")
    print(f"| network forward pass | {forward_ms:.3f} |")
    print(f"| `known_values` (memory_act=max: encode, nearest node, node-Q) | {known_ms:.3f} |")


if __name__ == "__main__":
    main()
