"""Tabular Q-learning (Watkins 1989): the baseline of the GBMR paper's grid maze.

One-step updates Q(s, a) += lr (r + gamma max_a' Q(s', a') - Q(s, a)), no bootstrap past termination,
epsilon-greedy with random tie-breaking (with a zero-initialised table, greedy-by-index would walk into the
first wall forever). States are small integer grids (a Box of integers, e.g. the maze's (row, col)) or a
Discrete space, indexed into one dense table.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from gbmr.agents.acting import argmax_random_ties
from gbmr.agents.base import Agent
from gbmr.core.errors import GbmrError
from gbmr.core.seeding import derive_seed
from gbmr.core.state import rng_state, set_rng_state, to_numpy, to_saveable

EVAL_STREAM = 7  # greedy evaluation breaks ties with its own generator: evaluating never shifts training
MAX_STATES = 10_000_000


@dataclass
class QLearningConfig:
    lr: float = 0.01
    gamma: float = 0.9
    epsilon: float = 0.03  # the paper's "greedy with probability 0.97"
    q_init: float = 0.0


def epsilon_greedy(q: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Random action with probability epsilon, else greedy with random ties; draws a fixed amount from rng."""
    random_mask = rng.random(len(q)) < epsilon
    random_actions = rng.integers(q.shape[1], size=len(q))
    return np.where(random_mask, random_actions, argmax_random_ties(q, rng))


class QLearningAgent(Agent):
    Config = QLearningConfig
    metric_names = ("td_error",)

    @classmethod
    def _grid(cls, observation_space: gym.Space) -> tuple[np.ndarray, np.ndarray]:
        """(low, dims) of the state grid; raises GbmrError when the space is not a small integer grid."""
        if isinstance(observation_space, gym.spaces.Discrete):
            return np.array([observation_space.start]), np.array([observation_space.n])
        if not (isinstance(observation_space, gym.spaces.Box) and np.issubdtype(observation_space.dtype, np.integer)
                and observation_space.is_bounded()):
            raise GbmrError(f"qlearning needs a Discrete or bounded integer Box observation space (a grid), "
                            f"got {observation_space}")
        low, high = observation_space.low.ravel().astype(np.int64), observation_space.high.ravel().astype(np.int64)
        dims = high - low + 1
        if float(np.prod(dims.astype(np.float64))) > MAX_STATES:
            raise GbmrError(f"qlearning's table would hold {np.prod(dims.astype(np.float64)):.3g} states "
                            f"(limit {MAX_STATES}); use a graph or episodic agent")
        return low, dims

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        if not isinstance(action_space, gym.spaces.Discrete):
            raise GbmrError(f"qlearning needs a Discrete action space, got {action_space}")
        cls._grid(observation_space)

    def __init__(self, config: QLearningConfig, observation_space, action_space, num_envs, device, seed,
                 total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        self._low, self._dims = self._grid(observation_space)
        self.num_actions = int(action_space.n)
        self.q = np.full((int(np.prod(self._dims)), self.num_actions), config.q_init, dtype=np.float64)
        self.eval_rng = np.random.default_rng(derive_seed(seed, EVAL_STREAM))
        self._td: list[float] = []

    def state_index(self, obs: np.ndarray) -> np.ndarray:
        """Row of the table for each observation of a batch."""
        cells = np.asarray(obs, dtype=np.int64).reshape(len(obs), -1) - self._low
        return np.ravel_multi_index(tuple(cells.T), tuple(self._dims))

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        q = self.q[self.state_index(obs)]
        if explore:
            return epsilon_greedy(q, self.config.epsilon, self.rng)
        return argmax_random_ties(q, self.eval_rng)

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        cfg = self.config
        s, s2 = self.state_index(obs), self.state_index(next_obs)
        for i in range(self.num_envs):  # in env order: two envs in the same (s, a) update it twice
            target = rewards[i] + (0.0 if terminated[i] else cfg.gamma * self.q[s2[i]].max())
            td = target - self.q[s[i], actions[i]]
            self.q[s[i], actions[i]] += cfg.lr * td
            self._td.append(abs(float(td)))
        self.steps += self.num_envs

    def update(self) -> dict[str, float]:
        if not self._td:
            return {}
        out = {"td_error": float(np.mean(self._td))}
        self._td.clear()
        return out

    def state_dict(self) -> dict:
        return {"q": to_saveable(self.q), "rng": rng_state(self.rng), "eval_rng": rng_state(self.eval_rng),
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.q[...] = to_numpy(state["q"])
        set_rng_state(self.rng, state["rng"])
        set_rng_state(self.eval_rng, state["eval_rng"])
        self.steps = int(state["steps"])
