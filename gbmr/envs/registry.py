"""Environment ids, option checking, and the two helpers several families share.

Each family module (``classic``, ``minatar``, ``atari``, ``maze``, ``memory``, ``mario``) exposes ``env_ids()``,
``options(env_id)`` (valid options with their defaults) and ``make(env_id, *, training, render_mode, **options)``,
and may add ``make_vector(env_id, num_envs, *, training, **options)`` when it batches envs better itself.
This module dispatches to them and imports them lazily, so ``import gbmr.envs`` stays cheap (MinAtar alone takes
~2 s to import) and a broken optional dependency only hurts its own family. An id none of them has goes to the
``generic`` family (``gym``): any id registered with Gymnasium, or ``module:EnvId``.
"""

from __future__ import annotations

import importlib
from functools import partial
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box

from gbmr.core.errors import GbmrError, unknown_choice

FAMILIES = ("classic", "minatar", "atari", "maze", "memory", "mpe", "lbf", "mario", "smax")  # fixed lists of ids, tried
# in this order
GENERIC = "gym"  # the family of module ``generic``, tried last: whatever Gymnasium has registered
_LISTED = 12  # a family with more ids (Atari: >100) is summarised in the unknown-id error


def _family_module(family: str) -> ModuleType:
    return importlib.import_module(f"gbmr.envs.{'generic' if family == GENERIC else family}")


def list_env_ids() -> dict[str, list[str]]:
    """Family name -> sorted environment ids of the fixed families (what ``gbmr list`` prints); the generic
    family's hundreds of ids are summarised by ``generic.summary()`` instead."""
    return {family: sorted(_family_module(family).env_ids()) for family in FAMILIES}


def env_family(env_id: str) -> str:
    """The family of ``env_id``; an unknown id raises a GbmrError that suggests the closest valid one."""
    for family in FAMILIES:
        if env_id in _family_module(family).env_ids():
            return family
    generic = _family_module(GENERIC)
    if generic.accepts(env_id):  # imports the id's module first, if it names one
        return GENERIC
    by_family = list_env_ids()
    listing = "; ".join(f"{family}: {', '.join(ids)}" if len(ids) <= _LISTED else
                        f"{family}: {len(ids)} ids such as {', '.join(ids[:3])} (`gbmr list` prints them all)"
                        for family, ids in by_family.items())
    known = {i for ids in by_family.values() for i in ids} | generic.env_ids()
    name = generic.split_id(env_id)[1]  # a module that imported fine: only the id can be wrong
    raise unknown_choice("environment id", name, known, f"{listing}; {GENERIC}: {generic.summary()}")


def env_options(env_id: str) -> dict[str, object]:
    """The options ``make_env`` accepts for ``env_id``, with their defaults."""
    return dict(_family_module(env_family(env_id)).options(env_id))


