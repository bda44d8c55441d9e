"""The inverse-dynamics encoder: keys made of what the agent controls (seed note 000: "locate the agent's own
range of influence" against the parts of the screen that change by themselves).

An embedding phi (a torso from ``gbmr.nets.torsos`` plus a linear head to ``latent_dim``) is trained with a
classifier that predicts the action a_t from (phi(s_t), phi(s_{t+1})) by cross-entropy (Pathak et al. 2017's
inverse model; NGU, Badia et al. 2020, keys its episodic memory with such an embedding). Whatever the action
does not change is no help to the classifier, so phi learns to ignore it: on MinAtar Freeway the cars, that
random projections weigh most, drop out and the chicken's height is what the keys measure. Trained separately
from the agent (``gbmr pretrain-inverse``), frozen in use (``encoder=inverse``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch
from torch import nn
from torch.nn import functional as F

from gbmr.nets.torsos import make_torso, pick_torso


class InverseDynamics(nn.Module):
    """``embed(obs) -> [B, latent_dim]``; ``forward(obs, next_obs) -> action logits``."""

    format = "gbmr-inverse/1"

    def __init__(self, observation_space: gym.spaces.Box, num_actions: int, latent_dim: int = 16,
                 hidden: Sequence[int] = (128,), torso: str = "auto") -> None:
        super().__init__()
        self.obs_shape, self.num_actions = tuple(observation_space.shape), int(num_actions)
        self.latent_dim, self.hidden = int(latent_dim), tuple(hidden)
        self.torso_kind = pick_torso(self.obs_shape) if torso == "auto" else torso
        self.torso, features = make_torso(self.torso_kind, observation_space, self.hidden)
        self.head = nn.Linear(features, self.latent_dim)
        width = self.hidden[-1] if self.hidden else 128
        self.classifier = nn.Sequential(nn.Linear(2 * self.latent_dim, width), nn.ReLU(),
                                        nn.Linear(width, self.num_actions))

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(obs))

    def forward(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.embed(obs), self.embed(next_obs)], dim=1))

    def loss(self, obs: torch.Tensor, next_obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch mean cross-entropy (``total``) and the fraction of actions told right (``accuracy``)."""
        logits = self(obs, next_obs)
        accuracy = (logits.argmax(1) == actions).float().mean().detach()
        return {"total": F.cross_entropy(logits, actions), "accuracy": accuracy}

    def embedding_layers(self) -> tuple[nn.Module, nn.Module]:
        """(torso, head): the part an ``encoder=inverse`` keeps."""
        return self.torso, self.head

    def describe(self) -> dict[str, Any]:
        return {"num_actions": self.num_actions, "latent_dim": self.latent_dim, "hidden": list(self.hidden),
                "torso": self.torso_kind}

    @classmethod
    def from_description(cls, observation_space: gym.spaces.Box, data: dict[str, Any]) -> InverseDynamics:
        return cls(observation_space, data["num_actions"], data["latent_dim"], data["hidden"], data["torso"])
