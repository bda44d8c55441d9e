"""One multi-agent interface for the cooperative environments (PyMARL's ``MultiAgentEnv``, as a Gymnasium env).

A multi-agent environment here is a ``gymnasium.Env`` whose observation is a Dict of fixed-shape arrays, so
the single-agent runner, its vector env, its exact resume (reset seed + action replay) and its run folder
serve it unchanged:

- ``obs``              ``[n_agents, obs_dim]`` float32, each agent's own observation (zero-padded to the widest)
- ``state``            ``[state_dim]`` float32, the global state the mixer conditions on
- ``avail_actions``    ``[n_agents, n_actions]`` int8, 1 where the action is allowed now
- ``agent_terminated`` ``[n_agents]`` int8, 1 once that agent is done (dead or finished) within the episode

The action is a MultiDiscrete ``[n_actions] * n_agents`` (one action per agent) and the reward is one team reward
per step, as each family defines it: PettingZoo envs (MPE) and LBF, whose agents earn rewards of their own, give
the sum of the agents' rewards (EPyMARL's ``common_reward`` with ``reward_scalarisation: sum``; simple_spread's
agents each get the shared coverage term plus half their own collision penalty, ``local_ratio`` 0.5); SMAX gives
every ally the same shared reward, and the team reward is that one value, not its sum over the allies.
An agent whose episode ended gets zero observations and only a no-op available (action 0; SMAX: its stop, 4).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Dict, MultiDiscrete

from gbmr.core.errors import GbmrError

KEYS = ("obs", "state", "avail_actions", "agent_terminated")


def is_multi_agent(observation_space: gym.Space) -> bool:
    """Whether a space is this interface's observation (what the agent registry checks algorithms against)."""
    return isinstance(observation_space, Dict) and set(observation_space.spaces) == set(KEYS)


def multi_agent_spaces(n_agents: int, obs_dim: int, state_dim: int, n_actions: int) -> tuple[Dict, MultiDiscrete]:
    observation_space = Dict({
        "obs": Box(-np.inf, np.inf, (n_agents, obs_dim), np.float32),
        "state": Box(-np.inf, np.inf, (state_dim,), np.float32),
        "avail_actions": Box(0, 1, (n_agents, n_actions), np.int8),
        "agent_terminated": Box(0, 1, (n_agents,), np.int8),
    })
    return observation_space, MultiDiscrete([n_actions] * n_agents)


def dimensions(observation_space: gym.Space) -> tuple[int, int, int, int]:
    """(n_agents, obs_dim, state_dim, n_actions) of a multi-agent observation space."""
    if not is_multi_agent(observation_space):
        raise GbmrError(f"expected a multi-agent observation space (Dict of {', '.join(KEYS)}), "
                        f"got {observation_space}")
    n_agents, obs_dim = observation_space["obs"].shape
    return n_agents, obs_dim, observation_space["state"].shape[0], observation_space["avail_actions"].shape[1]


