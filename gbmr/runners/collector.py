"""Stepping a vector env for the training loops, apart from the loops themselves (single-process or a Ray actor's).

Exact resume. Every episode of environment ``i`` starts from ``reset(seed=derive_seed(seed, i, n))``, where ``i``
is the environment's index in the whole run (a distributed actor holds a slice of them), and the collector keeps
the actions taken since that reset. Environments are deterministic given the reset seed and the actions, so on
resume each environment is reset with its episode's seed and the recorded actions are replayed, which puts it
back exactly where it was.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from gbmr.core.seeding import derive_seed
from gbmr.envs.registry import EPISODE_METRICS

TRAIN_STREAM = 0  # seed streams: training episodes of env i use stream i, evaluation its own range


class Step(NamedTuple):
    """One vector step. ``next_obs`` holds the true final observation where an episode ended; ``finished``
    lists (env, return, length, metrics) of those episodes, in env order: ``metrics`` is what the env reported in
    its last ``info["episode_metrics"]`` (empty for most envs)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    finished: list[tuple[int, float, int, dict[str, float]]]


def batch_of_one(obs: Any) -> Any:
    """A single environment's observation as a batch of one (Dict observations: each array)."""
    return {k: v[None] for k, v in obs.items()} if isinstance(obs, dict) else obs[None]


def _as_batch(obs: Any, dtype: Any) -> Any:
    if isinstance(obs, dict):
        return {k: np.asarray(v)[None] for k, v in obs.items()}
    return np.array(obs, dtype=dtype)[None]


def _replace_rows(obs: Any, mask: np.ndarray, new: Any) -> Any:
    """``obs`` with the rows of ``mask`` taken from ``new`` (a copy; Dict observations key by key)."""
    if isinstance(obs, dict):
        return {k: _replace_rows(v, mask, new[k]) for k, v in obs.items()}
    obs = obs.copy()
    obs[mask] = new[mask]
    return obs


def env_state(env: gym.Env) -> dict | None:
    """State an environment carries across episodes (e.g. a dynamic maze's episode counter), if any.

    Taken right after a reset; loading it and resetting again restarts that same episode."""
    getter = getattr(env.unwrapped, "state_dict", None)
    return getter() if callable(getter) else None