def _resolve_options(env_id: str, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``given``; unknown names and wrong types are user errors, caught here."""
    defaults = env_options(env_id)
    for name, value in given.items():
        if name not in defaults:
            if not defaults:
                raise GbmrError(f"environment '{env_id}' takes no options (got '{name}')")
            valid = ", ".join(f"{k}={v!r}" for k, v in sorted(defaults.items()))
            # keep unknown_choice's did-you-mean, but list the options with their defaults
            hint = str(unknown_choice("option", name, defaults)).split(" Valid choices:")[0]
            raise GbmrError(f"{hint} Valid options of '{env_id}' ({env_family(env_id)}): {valid}")
        expected = type(defaults[name])
        if not (type(value) is expected or (expected is float and type(value) is int)):
            raise GbmrError(
                f"option '{name}' of environment '{env_id}' must be {expected.__name__}, got {value!r}"
            )
    return {**defaults, **{k: type(defaults[k])(v) for k, v in given.items()}}


def make_env(
    env_id: str,
    seed: int | None = None,
    *,
    training: bool = True,
    render_mode: str | None = None,
    **options: Any,
) -> gym.Env:
    """One environment. ``training=False`` builds the evaluation version (no episodic life, no reward
    clipping) whatever the options say. ``seed`` seeds only the action space; the runner seeds episodes
    through ``reset(seed=...)`` so that an episode is a function of its reset seed and its actions."""
    resolved = _resolve_options(env_id, options)
    env = _family_module(env_family(env_id)).make(
        env_id, training=training, render_mode=render_mode, **resolved
    )
    if seed is not None:
        env.action_space.seed(seed)
    return env


def make_vector_env(
    env_id: str, num_envs: int, *, training: bool = True, **options: Any
) -> gym.vector.VectorEnv:
    """``num_envs`` copies in one process. Autoreset is disabled: the runner resets finished sub-envs itself
    with ``reset(seed=[...], options={"reset_mask": mask})`` so it controls every episode's seed. A family with
    a batched env of its own (``make_vector``, e.g. SMAX's vmapped JAX env) builds it for two or more envs."""
    if num_envs < 1:
        raise GbmrError(f"num_envs must be at least 1, got {num_envs}")
    resolved = _resolve_options(env_id, options)  # fail before building anything
    family = _family_module(env_family(env_id))
    if num_envs > 1 and hasattr(family, "make_vector"):
        return family.make_vector(env_id, num_envs, training=training, **resolved)
    return make_sync_vector_env(env_id, num_envs, training=training, **options)


def make_sync_vector_env(
    env_id: str, num_envs: int, *, training: bool = True, **options: Any
) -> gym.vector.SyncVectorEnv:
    """``num_envs`` single envs stepped one after another (what ``make_vector_env`` builds for a family without
    a batched env of its own), autoreset disabled."""
    return gym.vector.SyncVectorEnv(
        [partial(make_env, env_id, training=training, **options) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )


def register_once(env_id: str, entry_point: str, **kwargs: Any) -> None:
    """Register with gymnasium unless already there (re-registering only warns, but it is noise)."""
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs)


class ChannelFirst(gym.ObservationWrapper):
    """Permute an image observation (HWC) to CHW in ``dtype``, contiguous, so a CNN takes it as is.
    The bounds of the space are kept, so a network can scale by ``observation_space.high``."""

    def __init__(self, env: gym.Env, axes: tuple[int, int, int], dtype: type = np.uint8):
        super().__init__(env)
        space = env.observation_space
        self._axes = axes
        self.observation_space = Box(
            low=int(np.min(space.low)),
            high=int(np.max(space.high)),
            shape=tuple(space.shape[a] for a in axes),
            dtype=dtype,
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(observation.transpose(self._axes), dtype=self.observation_space.dtype)


class LayoutSchedule:
    """Episode counter for environments whose layout changes every ``change_every`` episodes (0: never).

    ``state_dict()`` names the episode in progress; after ``load_state_dict()`` the next ``reset()`` starts
    that same episode again, so a resumed run that re-resets and replays the episode's actions sees the
    layout it saw before the interruption.
    """

    change_every: int = 0
    _episode_count: int = 0  # resets done so far

    def _next_layout_index(self) -> int:
        """Count one more episode and return the index of the layout it uses."""
        index = self._episode_count // self.change_every if self.change_every else 0
        self._episode_count += 1
        return index

    def state_dict(self) -> dict[str, int]:
        return {"episode": max(self._episode_count - 1, 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._episode_count = int(state["episode"])


EPISODE_METRICS = "episode_metrics"  # info key: the episode's running metrics, logged when it ends
DECISION_METRICS = "decision_metrics"  # info key: this step's own values (e.g. frames each button was held)


def merge_episode_metrics(info: dict[str, Any], metrics: dict[str, float]) -> dict[str, float]:
    """The ``info[EPISODE_METRICS]`` of an inner wrapper with ``metrics`` added (wrappers stack their own)."""
    return {**info.get(EPISODE_METRICS, {}), **metrics}


def episode_metric_names(env: gym.Env) -> tuple[str, ...]:
    """Names of the per-episode metrics an env reports in ``info[EPISODE_METRICS]`` (columns of metrics.csv and
    eval.csv). An env declares them as ``episode_metric_names`` on its outermost wrapper; most envs have none.
    The running values sit in every step's info, so the episode's last info holds them whichever wrapper
    (a time limit, say) ends it."""
    return _declared_names(env, "episode_metric_names")


def decision_metric_names(env: gym.Env) -> tuple[str, ...]:
    """Names of the per-decision values an env reports in each step's ``info[DECISION_METRICS]``: an episode
    mean hides how they spread, so the evaluation logs their distribution over its decisions (median and 90th
    percentile in eval.csv, histograms in TensorBoard). Declared as ``decision_metric_names`` on any wrapper;
    most envs have none."""
    return _declared_names(env, "decision_metric_names")


def _declared_names(env: gym.Env, attribute: str) -> tuple[str, ...]:
    try:
        return tuple(env.get_wrapper_attr(attribute))
    except AttributeError:
        return ()
