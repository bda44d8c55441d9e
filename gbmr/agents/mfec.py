"""Model-free episodic control (MFEC, Blundell et al. 2016).

One ``EpisodicTable`` per action holds, for each embedded state phi(s), the best return ever obtained after
taking that action there. Q(s, a) is the stored value on an exact match, else the mean of the k = 11 nearest
values. When an episode ends every step is written with its Monte-Carlo return (gamma = 1 in the paper); an
exact match keeps max(old, new). The encoder is a fixed random projection (``identity`` for tabular mazes).
Acting is epsilon-greedy with ties broken at random, so an empty memory does not always pick action 0.

Also home of the two helpers NEC shares: random tie-breaking and reading a table without touching its LRU
clock (greedy evaluation must not change what the memory will evict).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from gbmr.agents.acting import argmax_random_ties, epsilon_greedy, linear_schedule, require_discrete
from gbmr.agents.base import Agent
from gbmr.core.seeding import derive_seed
from gbmr.core.state import rng_state, set_rng_state
from gbmr.memory.dnd import EpisodicTable
from gbmr.memory.episodes import EpisodeCollector, n_step_returns
from gbmr.nets.encoders import make_encoder

ENCODER_STREAM = 2  # seed stream of the encoder's projection / initial weights


@dataclass
class MFECConfig:
    capacity: int = 100_000  # entries per action (preallocated)
    k: int = 11  # neighbours averaged for a state not in the table
    gamma: float = 1.0  # the paper's undiscounted Monte-Carlo returns
    encoder: str = "random_projection"  # random_projection | identity | vae | inverse | learned (stays untrained)
    encoder_path: str = ""  # vae | inverse: the file of `gbmr pretrain-vae` | `gbmr pretrain-inverse`
    dim: int = 64
    index: str = "auto"  # exact | hnsw | auto (see gbmr.memory.knn)
    match_threshold: float = 1e-6  # squared distance under which two keys are the same state
    eps_start: float = 1.0
    eps_end: float = 0.005
    eps_fraction: float = 0.1  # fraction of the run over which epsilon decays linearly


def _no_touch(slots: np.ndarray) -> None:
    return None


@contextmanager
def untouched(tables: Sequence[Any]) -> Iterator[None]:
    """Lookups inside leave the tables' LRU clocks and use times as they were (for greedy evaluation)."""
    for table in tables:
        table._touch = _no_touch  # instance attribute shadows the method
    try:
        yield
    finally:
        for table in tables:
            del table._touch


class MFECAgent(Agent):
    Config = MFECConfig
    distributed = "central"  # acting reads the learner-side memory: the learner acts for the actors
    metric_names = ("epsilon", "memory")

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        require_discrete("mfec", observation_space, action_space)

    def __init__(self, config: MFECConfig, observation_space, action_space, num_envs, device, seed, total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        self.num_actions = int(action_space.n)
        self.encoder = make_encoder(config.encoder, observation_space, config.dim,
                                    seed=derive_seed(seed, ENCODER_STREAM), encoder_path=config.encoder_path).to(device)
        self.encoder.requires_grad_(False)
        self.tables = [
            EpisodicTable(config.capacity, self.encoder.dim, k=config.k, index=config.index, device=device,
                          match_threshold=config.match_threshold)
            for _ in range(self.num_actions)
        ]
        self.collector = EpisodeCollector(num_envs)
        self.epsilon = config.eps_start
        self._written = 0  # entries written since the last update() report

    @torch.no_grad()
    def embed(self, obs: np.ndarray) -> np.ndarray:
        return self.encoder(torch.as_tensor(np.asarray(obs), device=self.device)).cpu().numpy()

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q ``[B, A]`` of a batch of observations (touches the tables' LRU clocks)."""
        keys = self.embed(obs)
        return np.stack([table.lookup(keys) for table in self.tables], axis=1)

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        if not explore:
            with untouched(self.tables):
                return argmax_random_ties(self.q_values(obs), self.rng)
        return epsilon_greedy(self.q_values, obs, self.epsilon, self.num_actions, self.rng)

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        for episode in self.collector.add(obs, actions, rewards, terminated, truncated):
            self.write_episode(episode.obs, episode.actions, episode.rewards)
        self.steps += self.num_envs
        cfg = self.config
        self.epsilon = linear_schedule(cfg.eps_start, cfg.eps_end, cfg.eps_fraction * self.total_steps, self.steps)

    def write_episode(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Write every step with its Monte-Carlo return (n = 0: no bootstrap, also after a truncation)."""
        returns = n_step_returns(rewards, np.zeros(len(rewards)), 0, self.config.gamma, terminated=True)
        keys = self.embed(obs)
        for a in np.unique(actions):
            mask = actions == a
            self.tables[a].write(keys[mask], returns[mask])
        self._written += len(actions)

    def update(self) -> dict[str, float]:
        if not self._written:
            return {}
        self._written = 0
        return {"epsilon": self.epsilon, "memory": float(sum(len(t) for t in self.tables))}

    def state_dict(self) -> dict:
        return {
            "encoder": self.encoder.state_dict(),
            "tables": [table.state_dict() for table in self.tables],
            "collector": self.collector.state_dict(),
            "rng": rng_state(self.rng),
            "counters": {"steps": self.steps, "epsilon": self.epsilon, "written": self._written},
        }

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        for table, table_state in zip(self.tables, state["tables"], strict=True):
            table.load_state_dict(table_state)
        self.collector.load_state_dict(state["collector"])
        set_rng_state(self.rng, state["rng"])
        counters = state["counters"]
        self.steps, self.epsilon, self._written = counters["steps"], counters["epsilon"], counters["written"]
