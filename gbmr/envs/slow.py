"""A simulated slow environment for scaling measurements: CartPole that sleeps ``delay`` seconds a step, as an
emulator or a simulator bound by something other than this process's CPU would
(``--env gbmr.envs.slow:GbmrSlowCartPole-v0``; benchmarks/distributed.py)."""

from __future__ import annotations

import time

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class SlowCartPole(CartPoleEnv):
    def __init__(self, delay: float = 0.002, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    def step(self, action):
        time.sleep(self.delay)
        return super().step(action)


if "GbmrSlowCartPole-v0" not in gym.registry:
    gym.register("GbmrSlowCartPole-v0", entry_point=SlowCartPole, max_episode_steps=500)
