"""Pieces of acting shared by the value-based agents: schedules, epsilon-greedy, random tie-breaking, space checks."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from gbmr.core.errors import GbmrError


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """``start`` moving linearly to ``end`` over ``duration`` steps, then ``end``."""
    if t >= duration:
        return end
    return start + (end - start) * t / duration


def argmax_random_ties(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row-wise argmax of ``q`` ``[B, A]``, choosing uniformly among tied maxima.

    Memory agents start with all-zero values, so a plain argmax would always pick action 0."""
    ties = q >= q.max(axis=1, keepdims=True)
    return np.argmax(ties * rng.random(q.shape), axis=1)


def epsilon_greedy(q_fn: Callable[[np.ndarray], np.ndarray], obs: np.ndarray, epsilon: float, num_actions: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Random actions with probability ``epsilon``; greedy on ``q_fn(obs)`` otherwise (computed only if
    some environment acts greedily, so a fully random step costs no lookup)."""
    n = len(obs)
    random_mask = rng.random(n) < epsilon
    actions = rng.integers(num_actions, size=n)
    if not random_mask.all():
        actions = np.where(random_mask, actions, argmax_random_ties(q_fn(obs), rng))
    return actions


def require_discrete(algo: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    """The check of every value-based agent here: array observations, a finite set of actions."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise GbmrError(f"{algo} needs a Discrete action space, got {action_space}")
    if not isinstance(observation_space, gym.spaces.Box):
        raise GbmrError(f"{algo} needs a Box observation space, got {observation_space}")
