"""How a graph agent uses its memory when it acts greedily (`gbmr inspect --episodes N`).

Whether an agent generalises or looks states up tabularly decides which changes can help it: if nearly every
read finds a node at distance 0, the k-NN kernel hardly matters and value quality (returns, backups,
exploration) is what limits the agent; if the nearest node is usually far, the encoder and the memory's
capacity do. The statistics below say which regime a run is in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:
    from gbmr.agents.base import Agent
    from gbmr.agents.gq import GQAgent


@dataclass(frozen=True)
class ReadStats:
    """Statistics of the kernel reads of greedy episodes."""

    episodes: int
    steps: int
    mean_return: float
    exact: float  # share of reads whose nearest node has the query's key (distance 0)
    within_threshold: float  # share whose nearest node is within dist_th (a write would merge into it)
    median_nearest: float  # median distance to the nearest node
    median_gap: float  # median Q gap between the best and the second-best action

    def line(self) -> str:
        return (f"{self.episodes} greedy episodes ({self.steps:,} steps, mean return {self.mean_return:.2f}): "
                f"the nearest node is at distance 0 for {self.exact:.0%} of the reads and within dist_th for "
                f"{self.within_threshold:.0%}; median nearest distance {self.median_nearest:.3g}, median Q gap "
                f"between the best two actions {self.median_gap:.3g}")


def greedy_read_stats(agent: GQAgent, env: gym.Env, episodes: int, seed: int,
                      player: Agent | None = None) -> ReadStats:
    """Play ``episodes`` greedy episodes of a graph agent (GQ and its subclasses) on ``env`` (reset seeds
    ``seed``, ``seed + 1``, ...) and measure, at every step, the read the action came from. ``player``: the agent
    that acts instead, if another one holds this graph (gbmr-dqn's network); the reads are then its memory's."""
    cfg, graph, player = agent.config, agent.graph, player or agent
    nearest, gaps, returns = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            key = agent.embed(obs[None])
            read = graph.read(key, cfg.k, cfg.delta, cfg.missing)
            nodes = read.nodes[0][read.nodes[0] >= 0]
            distances = np.sqrt(((graph.node_keys[nodes].astype(np.float64) - key) ** 2).sum(1))
            nearest.append(distances.min() if nodes.size else np.inf)
            q = np.sort(read.q[0])
            gaps.append(q[-1] - q[-2] if q.size > 1 else 0.0)
            obs, reward, terminated, truncated, _ = env.step(int(player.act(obs[None], explore=False)[0]))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    nearest_arr = np.asarray(nearest)
    return ReadStats(episodes, len(nearest), float(np.mean(returns)), float(np.mean(nearest_arr == 0.0)),
                     float(np.mean(nearest_arr < cfg.dist_th)), float(np.median(nearest_arr)),
                     float(np.median(gaps)))
