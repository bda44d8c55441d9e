"""Gymnasium's classic-control tasks, unchanged: float32 vector observations; discrete (CartPole, Acrobot,
MountainCar) and continuous (Pendulum, MountainCarContinuous) actions; no options."""

from __future__ import annotations

import gymnasium as gym

IDS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1", "MountainCarContinuous-v0")


def env_ids() -> tuple[str, ...]:
    return IDS


def options(env_id: str) -> dict[str, object]:
    return {}


def make(env_id: str, *, training: bool, render_mode: str | None) -> gym.Env:
    return gym.make(env_id, render_mode=render_mode)
