"""Feature extractors ("torsos") shared by every agent, chosen from the observation shape.

- ``mlp`` for vectors (and small flattened grids),
- ``nature_cnn`` for 84x84 Atari frame stacks (Mnih et al. 2015),
- ``minatar_cnn`` for MinAtar's 10x10xC grids (Young & Tian 2019: one 3x3 conv with 16 channels),
- ``cnn``: whichever of those two suits the frame size (as ``auto`` picks it),
- ``cnn3d``: the same layers as Conv3d over the stack, a (stack, H, W) observation being one channel of depth
  ``stack``, so the kernels see motion across frames (seed note 003 on Pong),
- ``cnn3d2d``: the Conv3d and the Conv2d features of the same input concatenated (note 003: the 3-D net starts
  fast, the 2-D one keeps its score).
Inputs stored as uint8 are scaled to [0, 1] inside the net (by the space's upper bound), so buffers keep uint8.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from gbmr.core.errors import GbmrError, unknown_choice

TORSOS = ("auto", "mlp", "nature_cnn", "minatar_cnn", "cnn", "cnn3d", "cnn3d2d")


class Scale(nn.Module):
    """Cast to float and scale uint8 inputs to [0, 1]."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x if self.scale == 1.0 else x * self.scale  # MinAtar's 0/1 planes need only the cast


