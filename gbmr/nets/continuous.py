"""Networks of the off-policy actor-critics (SAC, TD3, DDPG): critic ensembles and three actors.

The actors and critics take features: the flattened observation for vectors, or the output of a CNN encoder
(``make_encoder``) for image observations, which the agent owns (off_policy_ac.py).
Every net runs its layers through ``forward`` rather than ``nn.Module.__call__`` (no hooks are used; the call
costs ~2 us a module, as much as a small layer's maths, and the agents call these nets several times a step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gbmr.nets.torsos import make_torso, mlp, pick_torso

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # CleanRL's bounds of the SAC actor's log std
LOG_2 = math.log(2.0)


def run_layers(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer.forward(x)
    return x


def make_encoder(model: str, observation_space: gym.spaces.Box, features: int) -> tuple[nn.Module | None, int]:
    """A CNN torso (``make_torso``: conv layers, then one ReLU layer of ``features`` units) for image
    observations, or None and the flat size for the MLP case (``model`` "mlp", or "auto" on vectors), where
    the critics and actors read the observation itself and no module call is spent."""
    shape = tuple(observation_space.shape)
    if model == "mlp" or (model == "auto" and pick_torso(shape) == "mlp"):
        return None, int(np.prod(shape))
    return make_torso(model, observation_space, (features,))


def head_input(in_dim: int, hidden: Sequence[int]) -> int:
    """The width the output layer of an MLP on ``in_dim`` features reads (``hidden`` may be empty: a linear
    head on a CNN encoder's features, as CleanRL's sac_atari)."""
    return hidden[-1] if hidden else in_dim


class CriticEnsemble(nn.Module):
    """``n`` independent MLP critics evaluated as one batched matmul per layer (``torch.baddbmm``).

    Input [B, in] (obs and action concatenated, or obs alone for discrete Q(s, .)), output [n, B, out]: the twin
    critics of SAC and TD3 cost one forward and one backward instead of two. Each member is initialised as
    ``nn.Linear`` would be (uniform in +-1/sqrt(fan_in) for weights and biases).
    """

    def __init__(self, n: int, in_dim: int, hidden: Sequence[int], out_dim: int = 1) -> None:
        super().__init__()
        self.n = n
        widths = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
        # (weight, bias) per layer as a plain tuple: iterating ParameterLists costs ~40 us a forward
        self._layers = tuple(zip(self.weights, self.biases, strict=True))

    def forward(self, x: torch.Tensor, detach_params: bool = False, members: int | None = None) -> torch.Tensor:
        """``detach_params``: gradients flow to ``x`` only (the actor's loss through the critics), which skips
        the weight gradients the critic's optimiser would discard. ``members``: only the first that many
        critics (TD3's actor ascends Q_1 alone)."""
        n = self.n if members is None else members
        h = x.unsqueeze(0).expand(n, *x.shape)
        last = len(self._layers) - 1
        for i, (weight, bias) in enumerate(self._layers):
            if members is not None:
                weight, bias = weight[:n], bias[:n]
            if detach_params:
                weight, bias = weight.detach(), bias.detach()
            h = torch.baddbmm(bias, h, weight)
            if i < last:
                h = torch.relu(h)
        return h


class SquashedGaussianActor(nn.Module):
    """SAC's policy (Haarnoja et al. 2018): u = tanh(mean + std * eps) in [-1, 1]^d, log std bounded by a tanh
    into [LOG_STD_MIN, LOG_STD_MAX] as in CleanRL."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.torso = mlp(obs_dim, hidden)
        self.mean = nn.Linear(head_input(obs_dim, hidden), action_dim)
        self.log_std = nn.Linear(head_input(obs_dim, hidden), action_dim)
        self._layers = tuple(self.torso)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = run_layers(self._layers, obs)
        log_std = torch.tanh(self.log_std.forward(features))
        return self.mean.forward(features), LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)

    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, log pi(u|s)) for standard normal ``noise`` [B, d] (reparameterised: gradients reach the actor)."""
        mean, log_std = self.forward(obs)
        return squashed_sample(mean, log_std, noise)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.forward(obs)[0])


def squashed_sample(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """u = tanh(x), x = mean + exp(log_std) * noise; log pi(u) = log N(x) - sum log(1 - tanh(x)^2), the last
    term written as 2 (log 2 - x - softplus(-2x)), exact where 1 - u^2 rounds to 0 (SB3 and CleanRL add 1e-6)."""
    x = mean + log_std.exp() * noise
    gaussian = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
    log_det = (2.0 * (LOG_2 - x - F.softplus(-2.0 * x))).sum(dim=-1)
    return torch.tanh(x), gaussian - log_det


class DeterministicActor(nn.Module):
    """TD3's and DDPG's policy: an MLP with a tanh output in [-1, 1]^d."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.torso = mlp(obs_dim, hidden)
        self.out = nn.Linear(head_input(obs_dim, hidden), action_dim)
        self._layers = tuple(self.torso)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out.forward(run_layers(self._layers, obs)))


class CategoricalActor(nn.Module):
    """Discrete SAC's policy (Christodoulou 2019): logits over the actions."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.torso = mlp(obs_dim, hidden)
        self.out = nn.Linear(head_input(obs_dim, hidden), num_actions)
        self._layers = tuple(self.torso)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.out.forward(run_layers(self._layers, obs))
