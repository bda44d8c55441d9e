"""REINFORCE (Williams 1992): Monte-Carlo policy gradient, one gradient step per batch of whole episodes.

The loss is -sum_t log pi(a_t|s_t) (G_t - b(s_t)) over the steps of the episodes that ended since the last
update, G_t the reward-to-go. Options: a learned value baseline b (``baseline``; then a truncated episode's
return is bootstrapped from V too), research note 003's *round* discounting (``round_discount``: the discounted
sum restarts at every nonzero reward, a point in Pong, so a step is credited only with its own point), returns
normalised per batch (``normalize_returns``), and the loss divided by the number of steps, episodes or rounds
(``loss_per``: the note found dividing by rounds better than by steps on Pong).

Episodes are whole: steps of an episode (or, with round discounting, a round) still running when the batch is
complete are left out, and the next batch starts where they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gbmr.agents.policy_gradient import PolicyGradientAgent, PolicyGradientConfig, PolicyGradientLearner, normalize
from gbmr.core.batch import Batch
from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.memory.rollout import RolloutStorage, discounted_returns, round_cuts

LOSS_PER = ("step", "episode", "round")


@dataclass
class ReinforceConfig(PolicyGradientConfig):
    lr: float = 1e-3
    batch_episodes: int = 4  # episodes per gradient step
    max_rollout_steps: int = 5000  # per env: a batch is also complete when the storage is full
    baseline: bool = False
    round_discount: bool = False
    normalize_returns: bool = False
    loss_per: str = "step"  # step | episode | round


def finished_mask(dones: torch.Tensor) -> torch.Tensor:
    """[T, N] True for the steps followed, in their env, by an episode end at or after them (whole episodes)."""
    return dones.flip(0).to(torch.int8).cummax(dim=0).values.flip(0).bool()


class ReinforceLearner(PolicyGradientLearner):
    def __init__(self, config: ReinforceConfig, policy, num_envs, device, seed, total_steps):
        if config.loss_per not in LOSS_PER:
            raise unknown_choice("loss_per", config.loss_per, LOSS_PER)
        if config.batch_episodes < 1 or config.max_rollout_steps < 1:
            raise GbmrError("reinforce needs batch_episodes >= 1 and max_rollout_steps >= 1")
        super().__init__(config, policy, num_envs, device, seed, total_steps)

    def rollout_capacity(self) -> int:
        return self.config.max_rollout_steps

    def ready(self, storage: RolloutStorage) -> bool:
        """``batch_episodes`` episodes ended since the rollout began (or it is full)."""
        return storage.full or int(storage["dones"].sum()) >= self.config.batch_episodes

    def learn(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        rewards, dones = batch["rewards"], batch["dones"]
        next_values = batch["next_values"] if cfg.baseline else torch.zeros_like(rewards)
        if cfg.round_discount:
            next_values, dones = round_cuts(rewards, next_values, dones)
        returns = discounted_returns(rewards, next_values, dones, cfg.gamma)
        mask = finished_mask(dones)
        if not mask.any():
            return {}
        log_probs, entropy, values = self.evaluate_actions(batch["obs"][mask], batch["actions"][mask])
        returns = returns[mask]
        weights = returns - values.detach() if cfg.baseline else returns
        if cfg.normalize_returns:
            weights = normalize(weights)
        episodes_ended = batch["dones"][mask].sum()
        divisor = {"step": mask.sum(), "episode": episodes_ended,
                   "round": (rewards[mask] != 0).sum()}[cfg.loss_per].clamp(min=1)
        policy_loss = -(log_probs * weights).sum() / divisor
        value_loss = F.mse_loss(values, returns) if cfg.baseline else torch.zeros((), device=self.device)
        entropy = entropy.mean()
        self.optimise(policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy)
        episode_returns = rewards[mask].sum() / episodes_ended.clamp(min=1)
        policy_loss, value_loss, entropy, batch_return = torch.stack(
            (policy_loss, value_loss, entropy, episode_returns)).tolist()
        return {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                "batch_return": batch_return}


class ReinforceAgent(PolicyGradientAgent):
    Config = ReinforceConfig
    Learner = ReinforceLearner
    metric_names = ("policy_loss", "value_loss", "entropy", "batch_return")
