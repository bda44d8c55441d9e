"""SMAX (``jaxmarl``'s JAX re-implementation of SMAC) through the multi-agent interface.

Ids: ``SMAX/<scenario>`` with jaxmarl's ``map_name_to_scenario`` names (``SMAX/3m``, ``SMAX/2s3z``, ...); the
enemies follow jaxmarl's heuristic policy (``HeuristicEnemySMAX``, as SMAC's built-in AI does). SMAX is not SMAC:
the unit dynamics are simplified, so SMAC's published numbers are not directly comparable.

The env's reset/step are jitted once per env and run with JAX on the CPU, one thread, so it does not fight torch
for the cores. ``reset(seed=...)`` seeds a JAX PRNG key that the steps split, so a seed and the actions replay an
episode exactly (the runner's exact resume). The team reward is SMAX's shared ally reward (every ally gets the
same one). ``won`` (1 when the allies killed every enemy) is an episode metric, so eval.csv has the win rate.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import gymnasium as gym
import numpy as np

from gbmr.core.errors import GbmrError
from gbmr.envs.multiagent import multi_agent_spaces
from gbmr.envs.registry import EPISODE_METRICS

PREFIX = "SMAX/"
# jaxmarl's map_name_to_scenario names (jaxmarl 0.2.0), fixed here so `gbmr list` needs no jax import
SCENARIOS = ("3m", "2s3z", "25m", "3s5z", "8m", "5m_vs_6m", "10m_vs_11m", "27m_vs_30m", "3s5z_vs_3s6z",
             "3s_vs_5z", "6h_vs_8z", "smacv2_5_units", "smacv2_10_units", "smacv2_20_units")
OPTIONS: dict[str, object] = {"max_steps": 100}  # jaxmarl's SMAX episode limit


def env_ids() -> tuple[str, ...]:
    return tuple(PREFIX + s for s in SCENARIOS)


def options(env_id: str) -> dict[str, object]:
    return OPTIONS


def _import_jax_on_cpu() -> None:
    """Keep JAX off the GPU and on one CPU thread; only takes effect before jax is first imported."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def _world_state_scale(env) -> np.ndarray:
    """Factors that bring SMAX's world state into [0, 1] as SMAC's normalised state is: per unit (health fraction,
    x, y, weapon cooldown, type bits), then every unit's team and type index; the caller clips at 0 the cooldowns,
    which SMAX lets run below zero once a weapon is ready. Raw positions run to the map size
    (32) and type indices to 5; a QMIX mixer whose hypernetworks read them starts with Q_tot in the tens (on
    returns of at most 2) and drifts upwards instead of learning."""
    n_units = env.num_allies + env.num_enemies
    unit = np.ones(len(env.own_features), dtype=np.float32)
    unit[1:4] = 1.0 / env.map_width, 1.0 / env.map_height, 1.0 / float(np.max(env.unit_type_weapon_cooldowns))
    n_types = len(env.unit_type_health)
    return np.concatenate([np.tile(unit, n_units), np.ones(n_units, np.float32),
                           np.full(n_units, 1.0 / max(n_types - 1, 1), np.float32)])


