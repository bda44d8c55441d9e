"""QMIX (Rashid et al. 2018) as PyMARL runs it: recurrent agents with shared parameters, a monotonic mixer.

Each agent picks epsilon-greedily among its available actions from its own Q_i (a GRU over its observations,
last action and id); the mixer combines the chosen Q_i into Q_tot conditioned on the global state, with
non-negative weights, so the agents' greedy actions are the greedy joint action. Learning replays whole
episodes (EpisodeBuffer) once per finished episode: the 1-step TD error of Q_tot against
r + gamma * Q_tot_target(s', argmax of the online Q_i over available actions) (double Q), masked to the real
steps of each episode, with the target networks copied every ``target_update_interval`` episodes.

The multi-agent environments (gbmr/envs/multiagent.py) fit the single-agent runner: one Dict observation and one
MultiDiscrete action per env, the team reward, so this agent keeps the ``Agent`` contract.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F

from gbmr.agents.acting import linear_schedule
from gbmr.agents.base import Agent
from gbmr.agents.optim import clip_grad_norm, make_adam
from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.core.seeding import derive_seed
from gbmr.core.state import rng_state, set_rng_state, to_numpy
from gbmr.envs.multiagent import dimensions, is_multi_agent
from gbmr.memory.episode_buffer import EpisodeBuffer
from gbmr.nets.marl import QMixer, make_agent_net

UNAVAILABLE = -1e7  # Q of unavailable actions in the max (finite: padded steps have none available)
SAMPLING_STREAM = 1  # episode sampling and experience selection draw from their own stream


@dataclass
class QMIXConfig:
    lr: float = 5e-4
    optimizer: str = "rmsprop"  # rmsprop (PyMARL: alpha 0.99, eps 1e-5) | adam (EPyMARL's LBF/MPE runs)
    optim_alpha: float = 0.99
    optim_eps: float = 1e-5
    gamma: float = 0.99
    batch_size: int = 32  # episodes per gradient step
    buffer_size: int = 5000  # episodes
    target_update_interval: int = 200  # episodes
    double_q: bool = True
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.05
    epsilon_anneal_time: int = 50_000  # env steps
    grad_norm_clip: float = 10.0
    # finished episodes per gradient step; 0 = one per num_envs episodes: PyMARL's episode runner trains after
    # every episode, its parallel runner once per batch of batch_size_run (= num_envs) episodes
    episodes_per_update: int = 0
    standardise_rewards: bool = False  # EPyMARL's QMIX: rewards over a running mean and std of the replayed ones
    agent_net: str = "rnn"  # rnn | transformer
    rnn_hidden_dim: int = 64
    transformer_d_model: int = 64
    transformer_n_head: int = 4
    transformer_n_layers: int = 2
    transformer_lookback: int = 32  # steps of the agent's own history the Transformer sees
    obs_last_action: bool = True
    obs_agent_id: bool = True
    mixing_embed_dim: int = 32
    hypernet_layers: int = 2
    hypernet_embed: int = 64


# ---------------------------------------------------------------------- the maths, shared with DIFFER
def episode_mask(filled: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
    """[B, T]: 1 on the real steps up to and including the one that terminated (PyMARL's mask, which zeroes only
    the step after a termination; here every later one, the same on episodes that end when they terminate)."""
    terminated_before = torch.cumsum(terminated, dim=1) - terminated
    return filled * (terminated_before == 0)


def greedy_next_q(online_q: torch.Tensor, target_q: torch.Tensor, avail: torch.Tensor, double_q: bool
                  ) -> torch.Tensor:
    """Per-agent bootstrap values [B, T, n] from the Q-values [B, T+1, n, A] of steps 1..T: the target net's value
    of the online net's best available action (double Q), or the target net's best available value."""
    available = avail[:, 1:] > 0
    target_next = target_q[:, 1:].masked_fill(~available, UNAVAILABLE)
    if not double_q:
        return target_next.max(dim=3).values
    best = online_q[:, 1:].masked_fill(~available, UNAVAILABLE).argmax(dim=3, keepdim=True)
    return target_next.gather(3, best).squeeze(3)


def td_targets(rewards: torch.Tensor, terminated: torch.Tensor, next_values: torch.Tensor, gamma: float
               ) -> torch.Tensor:
    """y_t = r_t + gamma * (1 - terminated_t) * next_value_t (a time limit is no termination: it bootstraps)."""
    return rewards + gamma * (1 - terminated) * next_values


class RunningMeanStd:
    """Mean and variance of every value seen so far, merged batch by batch (Chan et al.; EPyMARL's
    RunningMeanStd, which starts from mean 0, variance 1 with a weight of 1e-4)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, values: torch.Tensor) -> None:
        n = values.numel()
        if n == 0:
            return
        mean, var = values.mean().item(), values.var(unbiased=False).item()
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.var = (self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


def masked_mse(errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the squared errors over the real entries (PyMARL's sum / mask.sum())."""
    return ((errors * mask) ** 2).sum() / mask.sum().clamp(min=1)


class QMIXAgent(Agent):
    Config = QMIXConfig
    metric_names = ("loss", "td_error_abs", "q_taken_mean", "target_mean", "epsilon")
    multi_agent = True
    name = "qmix"

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        if not is_multi_agent(observation_space) or not isinstance(action_space, gym.spaces.MultiDiscrete):
            raise GbmrError(f"{cls.name} is a multi-agent algorithm: it needs a multi-agent environment "
                            "(MPE/..., LBF/...; see `gbmr list`)")

    def __init__(self, config: QMIXConfig, observation_space, action_space, num_envs, device, seed, total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        if config.optimizer not in ("rmsprop", "adam"):
            raise unknown_choice("optimizer", config.optimizer, ("rmsprop", "adam"))
        if config.episodes_per_update < 0:
            raise GbmrError(f"episodes_per_update must be >= 0 (0: one gradient step per num_envs episodes), "
                            f"got {config.episodes_per_update}")
        self.episodes_per_update = config.episodes_per_update or num_envs
        self.n_agents, obs_dim, state_dim, self.n_actions = dimensions(observation_space)
        in_features = obs_dim + self.n_actions * config.obs_last_action + self.n_agents * config.obs_agent_id
        transformer = {"d_model": config.transformer_d_model, "num_heads": config.transformer_n_head,
                       "num_layers": config.transformer_n_layers, "lookback": config.transformer_lookback}
        self.net = make_agent_net(config.agent_net, in_features, self.n_actions, config.rnn_hidden_dim,
                                  transformer).to(device)
        self.mixer = QMixer(self.n_agents, state_dim, config.mixing_embed_dim, config.hypernet_embed,
                            config.hypernet_layers).to(device)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.target_mixer = copy.deepcopy(self.mixer).requires_grad_(False)
        self.optimizers = self._make_optimizers()
        self.buffer = EpisodeBuffer(config.buffer_size, self.n_agents, obs_dim, state_dim, self.n_actions, num_envs)
        self.sample_rng = np.random.default_rng(derive_seed(seed, SAMPLING_STREAM))
        self.agent_ids = torch.eye(self.n_agents, device=device)
        self.reward_stats = RunningMeanStd()
        self.epsilon = config.epsilon_start
        self.episodes = 0  # finished training episodes
        self._trained_at = 0  # self.episodes at the last gradient step
        self._target_updated_at = 0
        self._acting = self._fresh_acting(num_envs)
        self._evaluating = self._fresh_acting(1)

    def _make_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimiser over agent net and mixer (DIFFER overrides: one each)."""
        return [self._optimizer(list(self.net.parameters()) + list(self.mixer.parameters()))]

    def _optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adam":
            return make_adam(params, cfg.lr, self.device)
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.optim_alpha, eps=cfg.optim_eps)

    # ------------------------------------------------------------------ acting
    def _fresh_acting(self, n: int) -> dict[str, Any]:
        """Per-env acting state: the agent net's memory, the last actions (one-hot), whether an episode begins."""
        return {"memory": self.net.initial_state(n * self.n_agents),
                "last": torch.zeros(n, self.n_agents, self.n_actions, device=self.device),
                "starts": torch.ones(n, dtype=torch.bool, device=self.device)}

    def _inputs(self, obs: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """[..., n_agents, obs_dim] observations + last actions one-hot + agent ids -> agent net inputs."""
        parts = [obs]
        if self.config.obs_last_action:
            parts.append(last)
        if self.config.obs_agent_id:
            parts.append(self.agent_ids.expand(*obs.shape[:-1], self.n_agents))
        return torch.cat(parts, dim=-1)

    def begin_evaluation_episode(self) -> None:
        self._evaluating = self._fresh_acting(1)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], explore: bool = True) -> np.ndarray:
        acting = self._acting if explore else self._evaluating
        agent_obs = torch.as_tensor(obs["obs"], device=self.device)
        avail = torch.as_tensor(obs["avail_actions"], device=self.device) > 0
        n = agent_obs.shape[0]
        x = self._inputs(agent_obs, acting["last"]).reshape(n * self.n_agents, -1)
        q, acting["memory"] = self.net.step(x, acting["memory"], acting["starts"].repeat_interleave(self.n_agents))
        q = q.view(n, self.n_agents, self.n_actions).masked_fill(~avail, -torch.inf)
        actions = q.argmax(dim=2).cpu().numpy()
        if explore:  # each agent independently: a uniform available action with probability epsilon
            avail_np = obs["avail_actions"] > 0
            explores = self.rng.random((n, self.n_agents)) < self.epsilon
            random_actions = np.argmax(self.rng.random(avail_np.shape) * avail_np, axis=2)
            actions = np.where(explores, random_actions, actions)
        acting["last"] = F.one_hot(torch.as_tensor(actions, device=self.device), self.n_actions).float()
        acting["starts"] = torch.zeros(n, dtype=torch.bool, device=self.device)
        return actions

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        done = np.logical_or(terminated, truncated)
        for i in range(self.num_envs):
            self.buffer.add_step(i, {k: v[i] for k, v in obs.items()}, actions[i], float(rewards[i]),
                                 bool(terminated[i]), {k: v[i] for k, v in next_obs.items()}, bool(done[i]))
        if done.any():  # a new episode starts with no memory and no last action, as training unrolls it
            ended = torch.as_tensor(done, device=self.device)
            self._acting["starts"][ended] = True
            self._acting["last"][ended] = 0
            self.episodes += int(done.sum())
        self.steps += self.num_envs
        cfg = self.config
        self.epsilon = linear_schedule(cfg.epsilon_start, cfg.epsilon_finish, cfg.epsilon_anneal_time, self.steps)

    # ------------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        """One gradient step per ``episodes_per_update`` finished episodes once the buffer holds ``batch_size``
        episodes (PyMARL: after every episode, or every batch of the parallel runner's episodes); the targets
        follow every ``target_update_interval`` episodes."""
        cfg = self.config
        if self.episodes - self._trained_at < self.episodes_per_update or self.buffer.size < cfg.batch_size:
            return {}
        self._trained_at = self.episodes
        batch = self._tensors(self.buffer.sample(cfg.batch_size, self.sample_rng))
        if cfg.standardise_rewards:
            batch["reward"] = self.standardise(batch["reward"], batch["filled"])
        metrics = self._train(batch)
        if self.episodes - self._target_updated_at >= cfg.target_update_interval:
            self._target_updated_at = self.episodes
            self.target_net.load_state_dict(self.net.state_dict())
            self.target_mixer.load_state_dict(self.mixer.state_dict())
        return {**metrics, "epsilon": self.epsilon}

    def standardise(self, rewards: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        """Fold the batch's real rewards into the running statistics, then (r - mean) / std. On a sparse reward
        (LBF: one payout of at most 1 per episode) a payout becomes large and every other step slightly negative,
        which outweighs the upward bias of the max in bootstrapped targets that no termination anchors."""
        self.reward_stats.update(rewards[filled > 0])
        return (rewards - self.reward_stats.mean) / max(self.reward_stats.var, 1e-12) ** 0.5

    def _tensors(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}
        out["avail_actions"] = out["avail_actions"].float()
        return out

    def agent_q(self, net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Q-values [B, T+1, n, A] of every agent at every step, the net unrolled from each episode's start."""
        obs, actions = batch["obs"], batch["actions"]
        b, steps = obs.shape[:2]
        last = torch.zeros(b, steps, self.n_agents, self.n_actions, device=self.device)
        last[:, 1:] = F.one_hot(actions, self.n_actions).float()
        x = self._inputs(obs, last).permute(0, 2, 1, 3).reshape(b * self.n_agents, steps, -1)
        return net.sequence(x).view(b, self.n_agents, steps, self.n_actions).permute(0, 2, 1, 3)

    def _q_values(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chosen Q_i [B, T, n] (with gradient), bootstrap Q_i [B, T, n], and the episode mask [B, T]."""
        q = self.agent_q(self.net, batch)
        with torch.no_grad():
            target_q = self.agent_q(self.target_net, batch)
            next_q = greedy_next_q(q.detach(), target_q, batch["avail_actions"], self.config.double_q)
        chosen = q[:, :-1].gather(3, batch["actions"][..., None]).squeeze(3)
        return chosen, next_q, episode_mask(batch["filled"], batch["terminated"])

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for param in params:
            param.grad = None
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if self.config.grad_norm_clip > 0 and grads:
            clip_grad_norm(grads, self.config.grad_norm_clip)
        optimizer.step()

    def _train(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        chosen, next_q, mask = self._q_values(batch)
        q_tot = self.mixer(chosen, batch["state"][:, :-1])
        with torch.no_grad():
            targets = td_targets(batch["reward"], batch["terminated"],
                                 self.target_mixer(next_q, batch["state"][:, 1:]), cfg.gamma)
        td = q_tot - targets
        loss = masked_mse(td, mask)
        self._step(self.optimizers[0], loss)
        count = mask.sum()
        return {"loss": loss.item(), "td_error_abs": ((td.detach().abs() * mask).sum() / count).item(),
                "q_taken_mean": ((q_tot.detach() * mask).sum() / count).item(),
                "target_mean": ((targets * mask).sum() / count).item()}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(), "target_net": self.target_net.state_dict(),
            "mixer": self.mixer.state_dict(), "target_mixer": self.target_mixer.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "buffer": self.buffer.state_dict(),
            "rng": rng_state(self.rng), "sample_rng": rng_state(self.sample_rng),
            "acting": self._acting, "reward_stats": self.reward_stats.state_dict(),
            "counters": {"steps": self.steps, "epsilon": self.epsilon, "episodes": self.episodes,
                         "trained_at": self._trained_at, "target_updated_at": self._target_updated_at},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.target_net.load_state_dict(state["target_net"])
        self.mixer.load_state_dict(state["mixer"])
        self.target_mixer.load_state_dict(state["target_mixer"])
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)
        self.buffer.load_state_dict(to_numpy(state["buffer"]))
        set_rng_state(self.rng, state["rng"])
        set_rng_state(self.sample_rng, state["sample_rng"])
        self.reward_stats.load_state_dict(state.get("reward_stats", RunningMeanStd().state_dict()))  # older runs
        acting = state["acting"]
        self._acting = {"memory": acting["memory"], "last": acting["last"], "starts": acting["starts"]}
        counters = state["counters"]
        self.steps, self.epsilon, self.episodes = counters["steps"], counters["epsilon"], counters["episodes"]
        self._trained_at, self._target_updated_at = counters["trained_at"], counters["target_updated_at"]
