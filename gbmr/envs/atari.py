"""Atari 2600 games (ALE ``ALE/<Game>-v5``) with the standard DQN preprocessing.

Pipeline, using gymnasium's wrappers where they exist:
ALE (frameskip=1, sticky actions ``repeat_action_probability``) -> ``AtariPreprocessing`` (random no-ops at
reset, ``frame_skip`` with max-pool over the last two frames, ``screen_size`` square, greyscale) ->
``EpisodicLife`` (training only) -> sign reward clipping (training only) -> ``FrameStackObservation``.
Observation: ``(frame_stack, screen_size, screen_size)`` uint8, i.e. ``(4, 84, 84)`` by default
(``(4, 84, 84, 3)`` with ``grayscale=False``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TransformReward

# The games of the GBMR paper's experiments; any registered "ALE/<Game>-v5" is accepted too.
PAPER_GAMES = ("MsPacman", "Alien", "Pong", "Frostbite", "Hero", "Breakout")
OPTIONS: dict[str, object] = {
    "noop_max": 30,
    "frame_skip": 4,
    "screen_size": 84,
    "grayscale": True,
    "frame_stack": 4,
    "episodic_life": True,
    "clip_rewards": True,
    "repeat_action_probability": 0.25,
    "full_action_space": False,
}


@cache
def env_ids() -> frozenset[str]:
    import ale_py

    gym.register_envs(ale_py)
    return frozenset(i for i in gym.registry if i.startswith("ALE/") and i.endswith("-v5"))


def options(env_id: str) -> dict[str, object]:
    return OPTIONS


class EpisodicLife(gym.Wrapper):
    """A lost life ends the *training* episode (``terminated=True``) but not the game: the following
    ``reset()`` continues the same game with one no-op step, and only a real game over (or truncation)
    restarts it. This is the DQN paper's trick as in SB3's ``EpisodicLifeEnv``; gymnasium's
    ``terminal_on_life_loss`` instead lets the next reset start a new game, losing the remaining lives.

    A continuing reset ignores its seed and reports ``info["life_reset"] = True``: such an episode is not a
    function of its own reset seed, so replaying it means replaying from the last real game start."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._lives = 0
        self._game_over = True

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        life_reset = not self._game_over
        if life_reset:
            obs, _, terminated, truncated, info = self.env.step(0)
            life_reset = not (terminated or truncated)
        if not life_reset:
            obs, info = self.env.reset(seed=seed, options=options)
        self._game_over = False
        self._lives = self.env.unwrapped.ale.lives()
        return obs, {**info, "life_reset": life_reset}


def _sign(reward: float) -> float:
    return float(np.sign(reward))


def make(
    env_id: str,
    *,
    training: bool,
    render_mode: str | None,
    noop_max: int,
    frame_skip: int,
    screen_size: int,
    grayscale: bool,
    frame_stack: int,
    episodic_life: bool,
    clip_rewards: bool,
    repeat_action_probability: float,
    full_action_space: bool,
) -> gym.Env:
    env = gym.make(
        env_id,
        frameskip=1,  # AtariPreprocessing skips (and max-pools) itself
        repeat_action_probability=repeat_action_probability,
        full_action_space=full_action_space,
        render_mode=render_mode,
    )
    env = AtariPreprocessing(
        env, noop_max=noop_max, frame_skip=frame_skip, screen_size=screen_size, grayscale_obs=grayscale
    )
    if training and episodic_life:
        env = EpisodicLife(env)
    if training and clip_rewards:
        env = TransformReward(env, _sign)
    return FrameStackObservation(env, stack_size=frame_stack)
