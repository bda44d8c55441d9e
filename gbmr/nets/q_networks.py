"""Action-value networks: a torso followed by a plain or dueling head (Wang et al. 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import nn

from gbmr.nets.torsos import make_torso


class QNetwork(nn.Module):
    def __init__(
        self,
        observation_space: gym.Space,
        num_actions: int,
        torso: str = "auto",
        hidden: Sequence[int] = (256,),
        dueling: bool = False,
    ) -> None:
        super().__init__()
        self.torso, features = make_torso(torso, observation_space, hidden)
        self.dueling = dueling
        self.advantage = nn.Linear(features, num_actions)
        self.value = nn.Linear(features, 1) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # ``forward`` rather than ``__call__`` (no hooks; ~2 us a module call): DQN calls the net at every env
        # step and three times per gradient step.
        features = self.torso.forward(obs)
        advantage = self.advantage.forward(features)
        if self.value is None:
            return advantage
        return self.value.forward(features) + advantage - advantage.mean(dim=1, keepdim=True)
