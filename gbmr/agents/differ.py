"""DIFFER (Hu et al. 2023, github cathyhxh/DIFFER): QMIX whose agent networks learn from individual TD errors,
replayed selectively.

The mixer learns from the team TD error delta_tot = Q_tot - y_tot as in QMIX, on the agents' Q_i taken as fixed
inputs. The agent networks learn from individual targets built from an individual reward per agent,

    r_i = -(dQ_tot/dQ_i) * delta_tot + Q_i - gamma * (1 - done_i) * Q_i'     (DIFFER's ``cal_indi_reward``)
    y_i = r_i + gamma * (1 - done_i) * Q_i'    so    delta_i = Q_i - y_i = (dQ_tot/dQ_i) * delta_tot,

whose squared error has the same gradient in Q_i as the team loss (d(delta_tot^2)/dQ_i = d(delta_i^2)/dQ_i), the
paper's invariance, with dQ_tot/dQ_i clamped to [-10, 10] as the reference does. ``done_i`` is the per-agent
terminated flag (an agent that died at t has no future of its own), and the (episode, t, agent) samples of dead
agents are masked out.

The individual samples are then selected (``selected``): ``PER_weight`` (the note's setting) draws
``selected_ratio`` x (valid samples) of them with replacement with probability p ~ (|delta_i| + selected_epsilon)
^ selected_alpha and weights each draw by the importance weight (1 / (N p)) ^ beta normalised by its maximum
(beta from ``beta_start`` to ``beta_end`` over the run); ``selected_ratio`` rises from ``selected_ratio_start``
to ``selected_ratio_end`` over the first ``warm_up_ratio`` of training when ``warm_up`` is on. The mixer and the
agent networks have their own optimisers, as in the reference learner.

Experience sharing (research note 004, ``experience_sharing: true``): in each episode of the batch an agent shares
the steps whose individual TD error lies in the tails of its own errors' normal fit (beyond ``share_threshold``
standard deviations of their mean over the episode's real steps; ``share_mode: probability`` shares a step with
probability P(|Z| < |z|) instead, so extremes are shared most but any step may be), and every other agent whose own
fit also puts that error in its tails receives it. A received sample joins the pool the selection draws from as one
more copy of the sender's sample (with the agent networks shared, training on it again is what receiving means).
The note's reference code computes the statistics over the padded steps too and, through ``==`` typed for ``=``,
shares only zeros; here the statistics use the real steps and the shared errors are the agents' own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gbmr.agents.acting import linear_schedule
from gbmr.agents.qmix import QMIXAgent, QMIXConfig, masked_mse, td_targets
from gbmr.core.errors import unknown_choice

SELECTIONS = ("all", "greedy", "PER_hard", "PER_weight")
SHARE_MODES = ("tails", "probability")
GRAD_CLAMP = 10.0  # the reference clamps dQ_tot/dQ_i to [-10, 10]


@dataclass
class DIFFERConfig(QMIXConfig):
    selected: str = "PER_weight"  # all | greedy | PER_hard | PER_weight
    warm_up: bool = True
    selected_alpha: float = 0.8
    selected_ratio: float = 0.6  # used when warm_up is off
    selected_ratio_start: float = 0.8
    selected_ratio_end: float = 1.0
    warm_up_ratio: float = 0.6  # fraction of the run over which selected_ratio rises
    selected_epsilon: float = 0.01
    beta_start: float = 0.6
    beta_end: float = 1.0
    experience_sharing: bool = False
    share_threshold: float = 1.0  # standard deviations from the mean: the tails an agent shares and accepts
    share_mode: str = "tails"  # tails | probability


# ---------------------------------------------------------------------- the maths
def selected_ratio(step: int, total_steps: int, config: DIFFERConfig) -> float:
    """The fraction of individual samples drawn: the warm-up line, then its end value (or constant)."""
    if not config.warm_up:
        return config.selected_ratio
    return linear_schedule(config.selected_ratio_start, config.selected_ratio_end,
                           config.warm_up_ratio * total_steps, step)


def agent_mask(filled: torch.Tensor, terminated: torch.Tensor, agent_terminated: torch.Tensor) -> torch.Tensor:
    """[B, T, n]: the real steps of the episode on which each agent was still alive (DIFFER's ``q_mask``)."""
    mask = filled[..., None].repeat(1, 1, agent_terminated.shape[-1])
    mask[:, 1:] = mask[:, 1:] * (1 - agent_terminated[:, :-1]) * (1 - terminated[:, :-1, None])
    return mask


def mixer_gradients(q_tot: torch.Tensor, agent_qs: torch.Tensor) -> torch.Tensor:
    """dQ_tot/dQ_i [B, T, n] for a mixer output computed from ``agent_qs`` (a leaf that requires grad); each Q_tot
    depends only on its own step's Q_i, so one backward of the sum gives all of them. Clamped as the reference."""
    (grads,) = torch.autograd.grad(q_tot.sum(), agent_qs, retain_graph=True)
    return grads.clamp(-GRAD_CLAMP, GRAD_CLAMP)


def individual_rewards(grads: torch.Tensor, td_tot: torch.Tensor, chosen_q: torch.Tensor, next_q: torch.Tensor,
                       agent_terminated: torch.Tensor, gamma: float) -> torch.Tensor:
    """DIFFER's r_i = -(dQ_tot/dQ_i) delta_tot + Q_i - gamma (1 - done_i) Q_i' (all [B, T, n]; td_tot [B, T])."""
    return -grads * td_tot[..., None] + chosen_q - gamma * (1 - agent_terminated) * next_q


def selection_weights(abs_td: np.ndarray, mask: np.ndarray, ratio: float, config: DIFFERConfig, beta: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Weights [B, T, n] of the individual samples in the agents' loss (0 = not selected), as DIFFER's
    ``select_trajectory``; ``abs_td`` is |delta_i| (0 where masked)."""
    kind = config.selected
    if kind == "all":
        return mask.copy()
    count = int(mask.sum() * ratio)
    if count < 1:
        return np.zeros_like(mask)
    if kind == "greedy":  # the ``count`` largest errors, weight 1
        pivot = np.sort(abs_td.reshape(-1))[-count]
        return (abs_td >= pivot).astype(mask.dtype) * mask
    priority = (abs_td.astype(np.float64) + config.selected_epsilon * mask) ** config.selected_alpha
    prob = (priority / priority.sum()).reshape(-1)
    drawn = rng.choice(prob.size, size=count, replace=True, p=prob)
    if kind == "PER_hard":  # how many times each sample was drawn
        return np.bincount(drawn, minlength=prob.size).reshape(mask.shape).astype(mask.dtype)
    if kind != "PER_weight":
        raise unknown_choice("selected", kind, SELECTIONS)
    importance = (1.0 / (prob * prob.size + 1e-8)) ** beta * mask.reshape(-1)
    importance /= importance.max()
    return np.bincount(drawn, weights=importance[drawn], minlength=prob.size).reshape(mask.shape).astype(mask.dtype)


def shared_counts(td: np.ndarray, mask: np.ndarray, threshold: float, mode: str, rng: np.random.Generator
                  ) -> np.ndarray:
    """[B, T, n]: how many other agents receive each (episode, t, agent) sample under the note's rule (td are the
    signed individual TD errors, 0 where masked). Tails are strict: an agent whose errors are all equal shares
    nothing, and accepts any other value."""
    real = mask > 0
    count = mask.sum(axis=1)  # [B, n]
    mean = (td * mask).sum(axis=1) / np.maximum(count, 1)
    var = (((td - mean[:, None]) ** 2) * mask).sum(axis=1) / np.maximum(count - 1, 1)  # unbiased, as torch.std
    std = np.sqrt(var)
    low, high = mean - threshold * std, mean + threshold * std
    if mode == "tails":
        shares = ((td < low[:, None]) | (td > high[:, None])) & real
    elif mode == "probability":
        z = np.abs(td - mean[:, None]) / np.maximum(std[:, None], 1e-8)
        p = np.vectorize(math.erf)(z / math.sqrt(2.0)) if z.size else z
        shares = (rng.random(td.shape) < p) & real
    else:
        raise unknown_choice("share_mode", mode, SHARE_MODES)
    # receiver j takes sender i's error if it lies in j's own tails: accept[b, t, i, j]
    accept = (td[..., None] < low[:, None, None, :]) | (td[..., None] > high[:, None, None, :])
    accept &= ~np.eye(td.shape[-1], dtype=bool)
    return (shares[..., None] & accept).sum(axis=-1)


def pooled_selection_weights(abs_td: np.ndarray, mask: np.ndarray, counts: np.ndarray, ratio: float,
                             config: DIFFERConfig, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Selection over the samples plus ``counts`` received copies of each; the copies' weights are added to their
    originals' (a copy is the same sample trained on again)."""
    flat_counts = counts.reshape(-1)
    copies = np.repeat(np.arange(flat_counts.size), flat_counts)
    pool_td = np.concatenate([abs_td.reshape(-1), abs_td.reshape(-1)[copies]])[None, None]
    pool_mask = np.concatenate([mask.reshape(-1), np.ones(copies.size, mask.dtype)])[None, None]
    pooled = selection_weights(pool_td, pool_mask, ratio, config, beta, rng).reshape(-1)
    weights = pooled[: flat_counts.size].copy()
    np.add.at(weights, copies, pooled[flat_counts.size:])
    return weights.reshape(mask.shape)


class DIFFERAgent(QMIXAgent):
    Config = DIFFERConfig
    metric_names = ("loss", "td_error_abs", "q_taken_mean", "target_mean", "q_loss", "q_td_error_abs",
                    "reward_i_mean", "selected_ratio", "selected_weight_mean", "epsilon")
    name = "differ"

    def __init__(self, config: DIFFERConfig, *args, **kwargs) -> None:
        if config.selected not in SELECTIONS:
            raise unknown_choice("selected", config.selected, SELECTIONS)
        if config.share_mode not in SHARE_MODES:
            raise unknown_choice("share_mode", config.share_mode, SHARE_MODES)
        super().__init__(config, *args, **kwargs)

    def _make_optimizers(self) -> list[torch.optim.Optimizer]:
        """The mixer's and the agent networks' optimisers (the reference's mixer_optimiser, q_optimiser)."""
        return [self._optimizer(list(self.mixer.parameters())), self._optimizer(list(self.net.parameters()))]

    def _train(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        chosen, next_q, mask = self._q_values(batch)
        # The mixer: QMIX's team TD error, the agents' Q_i as inputs (their own loss comes next).
        agent_qs = chosen.detach().requires_grad_(True)
        q_tot = self.mixer(agent_qs, batch["state"][:, :-1])
        with torch.no_grad():
            targets = td_targets(batch["reward"], batch["terminated"],
                                 self.target_mixer(next_q, batch["state"][:, 1:]), cfg.gamma)
        td_tot = q_tot - targets
        mixer_loss = masked_mse(td_tot, mask)
        grads = mixer_gradients(q_tot, agent_qs).detach()
        self._step(self.optimizers[0], mixer_loss)
        # The agents: individual targets from the individual rewards, then selection.
        agent_terminated = batch["agent_terminated"]
        with torch.no_grad():
            rewards_i = individual_rewards(grads, td_tot.detach(), chosen.detach(), next_q, agent_terminated,
                                           cfg.gamma)
            targets_i = rewards_i + cfg.gamma * (1 - agent_terminated) * next_q
        q_mask = agent_mask(batch["filled"], batch["terminated"], agent_terminated)
        td_i = (chosen - targets_i) * q_mask
        ratio = selected_ratio(self.steps, self.total_steps, cfg)
        beta = linear_schedule(cfg.beta_start, cfg.beta_end, self.total_steps, self.steps)
        td_np, mask_np = td_i.detach().cpu().numpy(), q_mask.cpu().numpy()
        count = q_mask.sum().clamp(min=1)
        pool = count  # the loss is a mean over the pool: the samples and the copies received
        if cfg.experience_sharing:
            counts = shared_counts(td_np, mask_np, cfg.share_threshold, cfg.share_mode, self.sample_rng)
            weights = pooled_selection_weights(np.abs(td_np), mask_np, counts, ratio, cfg, beta, self.sample_rng)
            pool = count + float(counts.sum())
        else:
            weights = selection_weights(np.abs(td_np), mask_np, ratio, cfg, beta, self.sample_rng)
        weights = torch.as_tensor(weights, device=self.device)
        q_loss = (td_i ** 2 * weights).sum() / pool
        self._step(self.optimizers[1], q_loss)
        n = mask.sum().clamp(min=1)
        return {"loss": mixer_loss.item(), "td_error_abs": ((td_tot.detach().abs() * mask).sum() / n).item(),
                "q_taken_mean": ((q_tot.detach() * mask).sum() / n).item(),
                "target_mean": ((targets * mask).sum() / n).item(), "q_loss": q_loss.item(),
                "q_td_error_abs": (td_i.detach().abs().sum() / count).item(),
                "reward_i_mean": ((rewards_i * q_mask).sum() / count).item(), "selected_ratio": ratio,
                "selected_weight_mean": ((weights * q_mask).sum() / count).item()}
