"""A2C (Mnih et al. 2016, synchronous): n-step advantage actor-critic over N envs with an entropy bonus.

Every ``n_steps`` vector steps: advantages by GAE (``gae_lambda`` 1 gives the plain n-step returns
R_t = r_t + ... + gamma^k V(s_{t+k}) of the paper), one gradient step on
-mean(A log pi(a|s)) + vf_coef * mean((R - V(s))^2) - ent_coef * entropy. RMSprop, as in the paper (and SB3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gbmr.agents.policy_gradient import (
    PolicyGradientAgent,
    PolicyGradientConfig,
    PolicyGradientLearner,
    explained_variance,
    normalize,
)
from gbmr.core.batch import Batch
from gbmr.core.errors import GbmrError
from gbmr.memory.rollout import flatten_time, gae


@dataclass
class A2CConfig(PolicyGradientConfig):
    lr: float = 7e-4
    n_steps: int = 5
    gae_lambda: float = 1.0
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    optimizer: str = "rmsprop"
    norm_adv: bool = False


class A2CLearner(PolicyGradientLearner):
    def __init__(self, config: A2CConfig, policy, num_envs, device, seed, total_steps):
        if config.n_steps < 1:
            raise GbmrError(f"n_steps must be at least 1, got {config.n_steps}")
        super().__init__(config, policy, num_envs, device, seed, total_steps)

    def rollout_capacity(self) -> int:
        return self.config.n_steps

    def learn(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            advantages, returns = gae(batch["rewards"], batch["values"], batch["next_values"], batch["dones"],
                                      cfg.gamma, cfg.gae_lambda)
        advantages, returns = flatten_time(advantages), flatten_time(returns)
        log_probs, entropy, values = self.evaluate_actions(batch.flat("obs"), batch.flat("actions"))
        if cfg.norm_adv:
            advantages = normalize(advantages)
        policy_loss = -(advantages * log_probs).mean()
        value_loss = F.mse_loss(values, returns)
        entropy = entropy.mean()
        self.optimise(policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy)
        policy_loss, value_loss, entropy = torch.stack((policy_loss, value_loss, entropy)).tolist()
        return {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                "explained_variance": explained_variance(values.detach(), returns)}


class A2CAgent(PolicyGradientAgent):
    Config = A2CConfig
    Learner = A2CLearner
    metric_names = ("policy_loss", "value_loss", "entropy", "explained_variance")
