"""Feature extractors ("torsos") shared by every agent, chosen from the observation shape.

- ``mlp`` for vectors (and small flattened grids),
- ``nature_cnn`` for 84x84 Atari frame stacks (Mnih et al. 2015),
- ``minatar_cnn`` for MinAtar's 10x10xC grids (Young & Tian 2019: one 3x3 conv with 16 channels).
Inputs stored as uint8 are scaled to [0, 1] inside the net (by the space's upper bound), so buffers keep uint8.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from gbmr.errors import GbmrError, unknown_choice

TORSOS = ("auto", "mlp", "nature_cnn", "minatar_cnn")


class Scale(nn.Module):
    """Cast to float and scale uint8 inputs to [0, 1]."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x if self.scale == 1.0 else x * self.scale  # MinAtar's 0/1 planes need only the cast


def mlp(in_dim: int, hidden: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), activation()]
        in_dim = width
    return nn.Sequential(*layers)


def nature_cnn(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
    )  # fmt: skip


def minatar_cnn(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 16, 3, stride=1), nn.ReLU(), nn.Flatten())


def input_scale(observation_space: gym.spaces.Box) -> float:
    """uint8 inputs are scaled by their bound: Atari pixels by 1/255, MinAtar's 0/1 planes stay as they are."""
    if observation_space.dtype == np.uint8:
        return 1.0 / float(np.max(observation_space.high))
    return 1.0


def pick_torso(shape: tuple[int, ...]) -> str:
    if len(shape) == 3 and shape[1] >= 36 and shape[2] >= 36:
        return "nature_cnn"
    if len(shape) == 3 and shape[1] == shape[2] == 10:
        return "minatar_cnn"
    return "mlp"


def make_torso(kind: str, observation_space: gym.Space, hidden: Sequence[int] = (256,)) -> tuple[nn.Module, int]:
    """A torso for this observation space and the size of its output features.

    ``hidden`` sizes the MLP torso (its layers) and the fully connected layer after a CNN.
    """
    if not isinstance(observation_space, gym.spaces.Box):
        raise GbmrError(f"observations must be a Box (array) space, got {observation_space}")
    shape = tuple(observation_space.shape)
    if kind not in TORSOS:
        raise unknown_choice("torso", kind, TORSOS)
    kind = pick_torso(shape) if kind == "auto" else kind
    scale = input_scale(observation_space)
    # Scale and Flatten only where needed: each module call costs ~10 us, a lot per step for a small MLP.
    prefix: list[nn.Module] = [Scale(scale)] if observation_space.dtype != np.float32 else []
    if kind == "mlp":
        in_dim = int(np.prod(shape))
        flatten = [nn.Flatten()] if len(shape) > 1 else []
        body = nn.Sequential(*prefix, *flatten, *mlp(in_dim, hidden))
        return body, hidden[-1] if hidden else in_dim
    if len(shape) != 3:
        raise GbmrError(f"torso '{kind}' needs (channels, height, width) observations, got shape {shape}")
    conv = nature_cnn(shape[0]) if kind == "nature_cnn" else minatar_cnn(shape[0])
    with torch.no_grad():
        conv_out = conv(torch.zeros(1, *shape)).shape[1]
    body = nn.Sequential(*prefix, *conv, *mlp(conv_out, hidden))
    return body, hidden[-1] if hidden else conv_out
