"""Soft Actor-Critic (Haarnoja et al. 2018) and discrete SAC (Christodoulou 2019).

Continuous: a squashed Gaussian actor in [-1, 1]^d, twin critics (one batched ensemble) with Polyak targets,
the soft target ``r + discount * (min_j Q'_j(s', u') - alpha log pi(u'|s'))`` with u' ~ pi(.|s'), an actor that
minimises ``alpha log pi(u|s) - min_j Q_j(s, u)``, and the temperature tuned towards the target entropy
(-dim(A) by default; the log-probabilities are those of the normalised actions, as in SB3). CleanRL's
defaults (sac_continuous_action.py): actor lr 3e-4, critic and temperature lr 1e-3, batch 256, tau 0.005,
5000 warm-up steps, ``policy_frequency`` 2 actor updates every 2 critic updates.

Discrete (a Discrete action space; CleanRL's sac_atari.py): critics output Q(s, .), expectations over the
policy's probabilities replace the sampled actions, and the target entropy is ``target_entropy_scale`` x
log |A|.

``SACPolicy`` acts (a squashed Gaussian sample, or a categorical one; greedy: tanh of the mean, or the argmax),
``SACLearner`` holds the critics, their targets, the temperature and the optimisers; ``SACAgent`` composes them
(off_policy_ac.py).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gbmr.agents.off_policy_ac import (
    OffPolicyActorCritic,
    OffPolicyConfig,
    OffPolicyLearner,
    OffPolicyPolicy,
    critic_loss,
)
from gbmr.agents.optim import adam_step
from gbmr.nets.continuous import CategoricalActor, CriticEnsemble, SquashedGaussianActor
from gbmr.nets.policies import exponential_noise, gumbel_max


@dataclass
class SACConfig(OffPolicyConfig):
    learning_starts: int = 5_000
    q_lr: float = 1e-3
    autotune: bool = True  # learn the temperature alpha
    alpha: float = 0.2  # the fixed temperature without autotune
    alpha_init: float = 1.0  # the learnt temperature's start (CleanRL's and SB3's log alpha = 0)
    target_entropy: float | None = None  # None: -dim(A) for a Box, target_entropy_scale * log|A| for Discrete
    target_entropy_scale: float = 0.89
    target_network_frequency: int = 1  # critic updates between Polyak updates


def soft_q_target(returns: torch.Tensor, discounts: torch.Tensor, next_q: torch.Tensor, next_log_pi: torch.Tensor,
                  alpha: torch.Tensor) -> torch.Tensor:
    """y = r + discount * (min_j next_q[j] - alpha * log pi(u'|s')): ``next_q`` [n, B] at sampled u' ~ pi(.|s')."""
    return returns + discounts * (next_q.amin(dim=0) - alpha * next_log_pi)


def discrete_soft_q_target(returns: torch.Tensor, discounts: torch.Tensor, next_q: torch.Tensor,
                           next_logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """y = r + discount * sum_a pi(a|s') (min_j next_q[j, :, a] - alpha log pi(a|s')), ``next_q`` [n, B, A]."""
    log_pi = F.log_softmax(next_logits, dim=-1)
    return returns + discounts * (log_pi.exp() * (next_q.amin(dim=0) - alpha * log_pi)).sum(dim=-1)


def temperature_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float,
                     probs: torch.Tensor | None = None) -> torch.Tensor:
    """-alpha (log pi + H_target), averaged over the batch (and weighted by pi's probabilities for discrete
    SAC): alpha grows while the policy's entropy -log pi is below the target, shrinks above it."""
    per_action = -log_alpha.exp() * (log_pi.detach() + target_entropy)
    if probs is not None:
        per_action = (probs.detach() * per_action).sum(dim=-1)
    return per_action.mean()


