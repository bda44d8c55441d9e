"""DQN (Mnih et al. 2015) with the options researchers compare.

In issue 17's split: ``EpsilonGreedyPolicy`` acts (all a remote actor builds), ``DQNLearner`` owns Q, its target
and the optimiser, the replay buffer is the storage, and ``DQNAgent`` composes them for the runners.

Double DQN (van Hasselt et al. 2016), n-step returns, dueling head (Wang et al. 2016), prioritised replay
(Schaul et al. 2016) with beta annealed to 1, hard or Polyak target updates, linear epsilon schedule,
Huber or squared loss, gradient-norm clipping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F

from gbmr.agents.acting import linear_schedule, require_discrete
from gbmr.agents.base import Agent, Learner, Policy
from gbmr.agents.optim import clip_grad_norm, make_adam
from gbmr.agents.train_schedule import TrainSchedule
from gbmr.core.errors import unknown_choice
from gbmr.core.seeding import derive_seed
from gbmr.core.state import rng_state, set_rng_state
from gbmr.memory.replay import Batch, PrioritizedReplayBuffer, ReplayBuffer
from gbmr.nets.q_networks import QNetwork

REPLAY_STREAM = 1  # the replay buffer samples from its own stream, not the agent's exploration stream


@dataclass
class DQNConfig:
    lr: float = 1e-4
    gamma: float = 0.99
    buffer_size: int = 100_000
    batch_size: int = 32
    learning_starts: int = 1_000  # env steps before the first gradient step
    train_freq: int = 4  # env steps between gradient phases
    gradient_steps: int = 1  # gradient steps per phase
    target_update_interval: int = 1_000  # env steps between target updates
    tau: float = 1.0  # 1.0 = hard copy, < 1 = Polyak averaging at every target update
    double: bool = True
    dueling: bool = False
    n_step: int = 1
    frame_stack: int = 0  # > 0: replay stores each frame of uint8 (frame_stack, ...) stacks once (~8x less memory)
    prioritized: bool = False
    per_alpha: float = 0.6
    per_beta0: float = 0.4  # annealed linearly to 1 over the run
    per_eps: float = 1e-6
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.1  # fraction of the run over which epsilon decays
    loss: str = "huber"  # "huber" or "mse"
    max_grad_norm: float = 10.0  # 0 = no clipping
    torso: str = "auto"  # auto | mlp | nature_cnn | minatar_cnn
    hidden: tuple[int, ...] = (256, 256)


def q_targets(
    returns: torch.Tensor,
    discounts: torch.Tensor,
    next_q_target: torch.Tensor,
    next_q_online: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = R + discount * Q_target(s', a*), a* = argmax Q_online(s') (Double DQN) or argmax Q_target(s').

    ``discounts`` already holds gamma**n, and 0 where the episode terminated inside the n steps.
    """
    if next_q_online is None:
        return returns + discounts * next_q_target.amax(dim=1)
    best = next_q_online.argmax(dim=1, keepdim=True)
    return returns + discounts * next_q_target.gather(1, best).squeeze(1)


