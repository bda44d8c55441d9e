"""Policies for the policy-gradient family: action heads (categorical, diagonal Gaussian) and an actor-critic net.

A head samples from noise the agent draws, one numpy Generator per environment (``noise``), never from torch's
global generator: a run's actions are a function of its seed, checkpoints restore them exactly, and an env's
actions do not depend on which other envs share its batch (so distributed actors holding slices of the envs
act as one process would).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.nets.action_scaling import BoxScaling, clip_to_box
from gbmr.nets.torsos import make_torso

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def exponential_noise(rngs: Sequence[np.random.Generator], n: int) -> np.ndarray:
    """Exp(1) draws, [len(rngs), n]: one row per environment, from that environment's generator."""
    noise = np.empty((len(rngs), n), dtype=np.float32)
    for row, rng in zip(noise, rngs, strict=True):
        rng.standard_exponential(dtype=np.float32, out=row)  # the same draws as size=n, without np.stack
    return noise


def gumbel_max(logits: torch.Tensor, exp_noise: torch.Tensor) -> torch.Tensor:
    """Gumbel-max: argmax(logits + G) with G = -log(E), E ~ Exp(1) (``exponential_noise``), is a draw from
    softmax(logits) (and faster than torch.multinomial on small batches)."""
    return (logits - exp_noise.log()).argmax(dim=-1)


class CategoricalHead(nn.Module):
    """Logits over a Discrete action space."""

    def __init__(self, features: int, action_space: gym.spaces.Discrete) -> None:
        super().__init__()
        self.linear = nn.Linear(features, int(action_space.n))
        self.n = int(action_space.n)
        self.action_shape: tuple[int, ...] = ()
        self.action_dtype = torch.long

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear.forward(features)

    def noise(self, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        return exponential_noise(rngs, self.n)

    def sample(self, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return gumbel_max(logits, noise)

    def mode(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def log_prob(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=-1)
        return -(log_p.exp() * log_p).sum(dim=-1)

    def to_env(self, actions: torch.Tensor) -> np.ndarray:
        return actions.cpu().numpy()


class GaussianHead(nn.Module):
    """A diagonal Gaussian with a state-independent log std (PPO's continuous policy, Schulman et al. 2017).

    The sample itself is stored and scored; the environment gets it clipped to the Box bounds."""

    def __init__(self, features: int, action_space: gym.spaces.Box, log_std_init: float = 0.0) -> None:
        super().__init__()
        dim = int(np.prod(action_space.shape))
        self.linear = nn.Linear(features, dim)
        self.log_std = nn.Parameter(torch.full((dim,), float(log_std_init)))
        self.action_shape = (dim,)
        self.action_dtype = torch.float32
        self.env_shape = action_space.shape
        scaling = BoxScaling(action_space)
        self.register_buffer("low", torch.from_numpy(scaling.low))
        self.register_buffer("high", torch.from_numpy(scaling.high))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear.forward(features)

    def noise(self, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """Standard normal draws, [len(rngs), dim]: one row per environment, from that environment's generator."""
        return np.stack([rng.standard_normal(self.action_shape[0], dtype=np.float32) for rng in rngs])

    def sample(self, mean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return mean + self.log_std.exp() * noise

    def mode(self, mean: torch.Tensor) -> torch.Tensor:
        return mean

    def log_prob(self, mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - mean) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def entropy(self, mean: torch.Tensor) -> torch.Tensor:
        per_dim = 0.5 + 0.5 * math.log(2 * math.pi) + self.log_std
        return per_dim.sum().expand(mean.shape[:-1])

    def to_env(self, actions: torch.Tensor) -> np.ndarray:
        clipped = clip_to_box(actions, self.low, self.high)
        return clipped.cpu().numpy().reshape(len(actions), *self.env_shape)


def make_action_head(features: int, action_space: gym.Space) -> CategoricalHead | GaussianHead:
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalHead(features, action_space)
    if isinstance(action_space, gym.spaces.Box):
        return GaussianHead(features, action_space)
    raise GbmrError(f"policy-gradient agents need a Discrete or Box action space, got {action_space}")


def orthogonal_init(module: nn.Module, gain: float) -> None:
    """Orthogonal weights and zero biases on every linear and conv layer (the PPO implementation details,
    Huang et al. 2022: sqrt(2) in the torso, 0.01 for the policy head, 1 for the value head)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)


class ActorCritic(nn.Module):
    """A torso (or one for the actor and one for the critic), an action head and a value head."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        model: str = "auto",
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        shared_torso: bool = False,
        frame_difference: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise unknown_choice("activation", activation, ACTIVATIONS)

        def torso() -> tuple[nn.Module, int]:
            return make_torso(model, observation_space, hidden, activation=ACTIVATIONS[activation],
                              frame_difference=frame_difference)

        self.actor_torso, features = torso()
        self.critic_torso = self.actor_torso if shared_torso else torso()[0]
        self.shared_torso = shared_torso
        self.head = make_action_head(features, action_space)
        self.value_head = nn.Linear(features, 1)
        orthogonal_init(self.actor_torso, math.sqrt(2))
        if not shared_torso:
            orthogonal_init(self.critic_torso, math.sqrt(2))
        orthogonal_init(self.head, 0.01)
        orthogonal_init(self.value_head, 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action-distribution parameters, V(obs)); submodules through ``forward`` (no hooks; ~2-5 us a
        module call, at every env step)."""
        actor_features = self.actor_torso.forward(obs)
        critic_features = actor_features if self.shared_torso else self.critic_torso.forward(obs)
        return self.head.forward(actor_features), self.value_head.forward(critic_features).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_head.forward(self.critic_torso.forward(obs)).squeeze(-1)


class TransformerActorCritic(nn.Module):
    """A per-observation encoder (any torso), a causal Transformer over the episode's last ``lookback``
    encodings, and the action and value heads on its output. Acting goes one step at a time through the
    Transformer's KV cache; training runs whole windows of consecutive steps."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        model: str = "mlp",
        hidden: Sequence[int] = (64,),
        activation: str = "tanh",
        frame_difference: bool = False,
        lookback: int = 32,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        from gbmr.nets.transformer import TransformerTorso

        if activation not in ACTIVATIONS:
            raise unknown_choice("activation", activation, ACTIVATIONS)
        if lookback < 1:
            raise GbmrError(f"lookback must be at least 1 (observations the policy attends to), got {lookback}")
        self.obs_shape = tuple(observation_space.shape)
        self.encoder, features = make_torso(model, observation_space, hidden, activation=ACTIVATIONS[activation],
                                            frame_difference=frame_difference)
        self.transformer = TransformerTorso(features, d_model, num_heads, num_layers, lookback)
        self.head = make_action_head(d_model, action_space)
        self.value_head = nn.Linear(d_model, 1)
        orthogonal_init(self.encoder, math.sqrt(2))
        orthogonal_init(self.head, 0.01)
        orthogonal_init(self.value_head, 1.0)

    def step(self, obs: torch.Tensor, starts: torch.Tensor, cache: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One observation per env: (distribution parameters, V, the updated cache)."""
        features, cache = self.transformer.step(self.encoder(obs), starts, cache)
        return self.head(features), self.value_head(features).squeeze(-1), cache

    def sequence(self, obs: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [B, S, ...], starts [B, S]: parameters [B, S, ...] and values [B, S] at every position."""
        batch, length = starts.shape
        encoded = self.encoder(obs.reshape(batch * length, *self.obs_shape)).reshape(batch, length, -1)
        features = self.transformer.forward_sequence(encoded, starts)
        return self.head(features), self.value_head(features).squeeze(-1)