class Temperature(nn.Module):
    """log alpha as a module, so it checkpoints and optimises as the nets do."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha), dtype=torch.float32))


class SACPolicy(OffPolicyPolicy):
    """Samples the squashed Gaussian with each env's normal noise, or the categorical by Gumbel-max with its
    exponential noise; greedy, tanh(mean) or argmax."""

    def make_actor(self) -> nn.Module:
        if self.discrete:
            return CategoricalActor(self.feature_dim, self.action_dim, self.config.hidden)
        return SquashedGaussianActor(self.feature_dim, self.action_dim, self.config.hidden)

    def exploration(self, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.discrete:
            return super().exploration(state)
        return torch.from_numpy(exponential_noise(self.explore_rngs, self.action_dim)).to(self.device), state

    def actor_actions(self, features: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self.discrete:
            logits = self.actor(features)
            if noise is None:
                return logits.argmax(dim=-1)
            return gumbel_max(logits, noise)
        if noise is None:
            return self.actor.greedy(features)
        return self.actor.sample(features, noise)[0]


class SACLearner(OffPolicyLearner):
    """Twin critics on the soft target, the actor every ``policy_frequency`` critic updates (as many steps),
    the temperature after each actor step, Polyak targets every ``target_network_frequency``."""

    def build(self) -> None:
        cfg, device = self.config, self.device
        if self.discrete:
            self.critic = CriticEnsemble(2, self.feature_dim, cfg.hidden, self.action_dim).to(device)
            default_entropy = cfg.target_entropy_scale * math.log(self.action_dim)
        else:
            self.critic = CriticEnsemble(2, self.feature_dim + self.action_dim, cfg.hidden).to(device)
            default_entropy = -float(self.action_dim)
        self.target_entropy = default_entropy if cfg.target_entropy is None else float(cfg.target_entropy)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params, self.critic_params = list(self.actor.parameters()), self.critic_parameters()
        self.actor_optimizer = self.adam(self.actor_params, cfg.policy_lr)
        self.critic_optimizer = self.adam(self.critic_params, cfg.q_lr)
        self.temperature = Temperature(cfg.alpha_init if cfg.autotune else cfg.alpha).to(device)
        self.temperature.requires_grad_(cfg.autotune)
        self.alpha_optimizer = self.adam([self.temperature.log_alpha], cfg.q_lr)
        self.alpha = self.temperature.log_alpha.detach().exp()

    def checkpointed(self) -> dict:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                "temperature": self.temperature, "actor_optimizer": self.actor_optimizer,
                "critic_optimizer": self.critic_optimizer, "alpha_optimizer": self.alpha_optimizer}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.alpha = self.temperature.log_alpha.detach().exp()

    def gradient_step(self, obs, actions, returns, next_obs, discounts) -> dict[str, torch.Tensor]:
        cfg = self.config
        metrics, features = self._critic_step(obs, actions, returns, next_obs, discounts)
        if self.updates % cfg.policy_frequency == 0:  # actor metrics only where the actor learned
            for _ in range(cfg.policy_frequency):  # CleanRL: the delayed actor catches up with as many steps
                metrics.update(self._actor_step(features.detach()))
        if self.updates % cfg.target_network_frequency == 0:
            self.update_critic_target()
        return metrics

    def _critic_step(self, obs, actions, returns, next_obs, discounts
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The critic (and encoder) update; its metrics and the features of ``obs`` the actor then reads
        (the encoder's output before this step: the actor does not train it, see off_policy_ac.py)."""
        with torch.no_grad():
            next_features, next_target = self.encode(next_obs), self.encode(next_obs, target=True)
            if self.discrete:
                target = discrete_soft_q_target(returns, discounts, self.critic_target(next_target),
                                                self.actor(next_features), self.alpha)
            else:
                next_u, next_log_pi = self.actor.sample(next_features, self.randn(len(next_obs), self.action_dim))
                next_q = self.critic_target(torch.cat((next_target, next_u), dim=1)).squeeze(-1)
                target = soft_q_target(returns, discounts, next_q, next_log_pi, self.alpha)
        features = self.encode(obs)
        if self.discrete:
            index = actions.long().view(1, -1, 1).expand(2, -1, 1)
            q = self.critic(features).gather(2, index).squeeze(-1)
        else:
            q = self.critic(torch.cat((features, actions), dim=1)).squeeze(-1)
        loss = critic_loss(q, target)
        self.optimise(loss, self.critic_params, self.critic_optimizer)
        return {"qf_loss": loss.detach(), "q_mean": q.detach().mean()}, features

    def _actor_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``obs``: the observations' (detached) features."""
        alpha = self.alpha
        if self.discrete:
            logits = self.actor(obs)
            log_pi = F.log_softmax(logits, dim=-1)
            probs = log_pi.exp()
            with torch.no_grad():
                q = self.critic(obs).amin(dim=0)
            loss = (probs * (alpha * log_pi - q)).sum(dim=-1).mean()
            entropy = -(probs * log_pi).sum(dim=-1).mean().detach()
        else:
            u, log_pi = self.actor.sample(obs, self.randn(len(obs), self.action_dim))
            q = self.critic(torch.cat((obs, u), dim=1), detach_params=True).squeeze(-1).amin(dim=0)
            loss = (alpha * log_pi - q).mean()
            probs = None
            entropy = -log_pi.detach().mean()
        self.optimise(loss, self.actor_params, self.actor_optimizer)
        metrics = {"actor_loss": loss.detach(), "entropy": entropy}
        if self.config.autotune:
            log_alpha = self.temperature.log_alpha
            with torch.no_grad():  # the loss is linear in alpha = exp(log alpha): its gradient is the loss itself
                alpha_loss = temperature_loss(log_alpha, log_pi, self.target_entropy, probs)
            log_alpha.grad = alpha_loss.clone()
            adam_step(self.alpha_optimizer)
            self.alpha = log_alpha.detach().exp()
            metrics["alpha_loss"] = alpha_loss.detach()
        metrics["alpha"] = self.alpha
        return metrics


class SACAgent(OffPolicyActorCritic):
    Config = SACConfig
    metric_names = ("qf_loss", "q_mean", "actor_loss", "alpha", "alpha_loss", "entropy")
    discrete_ok = True
    policy_class = SACPolicy
    learner_class = SACLearner
