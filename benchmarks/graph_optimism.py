"""How optimistic a gbmr-dqn run's value-iterated graph is, and how `sweep_min_visits` changes that: from the run's
latest checkpoint, the graph is re-solved (value iteration to convergence, rate 1) with V(u) maximised only over
actions taken at least m times at u, for several m, and the mean Q_G(s, a) over the steps in the replay is set
beside the discounted return the behaviour achieved from those same steps.

    python benchmarks/graph_optimism.py results/minatar/variants/gbmr-dqn_ungated_asterix_s1

The memory term is a lower bound, max(Q_G - Q, 0)^2: a Q_G far above what any policy achieves pulls the network
up where it should not. The behaviour's return is a floor of the greedy policy's value, not its value, so a
Q_G somewhat above it is expected; one several times above it, on a game the agent barely scores in, is not.
"""

from __future__ import annotations

import argparse

import numpy as np

from gbmr.agents.gbmr_dqn import GBMRDQNAgent
from gbmr.experiment.train import load_trained_agent

SWEEPS = 400  # at rate 1 and gamma 0.99 the values have settled long before (they move < 0.99^400 of the start)


def behaviour_returns(agent: GBMRDQNAgent) -> np.ndarray:
    """Discounted return from every replay slot on, along the episodes in the replay (oldest slot first)."""
    buffer = agent.buffer
    oldest = buffer.ptr if buffer.size == buffer.capacity else 0
    order = (oldest + np.arange(buffer.size)) % buffer.capacity
    returns = np.zeros(buffer.capacity)
    following = 0.0
    for slot in order[::-1]:  # newest first: the last, unfinished episode counts what it has so far
        following = buffer.returns[slot] + buffer.discounts[slot] * following
        returns[slot] = following
    return returns


def replayed_pairs(agent: GBMRDQNAgent) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay slots whose step's node is still alive, that node, and the action taken."""
    slots = np.flatnonzero(agent.slot_node[: agent.buffer.size] >= 0)
    nodes = agent.slot_node[slots]
    alive = agent.memory.graph.node_alive[nodes]
    return slots[alive], nodes[alive], agent.buffer.actions[slots[alive]].astype(np.int64).ravel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a gbmr-dqn run folder with a checkpoint")
    parser.add_argument("--min-visits", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    args = parser.parse_args()
    config, agent = load_trained_agent(args.run_dir)
    if not isinstance(agent, GBMRDQNAgent):
        raise SystemExit(f"{args.run_dir} is a {config.algo} run; this reads gbmr-dqn runs")
    graph, gamma = agent.memory.graph, agent.memory.config.gamma
    slots, nodes, actions = replayed_pairs(agent)
    edges = graph.alive_edges()
    counts = np.bincount(graph.edge_src[edges] * graph.num_actions + graph.edge_action[edges],
                         weights=graph.edge_visits[edges], minlength=len(graph.node_alive) * graph.num_actions)
    tried = counts[nodes * graph.num_actions + actions]  # n(u, a) of each replayed step's node and action
    achieved = behaviour_returns(agent)[slots]
    print(f"{args.run_dir}: step {agent.steps:,}, {graph.num_nodes:,} nodes, {graph.num_edges:,} edges, "
          f"{len(slots):,} replayed steps with a node; n(u, a) of those: median {np.median(tried):.0f}, "
          f"{np.mean(tried == 1):.0%} tried once")
    print(f"behaviour's discounted return from those steps: mean {achieved.mean():.3f}\n")
    print("| sweep_min_visits | mean Q_G(s, a) | median | Q_G / behaviour's return |")
    print("|---:|---:|---:|---:|")
    written = graph.edge_weight.copy()
    for m in args.min_visits:
        graph.edge_weight[:] = written
        graph.sweep(gamma, 1.0, SWEEPS, min_visits=m)
        q, has = graph.node_q(nodes)
        rows = np.arange(len(nodes))
        values = q[rows, actions][has[rows, actions]]
        print(f"| {m} | {values.mean():.3f} | {np.median(values):.3f} | {values.mean() / achieved.mean():.2f}x |")


if __name__ == "__main__":
    main()
