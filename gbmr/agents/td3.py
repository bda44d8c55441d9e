"""TD3 (Fujimoto et al. 2018), and the deterministic actor-critic DDPG (ddpg.py) shares with it.

A deterministic tanh actor in [-1, 1]^d explores with Gaussian noise (``exploration_noise`` x N(0, 1), clipped
to the cube; or Ornstein-Uhlenbeck noise). ``n_critics`` critics in one batched ensemble learn
``r + discount * min_j Q'_j(s', clip(mu'(s') + clip(policy_noise x N(0, 1), +-noise_clip), -1, 1))``: clipped
double Q (n_critics = 2) with target policy smoothing (policy_noise > 0). Every ``policy_frequency`` critic
updates the actor ascends Q_1(s, mu(s)) and the targets move by Polyak averaging. CleanRL's defaults
(td3_continuous_action.py): lr 3e-4, batch 256, tau 0.005, 25k warm-up steps, noise 0.1, smoothing 0.2 clipped
at 0.5, delay 2. DDPG is the same with one critic and no smoothing.

``DeterministicPolicy`` acts (the actor plus its noise; the OU process is per-env acting state that restarts
with each episode), ``TD3Learner`` holds the critics, the target actor and critics and the optimisers;
``TD3Agent`` composes them (off_policy_ac.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gbmr.agents.off_policy_ac import (
    OffPolicyActorCritic,
    OffPolicyConfig,
    OffPolicyLearner,
    OffPolicyPolicy,
    critic_loss,
)
from gbmr.core.errors import unknown_choice
from gbmr.nets.continuous import CriticEnsemble, DeterministicActor

NOISE_TYPES = ("gaussian", "ou")


@dataclass
class TD3Config(OffPolicyConfig):
    n_critics: int = 2  # 2: clipped double Q; 1: DDPG's single critic
    policy_noise: float = 0.2  # std of the target policy smoothing (0: none)
    noise_clip: float = 0.5
    exploration_noise: float = 0.1  # std (gaussian) or sigma (ou) of the acting noise, in [-1, 1] units
    noise_type: str = "gaussian"  # gaussian | ou (Ornstein-Uhlenbeck, restarted at each episode)
    ou_theta: float = 0.15  # SB3's OrnsteinUhlenbeckActionNoise defaults
    ou_dt: float = 1e-2


def smoothed_target_actions(target_actions: torch.Tensor, noise: torch.Tensor, policy_noise: float,
                            noise_clip: float) -> torch.Tensor:
    """clip(mu'(s') + clip(policy_noise * noise, -noise_clip, noise_clip), -1, 1) for standard normal noise."""
    smoothing = (policy_noise * noise).clamp(-noise_clip, noise_clip)
    return (target_actions + smoothing).clamp(-1.0, 1.0)


def clipped_double_q_target(returns: torch.Tensor, discounts: torch.Tensor, next_q: torch.Tensor) -> torch.Tensor:
    """y = r + discount * min_j next_q[j] (``next_q`` [n, B]; n = 1 is DDPG's plain target)."""
    return returns + discounts * next_q.amin(dim=0)


class DeterministicPolicy(OffPolicyPolicy):
    """mu(s) plus Gaussian noise (``exploration_noise`` x N(0, 1)) or Ornstein-Uhlenbeck noise, clipped to the
    cube; greedy, mu(s). The OU process of each env is the policy's state: ``initial_state`` and
    ``episode_ends`` put it at 0."""

    def __init__(self, config: TD3Config, *args, **kwargs) -> None:
        if config.noise_type not in NOISE_TYPES:
            raise unknown_choice("noise_type", config.noise_type, NOISE_TYPES)
        super().__init__(config, *args, **kwargs)

    def make_actor(self) -> nn.Module:
        return DeterministicActor(self.feature_dim, self.action_dim, self.config.hidden)

    def initial_state(self, num_envs: int) -> dict[str, torch.Tensor]:
        if self.config.noise_type != "ou":
            return {}
        return {"ou": torch.zeros(num_envs, self.action_dim)}

    def episode_ends(self, state: dict[str, torch.Tensor], dones: torch.Tensor) -> dict[str, torch.Tensor]:
        if not state:
            return state
        ou = state["ou"].clone()
        ou[dones] = 0.0
        return {"ou": ou}

    def exploration(self, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This step's acting noise, [num_envs, d], from each env's stream."""
        cfg = self.config
        if cfg.noise_type == "gaussian":
            return cfg.exploration_noise * torch.from_numpy(self.normal_noise()).to(self.device), state
        # x <- x + theta (0 - x) dt + sigma sqrt(dt) N(0, 1)  (SB3's OrnsteinUhlenbeckActionNoise, mean 0)
        x = state["ou"].numpy()
        step = -cfg.ou_theta * x * cfg.ou_dt + cfg.exploration_noise * np.sqrt(cfg.ou_dt) * self.normal_noise()
        ou = torch.from_numpy((x + step).astype(np.float32))  # a new array: noise and state may share it
        return ou.to(self.device), {"ou": ou}

    def actor_actions(self, features: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        actions = self.actor(features)
        return actions if noise is None else (actions + noise).clamp(-1.0, 1.0)


class TD3Learner(OffPolicyLearner):
    """``n_critics`` critics on the clipped double-Q target with target policy smoothing; the actor and all
    targets every ``policy_frequency`` critic updates."""

    def build(self) -> None:
        cfg, device = self.config, self.device
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = CriticEnsemble(cfg.n_critics, self.feature_dim + self.action_dim, cfg.hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params, self.critic_params = list(self.actor.parameters()), self.critic_parameters()
        self.actor_optimizer = self.adam(self.actor_params, cfg.policy_lr)
        self.critic_optimizer = self.adam(self.critic_params, cfg.q_lr)
        self.actor_updates = 0

    def checkpointed(self) -> dict:
        return {"actor": self.actor, "actor_target": self.actor_target, "critic": self.critic,
                "critic_target": self.critic_target, "actor_optimizer": self.actor_optimizer,
                "critic_optimizer": self.critic_optimizer}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "actor_updates": self.actor_updates}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.actor_updates = state["actor_updates"]

    def gradient_step(self, obs, actions, returns, next_obs, discounts) -> dict[str, torch.Tensor]:
        cfg = self.config
        with torch.no_grad():  # the target actor reads the target encoder's features, as the target critics do
            next_features = self.encode(next_obs, target=True)
            next_u = self.actor_target(next_features)
            if cfg.policy_noise > 0:
                next_u = smoothed_target_actions(next_u, self.randn(*next_u.shape), cfg.policy_noise, cfg.noise_clip)
            next_q = self.critic_target(torch.cat((next_features, next_u), dim=1)).squeeze(-1)
            target = clipped_double_q_target(returns, discounts, next_q)
        features = self.encode(obs)
        q = self.critic(torch.cat((features, actions), dim=1)).squeeze(-1)
        loss = critic_loss(q, target)
        self.optimise(loss, self.critic_params, self.critic_optimizer)
        metrics = {"qf_loss": loss.detach(), "q_mean": q.detach().mean()}
        if self.updates % cfg.policy_frequency == 0:  # actor metrics only where the actor learned
            metrics["actor_loss"] = self._actor_step(features.detach())
            self.soft_update(self.actor_target, self.actor)
            self.update_critic_target()
        return metrics

    def _actor_step(self, obs: torch.Tensor) -> torch.Tensor:
        """Ascend Q_1(s, mu(s)) (the first critic, as in the paper), gradients to the actor only; ``obs``: the
        observations' detached features (the encoder learns from the critic loss)."""
        q = self.critic(torch.cat((obs, self.actor(obs)), dim=1), detach_params=True, members=1)[0].squeeze(-1)
        loss = -q.mean()
        self.optimise(loss, self.actor_params, self.actor_optimizer)
        self.actor_updates += 1
        return loss.detach()


class TD3Agent(OffPolicyActorCritic):
    Config = TD3Config
    metric_names = ("qf_loss", "q_mean", "actor_loss")
    policy_class = DeterministicPolicy
    learner_class = TD3Learner
