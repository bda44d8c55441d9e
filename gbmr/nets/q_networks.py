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
        # The torso's layers, called through their ``forward`` (a plain tuple, so not registered twice): going
        # through ``nn.Module.__call__`` costs ~2 us a module, as much as a small layer's maths, and these
        # nets use no hooks. DQN calls the net at every env step and three times per gradient step.
        self._torso_layers = tuple(self.torso)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = obs
        for layer in self._torso_layers:
            features = layer.forward(features)
        advantage = self.advantage.forward(features)
        if self.value is None:
            return advantage
        return self.value.forward(features) + advantage - advantage.mean(dim=1, keepdim=True)
