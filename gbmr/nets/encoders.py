"""State encoders ``phi(obs) -> R^dim`` for the episodic memories (MFEC, NEC, GQ, GBMR).

- ``random_projection`` (MFEC, Blundell et al. 2016): a fixed Gaussian matrix with N(0, 1/dim) entries applied to
  the flattened observation -- distances are roughly preserved (Johnson-Lindenstrauss), nothing is trained.
- ``learned`` (NEC, Pritzel et al. 2017): a torso from ``gbmr.nets.torsos`` plus a linear layer to ``dim``,
  trained by the agent's loss through the kernel lookup.
- ``identity``: the flattened observation itself, for tabular states (grid mazes) where exact keys matter.
- ``vae`` (seed note 001): the posterior mean of a VAE trained beforehand (``gbmr pretrain-vae``, see
  ``gbmr.nets.vae``), loaded from ``encoder_path``; frozen, its size is the VAE's latent size (``dim`` is ignored).
- ``inverse`` (seed note 000, NGU's memory keys): the embedding of an inverse-dynamics model trained beforehand
  (``gbmr pretrain-inverse``, see ``gbmr.nets.inverse_dynamics``), what the agent's actions change; loaded from
  ``encoder_path`` and frozen like ``vae``.

uint8 observations (pixels) are scaled to [0, 1] by all but ``identity`` (the torsos do);
``identity`` keeps the raw values so tabular keys stay the states' coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.nets.pretrained import COMMANDS, load_pretrained
from gbmr.nets.pretrained import KINDS as PRETRAINED
from gbmr.nets.torsos import input_scale, make_torso

ENCODERS = ("random_projection", "learned", "identity", "vae", "inverse")


class Encoder(nn.Module):
    """``forward(obs [B, ...]) -> [B, dim]`` float32; ``trainable`` says whether an optimiser should see it."""

    trainable: bool = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)


class IdentityEncoder(Encoder):
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.reshape(obs.shape[0], -1).float()


class RandomProjection(Encoder):
    """``x -> x @ W`` with ``W`` drawn once from ``seed``; kept as a buffer so checkpoints hold it."""

    def __init__(self, in_dim: int, dim: int, seed: int, scale: float) -> None:
        super().__init__(dim)
        generator = torch.Generator().manual_seed(int(seed))
        self.register_buffer("matrix", torch.randn(in_dim, dim, generator=generator) / np.sqrt(dim))
        self.scale = scale

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs.reshape(obs.shape[0], -1).float() * self.scale) @ self.matrix


class LearnedEncoder(Encoder):
    trainable = True

    def __init__(self, observation_space: gym.Space, dim: int, hidden: Sequence[int], torso: str) -> None:
        super().__init__(dim)
        self.torso, features = make_torso(torso, observation_space, hidden)
        self.head = nn.Linear(features, dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(obs))


class PretrainedEncoder(Encoder):
    """The embedding half of a net trained beforehand (a VAE's torso + mean head, an inverse model's torso +
    head), frozen: the memories' keys must not move under a loss the net was not trained for. Its weights are
    in the agent's checkpoints like any encoder's."""

    def __init__(self, torso: nn.Module, head: nn.Linear) -> None:
        super().__init__(head.out_features)
        self.torso, self.head = torso, head
        self.requires_grad_(False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(obs))


def make_encoder(
    kind: str,
    observation_space: gym.Space,
    dim: int = 64,
    seed: int = 0,
    hidden: Sequence[int] = (256,),
    torso: str = "auto",
    encoder_path: str = "",
) -> Encoder:
    """The encoder ``kind`` for this observation space; ``seed`` fixes the projection matrix or the initial
    weights (without touching torch's global RNG), so an agent's encoder depends on its seed only.
    ``encoder_path`` is the file of ``vae`` and ``inverse`` (and must be empty for the other kinds, so a typo
    cannot go unnoticed)."""
    if kind not in ENCODERS:
        raise unknown_choice("encoder", kind, ENCODERS)
    if kind in PRETRAINED:
        if not encoder_path:
            raise GbmrError(f"encoder '{kind}' needs encoder_path=FILE, the file written by `{COMMANDS[kind]}`")
        return PretrainedEncoder(*load_pretrained(encoder_path, observation_space, kind).embedding_layers())
    if encoder_path:
        raise GbmrError(f"encoder_path is only used by the pretrained encoders {tuple(PRETRAINED)} (encoder is "
                        f"'{kind}'); set encoder=vae or encoder=inverse, or drop it")
    if not isinstance(observation_space, gym.spaces.Box):
        raise GbmrError(f"encoder '{kind}' needs a Box (array) observation space, got {observation_space}")
    in_dim = int(np.prod(observation_space.shape))
    if kind == "identity":
        return IdentityEncoder(in_dim)
    if dim <= 0:
        raise GbmrError(f"encoder dim must be positive, got {dim}")
    if kind == "random_projection":
        return RandomProjection(in_dim, dim, seed, input_scale(observation_space))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return LearnedEncoder(observation_space, dim, tuple(hidden), torso)
