"""GBMR-DQN: a DQN whose Q-network is also pulled towards the memory graph's reconstructed values.

The memory-graph agents act from k-NN reads of their memory, so what they know of a state never reaches a state
they have not stored: on MinAtar games where observations seldom recur (Asterix, Freeway, Seaquest) they fall
far behind DQN. ERLAM (Zhu et al., "Episodic Reinforcement Learning with Associative Memory", ICLR 2020) keeps
the graph and its value propagation but hands what it finds to a Q-network, which generalises; the network is
trained on the TD loss plus a regression onto the memory's value of the same state and action:

    L = TD loss + memory_weight * mean_i (Q(s_i, a_i) - Q_G(s_i, a_i))^2

over the replayed batch, Q_G(s, a) the value of action a at the graph node of s. Rows whose node is gone (evicted,
or drifted by merges beyond dist_th of s) or never took a contribute nothing. With ``memory_loss: lower_bound``
only the part max(Q_G - Q, 0)^2 counts: the graph's values are returns the agent has achieved (value iteration
over the transitions it has seen), so they bound Q* from below where the world is deterministic, and states or
actions the graph has barely explored then do not drag Q down (the bound of Optimality Tightening, He et al.
2017, and of Self-Imitation Learning, Oh et al. 2018). The graph is a GBMR agent's memory
(``gbmr.agents.gbmr``), fed every transition and reconstructed as that agent would (by default: value-iteration
sweeps, as ``gbmr-sweep``); its keys ``memory`` (a mapping of GBMR's hyperparameters) are separate from the
network's. Acting and evaluation use the network, as DQN does, unless ``memory_act: max``: then, in a state the
graph holds (its nearest node within dist_th), an action the graph has taken there is valued at
max(Q(s, a), Q_G(s, a)), the lower bound applied when acting too. Where observations recur (MinAtar Breakout: 98%
of GBMR's greedy reads find their own state) the graph's converged values then act long before the network has
absorbed them; where they do not (Freeway: none) the network acts alone. It costs a nearest-node search per
step. Under prioritised replay the memory term is not importance-weighted: it is a regulariser on the states
replayed, not a sample of the TD error.

Finding a replayed state's node by a k-NN search would cost milliseconds a batch at 1e5 nodes (HNSW on 32 queries
under load): more than the gradient step. Instead each replay slot remembers the node its step was written to.
With 1-step replay (required) every vector step fills ``num_envs`` consecutive slots in environment order, so
the slots of an episode that just ended follow from the step count and its length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gbmr.agents.dqn import DQNAgent, DQNConfig
from gbmr.agents.gbmr import GBMRSweepAgent, GBMRSweepConfig
from gbmr.config import make_agent_config
from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.core.seeding import derive_seed
from gbmr.memory.episodes import Episode
from gbmr.memory.replay import Batch

MEMORY_LOSSES = ("squared", "lower_bound")
MEMORY_ACTS = ("off", "max")
MEMORY_STREAM = 3  # the memory agent's own seed (its projection matrix and RNG)


@dataclass
class GBMRDQNConfig(DQNConfig):
    memory_weight: float = 0.1  # lambda of the memory term (ERLAM); 0 = plain DQN beside an unused graph
    memory_loss: str = "squared"  # squared: (Q - Q_G)^2 (ERLAM) | lower_bound: max(Q_G - Q, 0)^2, only pulls Q up
    memory_act: str = "off"  # off: act by the network | max: by max(Q, Q_G) where the graph holds the state
    memory: dict[str, Any] = field(default_factory=dict)  # hyperparameters of the graph (gbmr-sweep's keys)


class _Memory(GBMRSweepAgent):
    """The graph agent, also handing out the node ids of each episode it writes (with its environment)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.written: list[tuple[int, np.ndarray]] = []

    def after_write(self, episode: Episode, nodes: np.ndarray) -> None:
        super().after_write(episode, nodes)
        self.written.append((episode.env, nodes))