class FrameDifference(nn.Module):
    """``x[:, 1:] - x[:, :-1]``: a (stack, ...) observation becomes its stack - 1 differences of consecutive
    frames, oldest first, so what stays still cancels and what moves remains (note 003's Pong input).

    It comes after ``Scale``, so uint8 frames are floats by then and a darkening pixel does not wrap around."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:] - x[:, :-1]


class Concat(nn.Module):
    """Branches applied to the same input, their flat features joined (``cnn3d2d``: Conv3d, then Conv2d)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class Torso(nn.Sequential):
    """nn.Sequential that runs its layers through ``forward`` rather than ``nn.Module.__call__``: the call costs
    ~2-5 us a module, as much as a small layer's maths, torsos use no hooks, and agents call them at every env
    step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer.forward(x)
        return x


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


class SmallBatchConv2d(nn.Conv2d):
    """A Conv2d that sends small inference batches on the CPU (acting for a few envs) to PyTorch's native
    convolution instead of oneDNN's: about 3x faster on MinAtar's 3x3 conv over 10x10 planes at 4 envs, while
    oneDNN wins from ~64 rows, so training minibatches keep it (``benchmarks/ppo_throughput.py --conv``). The
    two agree to float rounding."""

    SMALL_BATCH = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.SMALL_BATCH and x.device.type == "cpu" and not torch.is_grad_enabled():
            return torch.ops.aten._slow_conv2d_forward(x, self.weight, self.kernel_size, self.bias, self.stride,
                                                       self.padding)
        return super().forward(x)


def minatar_cnn(channels: int) -> nn.Sequential:
    return nn.Sequential(SmallBatchConv2d(channels, 16, 3, stride=1), nn.ReLU(), nn.Flatten())


def nature_cnn3d(depth: int) -> nn.Sequential:
    """Nature CNN's three layers (32 8x8/4, 64 4x4/2, 64 3x3/1) as Conv3d with a temporal kernel of 2 (stride 1)
    while the depth lasts, then 1: 4 frames, or their 3 differences, end at depth 1 and 3136 features, as the
    2-D net. (Note 003's two layers, 16 (3, 8, 8)/(2, 4, 4) and 32 (3, 4, 4)/2, need 7 or more frames.)"""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, depth))]
    in_channels = 1
    for channels, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
        time = 2 if depth >= 2 else 1
        layers += [nn.Conv3d(in_channels, channels, (time, kernel, kernel), stride=(1, stride, stride)), nn.ReLU()]
        in_channels, depth = channels, depth - time + 1
    return nn.Sequential(*layers, nn.Flatten())


def minatar_cnn3d(depth: int) -> nn.Sequential:
    """MinAtar's one conv (16 channels, 3x3) as a Conv3d of temporal kernel 2 (1 for a single plane): on MinAtar's
    C object planes it mixes neighbouring planes, 16 x (C - 1) x 8 x 8 features."""
    time = 2 if depth >= 2 else 1
    return nn.Sequential(nn.Unflatten(1, (1, depth)), nn.Conv3d(1, 16, (time, 3, 3)), nn.ReLU(), nn.Flatten())


def input_scale(observation_space: gym.spaces.Box) -> float:
    """uint8 inputs are scaled by their bound: Atari pixels by 1/255, MinAtar's 0/1 planes stay as they are."""
    if observation_space.dtype == np.uint8:
        return 1.0 / float(np.max(observation_space.high))
    return 1.0


def frame_size(shape: tuple[int, ...]) -> str | None:
    """The CNNs that suit these frames: "nature" for (C, >= 36, >= 36), "minatar" for (C, 10, 10), else None."""
    if len(shape) == 3 and shape[1] >= 36 and shape[2] >= 36:
        return "nature"
    if len(shape) == 3 and shape[1] == shape[2] == 10:
        return "minatar"
    return None


def pick_torso(shape: tuple[int, ...]) -> str:
    size = frame_size(shape)
    return f"{size}_cnn" if size else "mlp"


def conv_layers(kind: str, shape: tuple[int, ...]) -> list[nn.Module]:
    """The convolutional part of a CNN torso, or GbmrError saying why ``kind`` does not fit ``shape``."""
    if len(shape) != 3:
        raise GbmrError("it needs (channels, height, width) observations")
    if kind == "nature_cnn":
        return list(nature_cnn(shape[0]))
    if kind == "minatar_cnn":
        return list(minatar_cnn(shape[0]))
    size = frame_size(shape)
    if size is None:
        raise GbmrError("it needs frames of 36x36 or more (Atari) or of 10x10 (MinAtar)")
    conv2d = nature_cnn(shape[0]) if size == "nature" else minatar_cnn(shape[0])
    conv3d = nature_cnn3d(shape[0]) if size == "nature" else minatar_cnn3d(shape[0])
    return {"cnn": list(conv2d), "cnn3d": list(conv3d), "cnn3d2d": [Concat(conv3d, conv2d)]}[kind]


def body_layers(
    kind: str, shape: tuple[int, ...], hidden: Sequence[int], activation: type[nn.Module]
) -> tuple[list[nn.Module], int]:
    """The torso's layers after the input prefix and its feature size; GbmrError (the reason) on a misfit."""
    if kind == "mlp":
        in_dim = int(np.prod(shape))
        flatten = [nn.Flatten()] if len(shape) > 1 else []
        return [*flatten, *mlp(in_dim, hidden, activation)], hidden[-1] if hidden else in_dim
    conv = conv_layers(kind, shape)
    try:
        with torch.no_grad():
            conv_out = nn.Sequential(*conv)(torch.zeros(1, *shape)).shape[1]
    except RuntimeError:  # a kernel larger than what is left of the frame
        raise GbmrError("its conv output would be empty") from None
    return [*conv, *mlp(conv_out, hidden, activation)], hidden[-1] if hidden else conv_out


def make_torso(
    kind: str,
    observation_space: gym.Space,
    hidden: Sequence[int] = (256,),
    activation: type[nn.Module] = nn.ReLU,
    frame_difference: bool = False,
) -> tuple[nn.Module, int]:
    """A torso for this observation space and the size of its output features.

    ``hidden`` sizes the MLP torso (its layers) and the fully connected layer(s) after a CNN; ``activation``
    follows each of those fully connected layers (convolutions keep ReLU). ``frame_difference``: the torso sees
    the stack - 1 differences of consecutive frames along the first axis (``FrameDifference``), which is taken as
    the stack, so (4, 84, 84) frames become (3, 84, 84) differences (on MinAtar's object planes, no stack, they
    mean nothing).
    """
    if not isinstance(observation_space, gym.spaces.Box):
        raise GbmrError(f"observations must be a Box (array) space, got {observation_space}")
    shape = tuple(observation_space.shape)
    if kind not in TORSOS:
        raise unknown_choice("torso", kind, TORSOS)
    # Scale and Flatten only where needed: each module call costs ~10 us, a lot per step for a small MLP.
    prefix: list[nn.Module] = [Scale(input_scale(observation_space))] if observation_space.dtype != np.float32 else []
    seen = shape
    if frame_difference:
        if len(shape) < 2 or shape[0] < 2:
            raise GbmrError(f"frame_difference (torso '{kind}') needs observations stacked on their first axis, "
                            f"(stack >= 2, ...), got shape {shape}")
        prefix.append(FrameDifference())
        seen = (shape[0] - 1, *shape[1:])
    kind = pick_torso(seen) if kind == "auto" else kind
    try:
        layers, features = body_layers(kind, seen, hidden, activation)
    except GbmrError as misfit:
        fit = [other for other in TORSOS[1:] if fits(other, seen)]
        what = f"frame differences {seen} of shape {shape}" if frame_difference else f"shape {shape}"
        raise GbmrError(f"torso '{kind}' does not fit observations of {what}: {misfit}; "
                        f"torsos that fit: {', '.join(fit)}") from None
    return Torso(*prefix, *layers), features


def fits(kind: str, shape: tuple[int, ...]) -> bool:
    """Whether ``kind`` builds on ``shape``: the misfit message lists the torsos that do."""
    try:
        body_layers(kind, shape, (), nn.ReLU)
    except GbmrError:
        return False
    return True
