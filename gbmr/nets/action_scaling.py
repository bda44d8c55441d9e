"""Actions to and from a Box's bounds, in one place for every agent with continuous actions.

The off-policy actor-critics (SAC, TD3, DDPG) act, store and learn in the normalised cube [-1, 1]^d (a tanh
output, noise and clipping in the same units whatever the env's scale) and hand the environment
``low + (u + 1) / 2 * (high - low)``; what the environment was given comes back through ``from_env`` (a
distributed actor's transitions carry env actions). PPO's Gaussian samples unbounded actions and clips them
(``clip``) to the same bounds.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from gbmr.core.errors import GbmrError


def require_bounded_box(algo: str, action_space: gym.Space) -> None:
    """The squashed / deterministic actors need finite bounds to scale their [-1, 1] outputs to."""
    if not isinstance(action_space, gym.spaces.Box):
        raise GbmrError(f"{algo} needs a Box action space, got {action_space}")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise GbmrError(f"{algo} needs a Box action space with finite bounds (it scales [-1, 1] to them), got "
                        f"{action_space}; wrap the env with gymnasium.wrappers.RescaleAction or clip it first")
    if np.any(action_space.high <= action_space.low):
        raise GbmrError(f"{algo} needs high > low in every action dimension, got {action_space}")


class BoxScaling:
    """The affine map between the cube [-1, 1]^d and a Box's bounds, flattened to d = prod(shape) dimensions."""

    def __init__(self, action_space: gym.spaces.Box) -> None:
        self.env_shape = tuple(action_space.shape)
        self.dim = int(np.prod(self.env_shape))
        self.low = np.asarray(action_space.low, dtype=np.float32).reshape(self.dim)
        self.high = np.asarray(action_space.high, dtype=np.float32).reshape(self.dim)
        with np.errstate(invalid="ignore", over="ignore"):  # unbounded Boxes (PPO) use only low and high
            self.center = (self.high + self.low) / 2
            self.half_range = (self.high - self.low) / 2

    def to_env(self, unit: np.ndarray) -> np.ndarray:
        """[B, d] actions in [-1, 1] to [B, *shape] actions within the bounds (float32, clipped: rounding)."""
        scaled = self.center + self.half_range * np.asarray(unit, dtype=np.float32)
        return np.clip(scaled, self.low, self.high).reshape(len(scaled), *self.env_shape)

    def from_env(self, actions: np.ndarray) -> np.ndarray:
        """[B, *shape] env actions to [B, d] in [-1, 1] (clipped: an env action outside the bounds acts as the
        bound)."""
        flat = np.asarray(actions, dtype=np.float32).reshape(-1, self.dim)
        return np.clip((flat - self.center) / self.half_range, -1.0, 1.0)



def clip_to_box(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Unbounded samples (PPO's Gaussian) clipped to a Box's bounds (``BoxScaling.low``/``high`` as tensors)."""
    return torch.maximum(torch.minimum(actions, high), low)
