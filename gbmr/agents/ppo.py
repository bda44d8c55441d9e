"""PPO (Schulman et al. 2017) with the implementation details of Huang et al. 2022 (CleanRL's ppo.py).

A rollout of ``n_steps`` per env, GAE advantages, then ``update_epochs`` passes over it in ``num_minibatches``
shuffled minibatches of the clipped surrogate, the (optionally clipped) value loss and an entropy bonus;
advantages normalised per minibatch, learning rate annealed, gradients clipped, early stop at ``target_kl``.
Discrete (categorical) and continuous (diagonal Gaussian) actions. For rollouts collected by older weights (async
distributed runs) ``correction=vtrace`` replaces GAE on the behaviour's values by V-trace on the current ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gbmr.agents.policy_gradient import (
    PolicyGradientAgent,
    PolicyGradientConfig,
    PolicyGradientLearner,
    explained_variance,
    normalize,
)
from gbmr.core.batch import Batch
from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.memory.rollout import flatten_time, gae, vtrace

CORRECTIONS = ("clip", "vtrace")


@dataclass
class PPOConfig(PolicyGradientConfig):
    lr: float = 2.5e-4
    n_steps: int = 128  # rollout length per env
    gae_lambda: float = 0.95
    update_epochs: int = 4
    num_minibatches: int = 4
    clip_coef: float = 0.2
    clip_vloss: bool = True
    norm_adv: bool = True
    ent_coef: float = 0.01
    target_kl: float = 0.0  # 0 = no early stopping
    anneal_lr: bool = True
    # clip: GAE on the values recorded while acting, the clipped ratio pi/mu as the only correction for stale
    # data; vtrace: V-trace advantages and targets on the current values, ratios truncated at these bars
    correction: str = "clip"
    vtrace_rho_bar: float = 1.0
    vtrace_c_bar: float = 1.0


def ppo_losses(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
               new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_coef: float,
               clip_vloss: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(policy loss, value loss, approximate KL, clip fraction) of a minibatch.

    policy: mean of max(-A r, -A clip(r, 1 - c, 1 + c)), r = pi_new(a|s) / pi_old(a|s);
    value: 0.5 mean (V - R)^2, or with clipping 0.5 mean max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2);
    KL: mean((r - 1) - log r) (Schulman's low-variance estimator)."""
    log_ratio = new_log_probs - old_log_probs
    ratio = log_ratio.exp()
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    value_error = (new_values - returns).square()
    if clip_vloss:
        clipped = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
        value_error = torch.max(value_error, (clipped - returns).square())
    value_loss = 0.5 * value_error.mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip_coef).float().mean()
    return policy_loss, value_loss, approx_kl, clip_fraction


class PPOLearner(PolicyGradientLearner):
    def __init__(self, config: PPOConfig, policy, num_envs, device, seed, total_steps):
        if config.n_steps < 1 or config.num_minibatches < 1:
            raise GbmrError(f"ppo needs n_steps >= 1 and num_minibatches >= 1, got {config.n_steps} and "
                            f"{config.num_minibatches}")
        if config.correction not in CORRECTIONS:
            raise unknown_choice("correction", config.correction, CORRECTIONS)
        super().__init__(config, policy, num_envs, device, seed, total_steps)
        units = self.training_units(config.n_steps)
        if units < config.num_minibatches:
            raise GbmrError(f"a rollout of {units} training units (n_steps x num_envs) cannot make "
                            f"num_minibatches={config.num_minibatches} minibatches")

    def rollout_capacity(self) -> int:
        return self.config.n_steps

    def learn(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        units = self.training_units(batch.steps)
        minibatch = units // cfg.num_minibatches
        old_log_probs = batch.flat("log_probs")
        with torch.no_grad():
            if cfg.correction == "vtrace":
                advantages, returns, old_values = self.vtrace_targets(batch, minibatch)
            else:
                advantages, returns = gae(batch["rewards"], batch["values"], batch["next_values"], batch["dones"],
                                          cfg.gamma, cfg.gae_lambda)
                old_values = batch["values"]
        advantages, returns, old_values = flatten_time(advantages), flatten_time(returns), flatten_time(old_values)
        totals = torch.zeros(5, device=self.device)
        count = 0
        for _ in range(cfg.update_epochs):
            order = torch.as_tensor(self.rng.permutation(units), device=self.device)
            for start in range(0, minibatch * cfg.num_minibatches, minibatch):
                log_probs, entropy, values, idx = self.evaluate_units(batch, order[start:start + minibatch])
                adv = normalize(advantages[idx]) if cfg.norm_adv else advantages[idx]
                policy_loss, value_loss, approx_kl, clip_fraction = ppo_losses(
                    log_probs, old_log_probs[idx], adv, values, old_values[idx], returns[idx], cfg.clip_coef,
                    cfg.clip_vloss)
                entropy = entropy.mean()
                self.optimise(policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss)
                totals += torch.stack((policy_loss.detach(), value_loss.detach(), entropy.detach(), approx_kl,
                                       clip_fraction))
                count += 1
            if cfg.target_kl > 0 and approx_kl.item() > cfg.target_kl:
                break
        means = (totals / count).tolist()
        return {"policy_loss": means[0], "value_loss": means[1], "entropy": means[2], "approx_kl": means[3],
                "clip_fraction": means[4], "explained_variance": explained_variance(old_values, returns),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def vtrace_targets(self, batch: Batch, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(advantages, value targets, current values), [T, N], by V-trace from pi and V as they are now; the
        bootstraps (episode ends, the rollout's end) stay the values recorded while acting."""
        steps = batch.steps
        log_probs, values = (torch.empty(steps * self.num_envs, device=self.device) for _ in range(2))
        for units in torch.arange(self.training_units(steps), device=self.device).split(chunk):
            unit_log_probs, _, unit_values, idx = self.evaluate_units(batch, units)
            log_probs[idx], values[idx] = unit_log_probs, unit_values
        log_probs, values = log_probs.view(steps, -1), values.view(steps, -1)
        recorded, dones = batch["next_values"], batch["dones"]
        following = torch.cat((values[1:], recorded[-1:]), dim=0)  # the rollout's end: the recorded V(s_T)
        next_values = torch.where(dones, recorded, following)
        cfg = self.config
        advantages, targets = vtrace(batch["rewards"], values, next_values, dones, log_probs - batch["log_probs"],
                                     cfg.gamma, cfg.gae_lambda, cfg.vtrace_rho_bar, cfg.vtrace_c_bar)
        return advantages, targets, values

    def training_units(self, rollout_steps: int) -> int:
        """How many things minibatches are drawn from: single steps here; sequences for a policy with memory."""
        return rollout_steps * self.num_envs

    def evaluate_units(self, batch: Batch, units: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log pi, entropy, V) of the minibatch's steps and their indices into the time-major flat rollout."""
        return *self.evaluate_actions(batch.flat("obs")[units], batch.flat("actions")[units]), units


class PPOAgent(PolicyGradientAgent):
    Config = PPOConfig
    Learner = PPOLearner
    metric_names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance",
                    "lr")
