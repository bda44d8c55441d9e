"""MinAtar games through their own Gymnasium registration (minimal action sets, the "-v1" ids).

Observation: ``(C, 10, 10)`` uint8 in {0, 1}, channel-first so a small CNN takes it directly
(C = 4 Asterix, 4 Breakout, 7 Freeway, 10 Seaquest, 6 SpaceInvaders); ``observation_space.high == 1``.
Options are MinAtar's own: ``sticky_action_prob`` (0.1, the MinAtar paper's setting) and
``difficulty_ramping``. They apply in evaluation too, as in the MinAtar protocol.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from gbmr.envs.registry import ChannelFirst

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
IDS = tuple(f"MinAtar/{game}-v1" for game in GAMES)
OPTIONS: dict[str, object] = {"sticky_action_prob": 0.1, "difficulty_ramping": True}


def env_ids() -> tuple[str, ...]:
    return IDS


def options(env_id: str) -> dict[str, object]:
    return OPTIONS


class MinAtarObservation(ChannelFirst):
    """HWC bool -> CHW uint8. Also forgets the previous episode's action on reset: MinAtar's sticky actions
    repeat ``last_action``, which it never clears, so without this an episode would depend on the one
    before it, not only on its reset seed and its own actions.

    A seeded reset reseeds the game's RandomState in place: MinAtar builds a new one (~90 us, 1.4 us in place,
    the same stream), and gbmr seeds every episode, a cost that adds up on games whose episodes last a few
    dozen steps."""

    def __init__(self, env: gym.Env):
        super().__init__(env, axes=(2, 0, 1))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        game = self.env.unwrapped.game
        game.last_action = 0
        if seed is not None:  # what MinAtar's Environment.seed does, with one generator for game and rules
            game.random.seed(seed)
            game.env.random = game.random
        return super().reset(seed=None, options=options)


def make(
    env_id: str,
    *,
    training: bool,
    render_mode: str | None,
    sticky_action_prob: float,
    difficulty_ramping: bool,
) -> gym.Env:
    if env_id not in gym.registry:
        from minatar.gym import register_envs  # slow import (seaborn): only when a MinAtar env is made

        register_envs()
    env = gym.make(
        env_id,
        render_mode=render_mode,
        sticky_action_prob=sticky_action_prob,
        difficulty_ramping=difficulty_ramping,
    )
    return MinAtarObservation(env)
