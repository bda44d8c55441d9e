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
def _compiled(scenario: str, max_steps: int) -> tuple:
    """(n_allies, obs_dim, state_dim, n_actions, jitted reset, jitted step) of a scenario, built once per process
    so a vector env's copies and later envs share one compilation."""
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
        _, state = env.reset(key)
        return state, observe(state)

    def step(key, state, actions):
        _, state, rewards, dones, _ = env.step_env(key, state, {a: actions[i] for i, a in enumerate(agents)})
        won = ~state.state.unit_alive[n_allies:].any()
        return state, observe(state), rewards[agents[0]], dones["__all__"], won

    state_dim = int(jax.eval_shape(reset, jax.random.PRNGKey(0))[1][1].shape[0])
    return (n_allies, int(env.observation_space(agents[0]).shape[0]), state_dim, int(env.action_space(agents[0]).n),
            jax.jit(reset), jax.jit(step))


class SMAXAdapter(gym.Env):
    """A jaxmarl ``HeuristicEnemySMAX`` as the Dict interface; dead allies get zero observations and SMAX's stop
    action (index 4, after the four moves) only."""

    metadata: dict[str, Any] = {"render_modes": []}
    episode_metric_names = ("won",)

    def __init__(self, scenario: str, max_steps: int) -> None:
        import jax

        self._jax = jax
        n_allies, obs_dim, state_dim, self.n_actions, self._reset, self._step = _compiled(scenario, max_steps)
        self.observation_space, self.action_space = multi_agent_spaces(n_allies, obs_dim, state_dim, self.n_actions)
        self._key = self._state = None
        self._won = 0.0

    def _observation(self, observed: tuple) -> dict[str, np.ndarray]:
        obs, state, avail, alive = (np.asarray(x) for x in observed)
        dead = ~alive.astype(bool)  # SMAX's own mask leaves a dead ally only its stop action
        return {"obs": obs.astype(np.float32), "state": state.astype(np.float32),
                "avail_actions": avail.astype(np.int8), "agent_terminated": dead.astype(np.int8)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        self._key, key = self._jax.random.split(self._jax.random.PRNGKey(seed))
        self._state, observed = self._reset(key)
        self._won = 0.0
        return self._observation(observed), {EPISODE_METRICS: {"won": self._won}}

    def step(self, actions: np.ndarray):
        self._key, key = self._jax.random.split(self._key)
        self._state, observed, reward, done, won = self._step(key, self._state, np.asarray(actions, dtype=np.int32))
        self._won = float(won)
        terminated = bool(done) and (self._won == 1.0 or not np.asarray(observed[3]).any())
        truncated = bool(done) and not terminated
        return (self._observation(observed), float(reward), terminated, truncated,
                {EPISODE_METRICS: {"won": self._won}})


def make(env_id: str, *, training: bool, render_mode: str | None, max_steps: int) -> gym.Env:
    return SMAXAdapter(env_id[len(PREFIX):], max_steps)
