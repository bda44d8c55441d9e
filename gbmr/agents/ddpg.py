"""DDPG (Lillicrap et al. 2016): TD3's deterministic actor-critic (td3.py) with one critic and no target policy
smoothing, exploring with Gaussian or Ornstein-Uhlenbeck (``noise_type=ou``) noise. CleanRL's defaults
(ddpg_continuous_action.py): lr 3e-4, batch 256, tau 0.005, 25k warm-up steps, noise 0.1, actor and targets
updated every 2 critic updates."""

from __future__ import annotations

from dataclasses import dataclass

from gbmr.agents.td3 import TD3Agent, TD3Config


@dataclass
class DDPGConfig(TD3Config):
    n_critics: int = 1
    policy_noise: float = 0.0


class DDPGAgent(TD3Agent):
    Config = DDPGConfig