def _pad(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        flat = np.asarray(row, dtype=np.float32).reshape(-1)
        out[i, : flat.size] = flat
    return out


class PettingZooAdapter(gym.Env):
    """A PettingZoo ``ParallelEnv`` with Discrete actions as the Dict interface above.

    The agent list is fixed at construction (``possible_agents``); agents that leave get the dead-agent rows.
    The state is the env's ``state()`` where it has one, else the agents' observations side by side.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env: Any) -> None:
        self.env = env
        self.agents = list(env.possible_agents)
        n = len(self.agents)
        for agent in self.agents:
            if not isinstance(env.action_space(agent), gym.spaces.Discrete):
                raise GbmrError(f"multi-agent adapter needs Discrete actions, agent '{agent}' has "
                                f"{env.action_space(agent)}")
        self.n_actions = max(int(env.action_space(a).n) for a in self.agents)
        self.obs_dim = max(int(np.prod(env.observation_space(a).shape)) for a in self.agents)
        try:
            self.state_dim = int(np.prod(env.state_space.shape))
            self._has_state = True
        except (AttributeError, NotImplementedError):
            self.state_dim, self._has_state = n * self.obs_dim, False
        self.observation_space, self.action_space = multi_agent_spaces(n, self.obs_dim, self.state_dim,
                                                                       self.n_actions)
        self._done = np.zeros(n, dtype=np.int8)

    def _observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(self.agents)
        rows = [obs[a] if a in obs and not self._done[i] else np.zeros(0) for i, a in enumerate(self.agents)]
        agent_obs = _pad(rows, self.obs_dim)
        avail = np.zeros((n, self.n_actions), dtype=np.int8)
        for i, agent in enumerate(self.agents):
            if self._done[i]:
                avail[i, 0] = 1
            else:
                avail[i, : int(self.env.action_space(agent).n)] = 1
        state = (np.asarray(self.env.state(), dtype=np.float32).reshape(-1) if self._has_state
                 else agent_obs.reshape(-1))
        return {"obs": agent_obs, "state": state, "avail_actions": avail, "agent_terminated": self._done.copy()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, _ = self.env.reset(seed=seed)
        self._done = np.zeros(len(self.agents), dtype=np.int8)
        return self._observation(obs), {}

    def step(self, actions: np.ndarray):
        live = [a for i, a in enumerate(self.agents) if not self._done[i] and a in self.env.agents]
        index = {a: i for i, a in enumerate(self.agents)}
        obs, rewards, terminations, truncations, _ = self.env.step({a: int(actions[index[a]]) for a in live})
        reward = float(sum(rewards.get(a, 0.0) for a in live))
        for agent in live:
            if terminations.get(agent, False):
                self._done[index[agent]] = 1
        truncated = bool(live) and all(truncations.get(a, False) for a in live if not self._done[index[a]])
        terminated = bool(self._done.all())
        if not self.env.agents and not terminated:  # every agent left without a termination: a time limit
            truncated = True
        return self._observation(obs), reward, terminated, truncated and not terminated, {}


class LBFAdapter(gym.Env):
    """Level-Based Foraging (lbforaging 2.x, a Gymnasium env with Tuple spaces) as the Dict interface.

    Available actions are LBF's valid moves (no walking into walls or food, LOAD only next to food). Observations
    are LBF's (row, col, level) triples of food and players divided by their largest possible values (the
    observation space's ``high``), so they lie in [0, 1], an absent entity keeping LBF's (-1, -1, 0): raw
    coordinates up to 7 on 8x8 made the untrained mixer's Q_tot ~15 against returns of at most 1, and with
    nothing terminating most episodes the bootstrapped targets kept that scale while the first rare rewards
    were lost in it (tests/test_multiagent.py). The state is the agents' observations side by side (as EPyMARL
    builds it for LBF). LBF reports its time limit as ``done``;
    here an episode that ends with food left is a truncation, so the learner bootstraps past it. Players' old
    positions are cleared before a reset (see ``reset``).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env: gym.Env) -> None:
        self.env = env
        self.base = env.unwrapped
        n = self.base.n_agents
        self.n_actions = int(env.action_space[0].n)
        self.obs_dim = int(env.observation_space[0].shape[0])
        self._obs_high = np.maximum(env.observation_space[0].high, 1).astype(np.float32)
        self.observation_space, self.action_space = multi_agent_spaces(n, self.obs_dim, n * self.obs_dim,
                                                                       self.n_actions)

    def _observation(self, obs: tuple, done: bool) -> dict[str, np.ndarray]:
        raw = np.stack(obs).astype(np.float32)
        agent_obs = np.where(raw < 0, raw, raw / self._obs_high)
        n = len(agent_obs)
        avail = np.zeros((n, self.n_actions), dtype=np.int8)
        for i, player in enumerate(self.base.players):
            for action in self.base._valid_actions[player]:
                avail[i, action.value] = 1
        return {"obs": agent_obs, "state": agent_obs.reshape(-1), "avail_actions": avail,
                "agent_terminated": np.full(n, int(done), dtype=np.int8)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # lbforaging places each player on a cell no player occupies, counting the previous episode's final
        # positions: forget them, so an episode depends only on its seed and actions (what exact resume replays).
        for player in self.base.players:
            player.position = None
        obs, _ = self.env.reset(seed=seed)
        return self._observation(obs, False), {}

    def step(self, actions: np.ndarray):
        obs, rewards, done, truncated, _ = self.env.step(tuple(int(a) for a in actions))
        food_left = self.base.field.sum() > 0
        terminated = bool(done) and not food_left
        truncated = (bool(done) and food_left) or bool(truncated)
        return self._observation(obs, terminated), float(np.sum(rewards)), terminated, truncated, {}