@functools.cache
def _scenario(scenario: str, max_steps: int) -> tuple:
    """(n_allies, obs_dim, state_dim, n_actions, reset, step) of a scenario, built once per process: ``reset(key)``
    and ``step(key, state, actions)`` are the plain JAX functions, which the single env jits and the vector env
    vmaps. ``reset`` and ``step`` take a key and return the next one with the rest, splitting it as a host loop
    of ``key, sub = split(key)`` would, so every sub-env of a vector env sees the single env's random stream."""
    _import_jax_on_cpu()
    import jax
    import jax.numpy as jnp
    from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

    env = HeuristicEnemySMAX(scenario=map_name_to_scenario(scenario), max_steps=max_steps)
    agents = list(env.agents)
    n_allies = env.num_allies
    state_scale = _world_state_scale(env)

    def observe(state):
        obs = env.get_obs(state)
        avail = env.get_avail_actions(state)
        alive = state.state.unit_alive[:n_allies]
        world = jnp.clip(env.get_world_state(state) * state_scale, 0.0, 1.0)
        return jnp.stack([obs[a] for a in agents]) * alive[:, None], world, jnp.stack([avail[a] for a in agents]), alive

    def reset(key):
        key, sub = jax.random.split(key)
        _, state = env.reset(sub)
        return key, state, observe(state)

    def step(key, state, actions):
        key, sub = jax.random.split(key)
        _, state, rewards, dones, _ = env.step_env(sub, state, {a: actions[i] for i, a in enumerate(agents)})
        won = ~state.state.unit_alive[n_allies:].any()
        return key, state, observe(state), rewards[agents[0]], dones["__all__"], won

    state_dim = int(jax.eval_shape(reset, jax.random.PRNGKey(0))[2][1].shape[0])
    return (n_allies, int(env.observation_space(agents[0]).shape[0]), state_dim, int(env.action_space(agents[0]).n),
            reset, step)


@functools.cache
def _jitted(scenario: str, max_steps: int, vectorised: bool) -> tuple:
    """The scenario's reset and step jitted, for one env or vmapped over a leading env axis (shared by every env
    of a process, so each shape compiles once)."""
    import jax

    *_, reset, step = _scenario(scenario, max_steps)
    if vectorised:
        reset, step = jax.vmap(reset), jax.vmap(step)
    return jax.jit(reset), jax.jit(step)


def _observation(observed: tuple) -> dict[str, np.ndarray]:
    """The interface's Dict from ``observe``'s arrays, for one env or a batch of them."""
    obs, state, avail, alive = (np.asarray(x) for x in observed)
    dead = ~alive.astype(bool)  # SMAX's own mask leaves a dead ally only its stop action
    return {"obs": obs.astype(np.float32), "state": state.astype(np.float32),
            "avail_actions": avail.astype(np.int8), "agent_terminated": dead.astype(np.int8)}


def _endings(observed: tuple, done, won) -> tuple[np.ndarray, np.ndarray]:
    """(terminated, truncated): SMAX ends an episode on a win, a wipe-out or its step limit; only the limit is a
    truncation (bootstrapped)."""
    done, won = np.asarray(done, dtype=bool), np.asarray(won, dtype=bool)
    terminated = done & (won | ~np.asarray(observed[3]).any(axis=-1))
    return terminated, done & ~terminated


class SMAXAdapter(gym.Env):
    """A jaxmarl ``HeuristicEnemySMAX`` as the Dict interface; dead allies get zero observations and SMAX's stop
    action (index 4, after the four moves) only."""

    metadata: dict[str, Any] = {"render_modes": []}
    episode_metric_names = ("won",)

    def __init__(self, scenario: str, max_steps: int) -> None:
        import jax

        self._jax = jax
        n_allies, obs_dim, state_dim, self.n_actions, *_ = _scenario(scenario, max_steps)
        self._reset, self._step = _jitted(scenario, max_steps, vectorised=False)
        self.observation_space, self.action_space = multi_agent_spaces(n_allies, obs_dim, state_dim, self.n_actions)
        self._key = self._state = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        self._key, self._state, observed = self._reset(self._jax.random.PRNGKey(seed))
        return _observation(observed), {EPISODE_METRICS: {"won": 0.0}}

    def step(self, actions: np.ndarray):
        self._key, self._state, observed, reward, done, won = self._step(self._key, self._state,
                                                                         np.asarray(actions, dtype=np.int32))
        terminated, truncated = _endings(observed, done, won)
        return (_observation(observed), float(reward), bool(terminated), bool(truncated),
                {EPISODE_METRICS: {"won": float(won)}})


class SMAXVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` SMAX envs stepped by one vmapped, jitted call: a step of 8 2s3z envs costs about what one env's
    step does (one JAX dispatch, not eight). It keeps the interface's vector-env contract (no autoreset; the
    runner resets finished envs with ``reset(seed=[...], options={"reset_mask": mask})``) and each sub-env's
    random stream is the single env's, so a seed and the actions give the single env's episode.

    A vmapped lane's result depends only on that lane's inputs, so ``replay`` (the runner's exact resume)
    rebuilds every sub-env's episode through the same jitted functions the run used."""

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(self, scenario: str, max_steps: int, num_envs: int) -> None:
        import jax
        import jax.numpy as jnp

        self._jax = jax
        self.num_envs = num_envs
        n_allies, obs_dim, state_dim, n_actions, *_ = _scenario(scenario, max_steps)
        self._reset, self._step = _jitted(scenario, max_steps, vectorised=True)
        self.single_observation_space, self.single_action_space = multi_agent_spaces(n_allies, obs_dim, state_dim,
                                                                                    n_actions)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._select = jax.jit(lambda mask, new, old: jax.tree.map(
            lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o), new, old))
        self._lanes = None  # (keys, states, observed) of every sub-env, batched

    def _update(self, mask: np.ndarray, new: tuple) -> None:
        self._lanes = new if self._lanes is None or mask.all() else self._select(mask, new, self._lanes)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset the sub-envs in ``options["reset_mask"]`` (all without one), each with its seed from ``seed``
        (a list per env, or an int for env 0 that the others count up from, as gymnasium's vector envs do)."""
        super().reset(seed=seed if isinstance(seed, int) else None)
        mask = np.ones(self.num_envs, dtype=bool) if not options or "reset_mask" not in options else \
            np.asarray(options["reset_mask"], dtype=bool)
        if self._lanes is None and not mask.all():
            raise GbmrError("the first reset of a vector env must reset every sub-env")
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else \
            list(seed) if seed is not None else [None] * self.num_envs
        keys = np.zeros((self.num_envs, 2), dtype=np.uint32)  # lanes outside the mask: discarded
        for i in np.flatnonzero(mask):
            lane_seed = int(self.np_random.integers(2**31)) if seeds[i] is None else seeds[i]
            keys[i] = np.asarray(self._jax.random.PRNGKey(lane_seed))
        self._update(mask, self._reset(keys))
        metrics = {"won": np.zeros(self.num_envs), "_won": mask.copy()}
        return _observation(self._lanes[2]), {EPISODE_METRICS: metrics}

    def step(self, actions: np.ndarray):
        keys, states, observed, reward, done, won = self._step(*self._lanes[:2], np.asarray(actions, dtype=np.int32))
        self._lanes = keys, states, observed
        terminated, truncated = _endings(observed, done, won)
        metrics = {"won": np.asarray(won, dtype=np.float64), "_won": np.ones(self.num_envs, dtype=bool)}
        return (_observation(observed), np.asarray(reward, dtype=np.float64), terminated, truncated,
                {EPISODE_METRICS: metrics})

    def replay(self, seeds: np.ndarray, actions: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
        """Reset sub-env i with ``seeds[i]`` and step it through ``actions[i]``, all in one batch (envs whose
        actions ran out stand still); the observations to act on next."""
        self.reset(seed=[int(s) for s in seeds])
        padding = np.zeros(self.single_action_space.shape, dtype=np.int32)
        for t in range(max((len(a) for a in actions), default=0)):
            live = np.array([t < len(a) for a in actions])
            step_actions = np.stack([a[t] if t < len(a) else padding for a in actions]).astype(np.int32)
            keys, states, observed, *_ = self._step(*self._lanes[:2], step_actions)
            self._update(live, (keys, states, observed))
        return _observation(self._lanes[2])


def make_vector(env_id: str, num_envs: int, *, training: bool, max_steps: int) -> gym.vector.VectorEnv:
    return SMAXVectorEnv(env_id[len(PREFIX):], max_steps, num_envs)


def make(env_id: str, *, training: bool, render_mode: str | None, max_steps: int) -> gym.Env:
    return SMAXAdapter(env_id[len(PREFIX):], max_steps)