class Collector:
    """Owns the training environments: episode seeds, returns and lengths, and the action log for resume."""

    def __init__(self, envs: gym.vector.VectorEnv, seed: int, env_ids: np.ndarray | None = None) -> None:
        n = envs.num_envs
        self.envs = envs
        self.seed = seed
        self.env_ids = np.arange(n) if env_ids is None else np.asarray(env_ids)  # indices in the whole run
        self.episode_index = np.zeros(n, dtype=np.int64)  # per-env count of episodes started
        self.episode_seed = np.zeros(n, dtype=np.int64)
        self.episode_env_state: list[dict | None] = [None] * n  # env state of the episode (see env_state)
        self.episode_actions: list[list[Any]] = [[] for _ in range(n)]  # since the last real reset
        self.episode_resets: list[list[int]] = [[] for _ in range(n)]  # action counts at continuing resets
        self.episode_return = np.zeros(n)
        self.episode_length = np.zeros(n, dtype=np.int64)
        self.obs: np.ndarray | None = None

    @property
    def num_envs(self) -> int:
        return self.envs.num_envs

    def start(self) -> np.ndarray:
        """Reset every environment into its first episode; the observations the first actions are chosen on."""
        self.obs = self._reset(np.ones(self.num_envs, dtype=bool))
        return self.obs

    def step(self, actions: np.ndarray) -> Step:
        """Step every env with ``actions``, account the episodes, reset the ones that ended (``self.obs`` is
        then the next observations to act on)."""
        obs = self.obs
        next_obs, rewards, terminated, truncated, infos = self._step_envs(actions)
        for i in range(self.num_envs):
            self.episode_actions[i].append(actions[i])
        self.episode_return += rewards
        self.episode_length += 1
        done = terminated | truncated
        finished = [(int(i), float(self.episode_return[i]), int(self.episode_length[i]), _episode_metrics(infos, i))
                    for i in np.flatnonzero(done)]
        self.obs = self._reset(done, next_obs) if done.any() else next_obs
        return Step(obs, actions, rewards, next_obs, terminated, truncated, finished)

    def _step_envs(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list | dict]:
        """``envs.step``. A single environment is stepped directly, with the vector env's results (batched,
        copied, in the space's dtype) at half its ~12 us a step; the vector env, which does not autoreset, keeps
        no state that this skips. The infos come as the vector env's dict of arrays, or a list of one info."""
        if self.num_envs > 1:
            return self.envs.step(actions)
        obs, reward, terminated, truncated, info = self.envs.envs[0].step(actions[0])
        return (_as_batch(obs, self.envs.single_observation_space.dtype),
                np.array([reward], dtype=np.float64), np.array([terminated]), np.array([truncated]), [info])

    def _reset(self, mask: np.ndarray, obs: np.ndarray | None = None) -> np.ndarray:
        """Reset the masked environments with their next episode seeds; return the batch of observations.

        An Atari env with episodic life may continue its game instead (``info["life_reset"]``): then the seed
        is ignored, so the episode keeps its recorded start and actions, plus the point where it was reset.
        """
        n = self.num_envs
        seeds: list[int | None] = [None] * n
        for i in np.flatnonzero(mask):
            seeds[i] = derive_seed(self.seed, TRAIN_STREAM + int(self.env_ids[i]), int(self.episode_index[i]))
            self.episode_index[i] += 1
        reset_obs, infos = self.envs.reset(seed=seeds, options={"reset_mask": mask})
        continued = np.asarray(infos.get("life_reset", np.zeros(n, dtype=bool)))
        for i in np.flatnonzero(mask):
            if continued[i]:
                self.episode_resets[i].append(len(self.episode_actions[i]))
            else:
                self.episode_seed[i] = seeds[i]
                self.episode_env_state[i] = self._env_state(i)
                self.episode_actions[i] = []
                self.episode_resets[i] = []
        self.episode_return[mask] = 0.0
        self.episode_length[mask] = 0
        if obs is None:
            return reset_obs
        return _replace_rows(obs, mask, reset_obs)

    def _env_state(self, i: int) -> dict | None:
        """Sub-env ``i``'s cross-episode state; a batched vector env (no ``envs`` list) keeps none."""
        sub_envs = getattr(self.envs, "envs", None)
        return None if sub_envs is None else env_state(sub_envs[i])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """numpy arrays and plain values (the caller makes them saveable)."""
        return {
            "episode_index": self.episode_index.copy(),
            "episode_seed": self.episode_seed.copy(),
            "episode_env_state": list(self.episode_env_state),
            "episode_actions": [np.asarray(a) for a in self.episode_actions],
            "episode_resets": [list(r) for r in self.episode_resets],
            "episode_return": self.episode_return.copy(),
            "episode_length": self.episode_length.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and bring every environment back to where it was by replaying its episode."""
        self.episode_index = np.asarray(state["episode_index"]).copy()
        self.episode_seed = np.asarray(state["episode_seed"]).copy()
        self.episode_env_state = list(state["episode_env_state"])
        self.episode_actions = [list(a) for a in state["episode_actions"]]
        self.episode_resets = [list(r) for r in state["episode_resets"]]
        self.episode_return = np.asarray(state["episode_return"]).copy()
        self.episode_length = np.asarray(state["episode_length"]).copy()
        self.obs = self._replay_episodes()

    def _replay_episodes(self) -> np.ndarray:
        """Reset each environment with its episode's seed and replay its actions (a batched vector env replays
        all of them in one batch, through the functions the run stepped them with)."""
        if hasattr(self.envs, "replay"):
            return self.envs.replay(self.episode_seed, self.episode_actions)
        observations = []
        for i, env in enumerate(self.envs.envs):
            if self.episode_env_state[i] is not None:
                env.unwrapped.load_state_dict(self.episode_env_state[i])
            obs, _ = env.reset(seed=int(self.episode_seed[i]))
            resets = set(self.episode_resets[i])
            for t, action in enumerate(self.episode_actions[i]):
                if t in resets:
                    obs, _ = env.reset()
                obs, *_ = env.step(action)
            if len(self.episode_actions[i]) in resets:
                obs, _ = env.reset()
            observations.append(obs)
        if isinstance(observations[0], dict):
            return {k: np.stack([o[k] for o in observations]) for k in observations[0]}
        return np.stack(observations)


def _episode_metrics(infos: list | dict, i: int) -> dict[str, float]:
    """Env ``i``'s ``info["episode_metrics"]`` from a list of infos or a vector env's dict of arrays (where each
    key has a mask ``_key`` saying which envs reported it)."""
    if isinstance(infos, list):
        return {k: float(v) for k, v in infos[i].get(EPISODE_METRICS, {}).items()}
    metrics = infos.get(EPISODE_METRICS, {})
    return {k: float(v[i]) for k, v in metrics.items() if not k.startswith("_") and metrics[f"_{k}"][i]}
