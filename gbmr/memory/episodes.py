"""Whole episodes for the memories that write at episode end (MFEC, NEC, GQ, GBMR), and their N-step returns.

The episodic agents write a trajectory only once it is over, because a step's value target is its (N-step)
return, known only N steps later. ``EpisodeCollector`` splits the interleaved vector-env stream into per-env
episodes; ``n_step_returns`` turns an episode's rewards and bootstrap values into those targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gbmr.core.state import to_numpy, to_saveable


def n_step_returns(rewards: np.ndarray, next_values: np.ndarray, n: int, gamma: float,
                   terminated: bool) -> np.ndarray:
    """R_t = sum_{j<n, t+j<T} gamma^j r_{t+j} + gamma^m V(s_{t+m}), m = min(n, T - t).

    ``next_values[i]`` is the value estimate of the state reached by step i, so V(s_{t+m}) = next_values[t+m-1].
    Inside the episode (t + n < T) the bootstrap is always taken. At the tail (t + n >= T) it bootstraps from
    the final state only if the episode did not terminate (truncated, or still running); after termination
    the value of what follows is 0. ``n = 0`` means Monte-Carlo (n = infinity).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    next_values = np.asarray(next_values, dtype=np.float64)
    T = len(rewards)
    if next_values.shape != (T,):
        raise ValueError(f"next_values must have shape ({T},), got {next_values.shape}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    horizon = T if n == 0 else min(n, T)
    returns = np.zeros(T)
    for j in range(horizon):  # a loop over the horizon, each step vectorised over t
        returns[: T - j] += gamma**j * rewards[j:]
    if T == 0:
        return returns
    t = np.arange(T)
    m = T - t if n == 0 else np.minimum(n, T - t)  # steps until the bootstrap state
    boot = gamma ** m.astype(np.float64) * next_values[t + m - 1]
    if terminated:
        boot[t + m >= T] = 0.0
    return returns + boot


@dataclass
class Episode:
    """One finished episode of one environment: T steps, and the observation the last step led to."""

    obs: np.ndarray  # [T, *obs_shape], the observation each action was taken in
    actions: np.ndarray  # [T]
    rewards: np.ndarray  # [T] float64
    terminated: bool  # False: truncated (the final state still has a value)
    final_obs: np.ndarray | None  # next_obs of the last step, if the collector was given next_obs
    env: int = 0  # which environment of the vector env played it


class EpisodeCollector:
    """Accumulates each environment's steps and hands back the episodes that end."""

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self._obs: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self._actions: list[list[Any]] = [[] for _ in range(num_envs)]
        self._rewards: list[list[float]] = [[] for _ in range(num_envs)]

    def __len__(self) -> int:
        """Steps held of unfinished episodes, over all environments."""
        return sum(len(a) for a in self._actions)

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminated: np.ndarray,
            truncated: np.ndarray, next_obs: np.ndarray | None = None) -> list[Episode]:
        """Record one vector step (arrays batched over environments); return the episodes it ended."""
        done = np.asarray(terminated) | np.asarray(truncated)
        ended = []
        for i in range(self.num_envs):
            self._obs[i].append(np.array(obs[i]))
            self._actions[i].append(actions[i])
            self._rewards[i].append(float(rewards[i]))
            if done[i]:
                ended.append(Episode(np.stack(self._obs[i]), np.asarray(self._actions[i], dtype=np.int64),
                                     np.asarray(self._rewards[i], dtype=np.float64), bool(terminated[i]),
                                     None if next_obs is None else np.array(next_obs[i]), i))
                self._obs[i], self._actions[i], self._rewards[i] = [], [], []
        return ended

    def state_dict(self) -> dict[str, Any]:
        """Unfinished episodes as one array per environment (None when empty)."""
        return to_saveable({
            "obs": [np.stack(o) if o else None for o in self._obs],
            "actions": [np.asarray(a, dtype=np.int64) for a in self._actions],
            "rewards": [np.asarray(r, dtype=np.float64) for r in self._rewards],
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = to_numpy(state)
        if len(state["actions"]) != self.num_envs:
            raise ValueError(f"collector state holds {len(state['actions'])} envs, this one {self.num_envs}")
        self._obs = [[] if o is None else list(o) for o in state["obs"]]
        self._actions = [a.tolist() for a in state["actions"]]
        self._rewards = [r.tolist() for r in state["rewards"]]
