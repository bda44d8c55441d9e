"""PyMARL's episode replay: whole episodes in padded arrays ``[E, T+1, ...]`` with a ``filled`` mask.

Off-policy value decomposition with recurrent agents replays whole episodes, so the GRU is unrolled from each
episode's first step. Step t of an episode holds what was seen before the action (obs, state, avail_actions at
index t, ``T+1`` entries so the last next-observation is kept for bootstrapping) and what followed it (action,
team reward, ``terminated`` = the episode ended by termination at t, ``agent_terminated`` = the agent was done
after t, ``filled`` = t is a real step). A time limit is not a termination: the target bootstraps past it.

The arrays grow along time when a longer episode arrives; the ring holds ``capacity`` episodes. Episodes in
progress are kept per environment (lists of rows) until they end, and are part of the state for exact resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STEP_KEYS = ("actions", "reward", "terminated", "agent_terminated")  # [E, T, ...]
SEEN_KEYS = ("obs", "state", "avail_actions")  # [E, T+1, ...]


class EpisodeBuffer:
    def __init__(self, capacity: int, n_agents: int, obs_dim: int, state_dim: int, n_actions: int,
                 num_envs: int, max_length: int = 64) -> None:
        self.capacity = capacity
        self.shapes: dict[str, tuple[tuple[int, ...], Any]] = {
            "obs": ((n_agents, obs_dim), np.float32),
            "state": ((state_dim,), np.float32),
            "avail_actions": ((n_agents, n_actions), np.int8),
            "actions": ((n_agents,), np.int64),
            "reward": ((), np.float32),
            "terminated": ((), np.float32),
            "agent_terminated": ((n_agents,), np.float32),
        }
        self.max_length = 0
        self.data: dict[str, np.ndarray] = {}
        self.length = np.zeros(capacity, dtype=np.int64)
        self._allocate(max_length)
        self.pos = 0
        self.size = 0
        self.episodes_added = 0
        self.open: list[dict[str, list[np.ndarray]]] = [self._empty() for _ in range(num_envs)]

    def _empty(self) -> dict[str, list[np.ndarray]]:
        return {key: [] for key in self.shapes}

    def _allocate(self, max_length: int) -> None:
        """(Re)size the time axis to ``max_length`` steps, keeping what is stored."""
        old, old_length = self.data, self.max_length
        self.max_length = max_length
        for key, (shape, dtype) in self.shapes.items():
            steps = max_length + (1 if key in SEEN_KEYS else 0)
            array = np.zeros((self.capacity, steps, *shape), dtype=dtype)
            if key in old:
                array[:, : old_length + (1 if key in SEEN_KEYS else 0)] = old[key]
            self.data[key] = array

    def add_step(self, env: int, obs: dict[str, np.ndarray], actions: np.ndarray, reward: float,
                 terminated: bool, next_obs: dict[str, np.ndarray], done: bool) -> None:
        """One step of env ``env``; ``done`` closes its episode with ``next_obs`` as the last observation."""
        episode = self.open[env]
        for key in SEEN_KEYS:
            episode[key].append(np.asarray(obs[key]))
        episode["actions"].append(np.asarray(actions))
        episode["reward"].append(np.asarray(reward, dtype=np.float32))
        episode["terminated"].append(np.asarray(float(terminated), dtype=np.float32))
        episode["agent_terminated"].append(np.asarray(next_obs["agent_terminated"], dtype=np.float32))
        if done:
            for key in SEEN_KEYS:
                episode[key].append(np.asarray(next_obs[key]))
            self._store(episode)
            self.open[env] = self._empty()

    def _store(self, episode: dict[str, list[np.ndarray]]) -> None:
        length = len(episode["actions"])
        if length > self.max_length:
            self._allocate(max(length, 2 * self.max_length))
        slot = self.pos
        for key, rows in episode.items():
            self.data[key][slot] = 0
            self.data[key][slot, : len(rows)] = np.stack(rows)
        self.length[slot] = length
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.episodes_added += 1

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``batch_size`` stored episodes uniformly (without replacement, as PyMARL), cut to their longest."""
        index = rng.choice(self.size, size=batch_size, replace=False)
        return self.batch(index)

    def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
        longest = int(self.length[index].max())
        out = {key: self.data[key][index, : longest + (1 if key in SEEN_KEYS else 0)] for key in self.shapes}
        out["filled"] = (np.arange(longest)[None] < self.length[index, None]).astype(np.float32)
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        stored = slice(0, self.size)
        return {
            "data": {key: array[stored].copy() for key, array in self.data.items()},
            "length": self.length[stored].copy(),
            "max_length": self.max_length,
            "pos": self.pos,
            "size": self.size,
            "episodes_added": self.episodes_added,
            "open": [{key: (np.stack(rows) if rows else np.zeros((0, *self.shapes[key][0]), self.shapes[key][1]))
                      for key, rows in episode.items()} for episode in self.open],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data, self.max_length = {}, 0
        self._allocate(int(state["max_length"]))
        self.size, self.pos = int(state["size"]), int(state["pos"])
        self.episodes_added = int(state["episodes_added"])
        for key in self.data:
            self.data[key][: self.size] = np.asarray(state["data"][key])
        self.length[: self.size] = np.asarray(state["length"])
        self.open = [{key: list(np.asarray(rows)) for key, rows in episode.items()} for episode in state["open"]]
