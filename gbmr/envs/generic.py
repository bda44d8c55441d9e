"""Any environment registered with Gymnasium, tried after the fixed families: ``LunarLander-v3``, or
``my_pkg.module:MyEnv-v0`` (Gymnasium's own syntax: import ``my_pkg.module``, which registers the env, then
make ``MyEnv-v0``; the module must be importable from the Python path).

Observations are adapted so that a torso takes them: a Box passes through as it is; a Discrete (or a
MultiDiscrete) is one-hot encoded as a float32 Box (its one-hots side by side); a MiniGrid-style Dict with an
``'image'`` key gives that image channel-first (MiniGrid's ``[x, y]`` image becomes ``(C, y, x)``, as in the
maze family); anything else is a GbmrError that names the space.

Options: ``max_episode_steps`` (0: the registration's own limit), plus the constructor's keyword arguments
whose default is a bool, int, float or str, with the registration's values as defaults (LunarLander's
``gravity`` or ``enable_wind``, FrozenLake's ``is_slippery``, popgym RepeatPrevious's ``k``).
Exact resume (reset with the episode's seed, replay its actions) needs an episode to be a function of its
``reset(seed=...)`` and its actions: true of Gymnasium's own environments, MiniGrid's and popgym's (the tests
check LunarLander and RepeatPrevious), not of an environment that keeps state across episodes.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec, load_env_creator
from gymnasium.spaces import Box, Dict, Discrete, MultiDiscrete

from gbmr.core.errors import GbmrError
from gbmr.envs.registry import ChannelFirst

# imported before ids are looked up, so that their environments need no ``module:`` prefix
REGISTERING_PACKAGES = ("ale_py", "minigrid", "popgym")
OPTION_TYPES = (bool, int, float, str)


def env_ids() -> frozenset[str]:
    """The ids registered with Gymnasium now (importing a ``module:`` adds that module's)."""
    for package in REGISTERING_PACKAGES:
        importlib.import_module(package)
    return frozenset(gym.registry)


def split_id(env_id: str) -> tuple[str | None, str]:
    """``"pkg.mod:Name-v0"`` -> ``("pkg.mod", "Name-v0")``; an id without a module -> ``(None, env_id)``."""
    module, colon, name = env_id.rpartition(":")
    return (module, name) if colon and module else (None, env_id)


def accepts(env_id: str) -> bool:
    """Whether ``env_id`` is registered, after importing its ``module:`` if it has one."""
    module, name = split_id(env_id)
    if module is not None:
        try:
            importlib.import_module(module)
        except Exception as error:  # the user's module: whatever fails is theirs to see
            detail = str(error).splitlines()[0] if str(error) else ""
            raise GbmrError(
                f"cannot import module '{module}' of environment '{env_id}': {type(error).__name__}: {detail}"
            ) from error
    return name in env_ids()


def summary() -> str:
    """One line for ``gbmr list`` and the unknown-id error, instead of hundreds of ids."""
    return (f"any of the {len(env_ids())} ids registered with Gymnasium (such as LunarLander-v3), "
            "or module:EnvId to import a module that registers EnvId")


def _spec(env_id: str) -> EnvSpec:
    return gym.spec(split_id(env_id)[1])


def _creator(spec: EnvSpec) -> Callable[..., gym.Env]:
    """The registered constructor; a missing optional dependency (MuJoCo, ...) is a user error."""
    if callable(spec.entry_point):
        return spec.entry_point
    try:
        return load_env_creator(spec.entry_point)
    except (ImportError, gym.error.Error) as error:
        raise GbmrError(f"environment '{spec.id}' cannot be built here: {error}") from error


def options(env_id: str) -> dict[str, object]:
    spec = _spec(env_id)
    try:
        parameters = inspect.signature(_creator(spec)).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin)
        parameters = []
    defaults = {p.name: p.default for p in parameters if p.name != "render_mode"}
    defaults.update(spec.kwargs)
    simple = {name: value for name, value in defaults.items() if type(value) in OPTION_TYPES}
    return {**simple, "max_episode_steps": 0}


def make(
    env_id: str, *, training: bool, render_mode: str | None, max_episode_steps: int, **kwargs: Any
) -> gym.Env:
    if max_episode_steps < 0:
        raise GbmrError(f"option 'max_episode_steps' of '{env_id}' must be >= 0 (0: the registration's)")
    spec = _spec(env_id)
    _creator(spec)  # a missing dependency fails here as a GbmrError
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    if render_mode is not None:  # not every constructor takes one (popgym's do not)
        kwargs["render_mode"] = render_mode
    env = gym.make(spec.id, **kwargs)
    return adapt_observation(env)


class OneHot(gym.ObservationWrapper):
    """Discrete -> one-hot float32, MultiDiscrete -> its one-hots side by side: a symbol fed as a number would
    tell the network of an order and a scale that are not there."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        sizes = np.array([space.n]) if isinstance(space, Discrete) else space.nvec.ravel()
        starts = np.array([space.start]) if isinstance(space, Discrete) else space.start.ravel()
        self._first = np.concatenate([[0], np.cumsum(sizes)[:-1]]) - starts  # position of value 0 of each
        self.observation_space = Box(0.0, 1.0, (int(sizes.sum()),), dtype=np.float32)

    def observation(self, observation: int | np.ndarray) -> np.ndarray:
        one_hot = np.zeros(self.observation_space.shape, dtype=np.float32)
        one_hot[self._first + np.asarray(observation, dtype=np.int64).ravel()] = 1.0
        return one_hot


class DictImage(gym.ObservationWrapper):
    """Keep only the ``'image'`` entry of a Dict observation (MiniGrid's mission string and direction go)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = env.observation_space["image"]

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return observation["image"]


def adapt_observation(env: gym.Env) -> gym.Env:
    """Wrap ``env`` so that its observation is a Box a torso takes (see the module docstring)."""
    space = env.observation_space
    if isinstance(space, Box):
        return env
    if isinstance(space, Discrete | MultiDiscrete):
        return OneHot(env)
    if isinstance(space, Dict) and isinstance(space.get("image"), Box) and len(space["image"].shape) == 3:
        return ChannelFirst(DictImage(env), axes=(2, 1, 0), dtype=space["image"].dtype.type)
    env.close()
    raise GbmrError(
        f"environment '{env.spec.id if env.spec else env}' has observation space {space}, which gbmr does not "
        "take: it takes a Box, a Discrete or MultiDiscrete (one-hot encoded) or a Dict with an 'image' Box"
    )