class EpsilonGreedyPolicy(Policy):
    """Greedy on Q; exploring, a uniform action with probability epsilon, which decays linearly with the run's
    env steps (``follow_schedule``: an actor's copy acts as the learner would at that step). ``greedy`` picks
    the greedy actions of a batch (default argmax Q; GBMR-DQN's also reads its graph)."""

    def __init__(self, q: torch.nn.Module, num_actions: int, config: DQNConfig, total_steps: int,
                 rng: np.random.Generator, device: torch.device,
                 greedy: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.q, self.num_actions, self.config, self.total_steps = q, num_actions, config, total_steps
        self.rng, self.device = rng, device
        self.greedy = greedy or self.q_greedy
        self.epsilon = config.eps_start

    def follow_schedule(self, steps: int) -> None:
        cfg = self.config
        self.epsilon = linear_schedule(cfg.eps_start, cfg.eps_end, cfg.eps_fraction * self.total_steps, steps)

    def q_greedy(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.q(torch.as_tensor(obs, device=self.device)).argmax(dim=1).cpu().numpy()

    def act(self, obs: torch.Tensor, state: dict[str, torch.Tensor], explore: bool
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return torch.from_numpy(self.act_numpy(np.asarray(obs), explore)), state, {}

    def act_numpy(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """``act`` on numpy arrays, as the runners hand them over (no tensor round trip)."""
        if not explore:
            return self.greedy(obs)
        # Random actions are drawn only for the environments that explore: after the decay that is rare, and
        # drawing integers costs more than the rest of epsilon-greedy.
        n = len(obs)
        random_mask = self.rng.random(n) < self.epsilon
        if random_mask.all():
            return self.rng.integers(self.num_actions, size=n)
        actions = self.greedy(obs)
        if random_mask.any():
            actions[random_mask] = self.rng.integers(self.num_actions, size=int(random_mask.sum()))
        return actions

    def acting_rngs(self) -> list[np.random.Generator]:
        """What an actor's state for a restart carries."""
        return [self.rng]

    def weights(self) -> dict[str, torch.Tensor]:
        return self.q.state_dict()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.q.load_state_dict(weights)


class DQNLearner(Learner):
    """One TD gradient step per ``learn`` on a replay batch, and the target network it bootstraps from.
    ``extra_loss(batch, q)`` adds a term to the loss (GBMR-DQN's memory targets); after a prioritised batch
    ``td_errors`` holds what the replay's priorities become."""

    def __init__(self, q: torch.nn.Module, q_target: torch.nn.Module, config: DQNConfig, device: torch.device,
                 extra_loss: Callable[[Batch, torch.Tensor], torch.Tensor | None]) -> None:
        self.q, self.q_target, self.config, self.device, self.extra_loss = q, q_target, config, device, extra_loss
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.params = list(self.q.parameters())
        self.optimizer = make_adam(self.params, config.lr, device)
        self.loss_fn = F.smooth_l1_loss if config.loss == "huber" else F.mse_loss
        self.td_errors: np.ndarray | None = None

    def learn(self, batch: Batch) -> dict[str, float]:
        cfg, device = self.config, self.device
        obs = torch.as_tensor(batch.obs, device=device)
        next_obs = torch.as_tensor(batch.next_obs, device=device)
        actions = torch.as_tensor(batch.actions, device=device).long()
        with torch.no_grad():
            next_q_online = self.q(next_obs) if cfg.double else None
            targets = q_targets(
                torch.as_tensor(batch.returns, device=device),
                torch.as_tensor(batch.discounts, device=device),
                self.q_target(next_obs),
                next_q_online,
            )
        q = self.q(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        if cfg.prioritized:
            weights = torch.as_tensor(batch.weights, device=device)
            loss = (weights * self.loss_fn(q, targets, reduction="none")).mean()
        else:  # uniform replay: the weights are ones, so the same mean without multiplying by them
            loss = self.loss_fn(q, targets)
        extra = self.extra_loss(batch, q)
        if extra is not None:
            loss = loss + extra
        for param in self.params:  # zero_grad(set_to_none=True) without its profiler hooks
            param.grad = None
        loss.backward()
        if cfg.max_grad_norm > 0:
            clip_grad_norm([p.grad for p in self.params], cfg.max_grad_norm)
        self.optimizer.step()
        q = q.detach()
        if cfg.prioritized:
            self.td_errors = (targets - q).cpu().numpy()
        loss_value, q_mean = torch.stack((loss.detach(), q.mean())).tolist()
        return {"loss": loss_value, "q_mean": q_mean}

    @torch.no_grad()
    def update_target(self) -> None:
        tau = self.config.tau
        if tau >= 1.0:
            self.q_target.load_state_dict(self.q.state_dict())
            return
        for target, online in zip(self.q_target.parameters(), self.q.parameters(), strict=True):
            target.lerp_(online, tau)

    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])


class DQNAgent(Agent):
    """The runners' Agent: the policy acts, the replay stores, the learner learns on the shared schedule."""

    Config = DQNConfig
    metric_names = ("loss", "q_mean", "epsilon")
    distributed = "off-policy"

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        require_discrete("dqn", observation_space, action_space)

    @classmethod
    def async_problem(cls, config: DQNConfig) -> str | None:
        """None: the replay keeps each env's n-step window and frames apart, so an actor's slice is added alone."""
        return None

    @classmethod
    def make_policy(cls, config: DQNConfig, observation_space: gym.Space, action_space: gym.Space,
                    device: torch.device, seed: int, total_steps: int) -> EpsilonGreedyPolicy:
        """The acting half alone, as a remote actor needs it (its rng is the agent's, seeded the same way)."""
        q = QNetwork(observation_space, int(action_space.n), config.torso, config.hidden, config.dueling).to(device)
        return EpsilonGreedyPolicy(q, int(action_space.n), config, total_steps, np.random.default_rng(seed), device)

    def __init__(self, config: DQNConfig, observation_space, action_space, num_envs, device, seed, total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        if config.loss not in ("huber", "mse"):
            raise unknown_choice("loss", config.loss, ("huber", "mse"))
        self.num_actions = int(action_space.n)
        q = QNetwork(observation_space, self.num_actions, config.torso, config.hidden, config.dueling).to(device)
        q_target = QNetwork(observation_space, self.num_actions, config.torso, config.hidden, config.dueling)
        self.learner = DQNLearner(q, q_target.to(device), config, device, self.extra_loss)
        self.policy = EpsilonGreedyPolicy(q, self.num_actions, config, total_steps, self.rng, device, self._greedy)
        buffer_cls = PrioritizedReplayBuffer if config.prioritized else ReplayBuffer
        extra = {"alpha": config.per_alpha, "eps": config.per_eps} if config.prioritized else {}
        self.buffer = buffer_cls(
            capacity=config.buffer_size,
            obs_shape=observation_space.shape,
            obs_dtype=observation_space.dtype,
            num_envs=num_envs,
            n_step=config.n_step,
            gamma=config.gamma,
            seed=derive_seed(seed, REPLAY_STREAM),
            frame_stack=config.frame_stack,
            **extra,
        )
        self.schedule = TrainSchedule(config.learning_starts, config.train_freq, config.gradient_steps)
        self._last_target = 0

    @property
    def epsilon(self) -> float:
        return self.policy.epsilon

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        return self.policy.act_numpy(obs, explore)

    def _greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.policy.q_greedy(obs)

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated, envs=None) -> None:
        """``envs``: the environments the rows are (an async actor's slice; the replay keeps each env's n-step
        window and frames on its own); None: all of them."""
        self.buffer.add(obs, actions, rewards, next_obs, terminated, truncated, envs)
        self.follow_schedule(self.steps + len(actions))

    def follow_schedule(self, steps: int) -> None:
        self.steps = steps
        self.policy.follow_schedule(steps)

    def policy_weights(self) -> dict[str, torch.Tensor]:
        return self.policy.weights()

    def load_policy_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.policy.load_weights(weights)

    def update(self) -> dict[str, float]:
        cfg = self.config
        gradient_steps = self.schedule.phase(self.steps)
        if not gradient_steps:
            return {}
        for _ in range(gradient_steps):
            if cfg.prioritized:
                self.buffer.beta = linear_schedule(cfg.per_beta0, 1.0, self.total_steps, self.steps)
            batch = self.buffer.sample(cfg.batch_size)
            metrics = self.learner.learn(batch)
            if cfg.prioritized:
                self.buffer.update_priorities(batch.indices, self.learner.td_errors)
        if self.steps - self._last_target >= cfg.target_update_interval:
            self._last_target = self.steps
            self.learner.update_target()
        return {**metrics, "epsilon": self.epsilon}

    def extra_loss(self, batch: Batch, q: torch.Tensor) -> torch.Tensor | None:
        """Hook: a term added to the TD loss of a batch (``q`` = Q(obs, actions) with its gradient)."""
        return None

    def state_dict(self) -> dict:
        return {
            "learner": self.learner.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": rng_state(self.rng),
            "counters": {"steps": self.steps, "epsilon": self.policy.epsilon, "last_target": self._last_target,
                         **self.schedule.state_dict()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.buffer.load_state_dict(state["buffer"])
        set_rng_state(self.rng, state["rng"])
        counters = state["counters"]
        self.steps = counters["steps"]
        self.policy.epsilon = counters["epsilon"]
        self.schedule.load_state_dict(counters)
        self._last_target = counters["last_target"]