class GBMRDQNAgent(DQNAgent):
    Config = GBMRDQNConfig
    metric_names = DQNAgent.metric_names + ("nodes", "edges", "memory_share", "memory_q", "critical", "paths")

    @classmethod
    def async_problem(cls, config: GBMRDQNConfig) -> str | None:
        return "its replay-slot to graph-node map follows whole vector steps"

    def __init__(self, config: GBMRDQNConfig, observation_space, action_space, num_envs, device, seed, total_steps):
        if config.memory_weight < 0:
            raise GbmrError(f"memory_weight must be >= 0, got {config.memory_weight}")
        if config.memory_loss not in MEMORY_LOSSES:
            raise unknown_choice("memory_loss", config.memory_loss, MEMORY_LOSSES)
        if config.memory_act not in MEMORY_ACTS:
            raise unknown_choice("memory_act", config.memory_act, MEMORY_ACTS)
        if config.n_step != 1:
            raise GbmrError(f"gbmr-dqn needs n_step=1 (its replay slots map to graph nodes), got {config.n_step}")
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        memory_config = make_agent_config(GBMRSweepConfig, dict(config.memory))
        if config.memory_act != "off" and memory_config.layout != "joint":
            raise GbmrError(f"memory_act={config.memory_act} reads one node per state: it needs the memory's "
                            f"layout 'joint', got {memory_config.layout!r}")
        self.memory = _Memory(memory_config, observation_space, action_space, num_envs, device,
                              derive_seed(seed, MEMORY_STREAM), total_steps)
        self.slot_node = np.full(config.buffer_size, -1, dtype=np.int64)  # graph node of each replay slot's step
        self._memory_metrics: dict[str, float] = {}

    @property
    def graph_agent(self) -> GBMRSweepAgent:
        """The memory that holds the graph (``gbmr inspect``); the network acts."""
        return self.memory

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        capacity, vector_steps = len(self.slot_node), self.steps // self.num_envs
        self.slot_node[(vector_steps * self.num_envs + np.arange(self.num_envs)) % capacity] = -1  # overwritten
        super().observe(obs, actions, rewards, next_obs, terminated, truncated)
        self.memory.observe(obs, actions, rewards, next_obs, terminated, truncated)
        for env, nodes in self.memory.written:
            length = len(nodes)
            if length * self.num_envs <= capacity:  # else its first steps' slots hold newer steps already
                steps = vector_steps + 1 - length + np.arange(length)  # the vector step of each of its steps
                self.slot_node[(steps * self.num_envs + env) % capacity] = nodes
        self.memory.written.clear()

    def update(self) -> dict[str, float]:
        memory = self.memory.update()  # a learned memory encoder trains here; graph sizes at episode ends
        memory.pop("epsilon", None)  # the memory never acts
        metrics = super().update()
        if metrics:
            metrics.update(self._memory_metrics)
        return {**memory, **metrics}

    def _greedy(self, obs: np.ndarray) -> np.ndarray:
        if self.config.memory_act == "off":
            return super()._greedy(obs)
        with torch.inference_mode():
            q = self.policy.q(torch.as_tensor(obs, device=self.device)).cpu().numpy()
        memory_q, known = self.known_values(obs)
        return np.where(known, np.maximum(q, memory_q), q).argmax(axis=1)

    def known_values(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Q_G(s, a) [B, num_actions] at the nearest node of each state, and where it holds (that node within
        dist_th of s, with an out-edge labelled a)."""
        graph = self.memory.graph
        nodes, distance2 = graph.nearest(self.memory.embed(obs), 0, 1)
        nodes, distance2 = nodes[:, 0], distance2[:, 0]
        near = (nodes >= 0) & (distance2 < self.memory.config.dist_th**2)
        q, has = graph.node_q(np.where(near, nodes, graph.terminal_node))
        return q, has & near[:, None]

    def memory_values(self, obs: np.ndarray, actions: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Q_G(s_i, a_i) at the node of replay slot i, and which rows have one (a node still within dist_th
        of s_i, with an out-edge labelled a_i)."""
        graph = self.memory.graph
        nodes = self.slot_node[slots]
        found = nodes >= 0
        nodes = np.where(found, nodes, graph.terminal_node)
        distance2 = np.square(self.memory.embed(obs) - graph.node_keys[nodes]).sum(axis=1)
        q, has = graph.node_q(nodes)
        rows = np.arange(len(actions))
        valid = found & graph.node_alive[nodes] & (distance2 < self.memory.config.dist_th**2) & has[rows, actions]
        return q[rows, actions], valid

    def extra_loss(self, batch: Batch, q: torch.Tensor) -> torch.Tensor | None:
        if self.config.memory_weight == 0:
            return None
        values, valid = self.memory_values(batch.obs, np.asarray(batch.actions, dtype=np.int64), batch.indices)
        self._memory_metrics = {"memory_share": float(valid.mean()),
                                "memory_q": float(values[valid].mean()) if valid.any() else float("nan")}
        if not valid.any():
            return None
        mask = torch.as_tensor(valid, device=self.device)
        target = torch.as_tensor(values, dtype=q.dtype, device=self.device)
        error = target - q
        if self.config.memory_loss == "lower_bound":
            error = error.clamp(min=0.0)
        return self.config.memory_weight * (error.square() * mask).mean()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "memory": self.memory.state_dict(),
                "slot_node": torch.from_numpy(self.slot_node.copy())}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        self.slot_node = state["slot_node"].numpy().copy()
