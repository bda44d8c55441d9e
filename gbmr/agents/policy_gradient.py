"""What the policy-gradient agents share: acting from a stochastic policy into a rollout, scoring actions, the
optimiser step, and their checkpoint state. Each algorithm (reinforce, a2c, actor-critic, ppo) adds when it
learns (``ready``), how big its rollout is (``rollout_capacity``) and what it learns (``learn``)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from gbmr.agents.base import Agent
from gbmr.agents.optim import clip_grad_norm, make_adam
from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.core.seeding import derive_seed
from gbmr.core.state import rng_state, set_rng_state
from gbmr.memory.rollout import RolloutStorage
from gbmr.nets.policies import ActorCritic

SAMPLING_STREAM = 2  # env i's actions are sampled from stream (2, i)
OPTIMIZERS = ("adam", "rmsprop")


@dataclass
class PolicyGradientConfig:
    lr: float = 3e-4
    gamma: float = 0.99
    ent_coef: float = 0.0  # entropy bonus
    vf_coef: float = 0.5  # weight of the value loss
    max_grad_norm: float = 0.5  # 0 = no clipping
    anneal_lr: bool = False  # lr decays linearly to 0 over the run
    optimizer: str = "adam"  # adam | rmsprop
    adam_eps: float = 1e-5
    model: str = "auto"  # torso: auto | mlp | cnn | nature_cnn | minatar_cnn | cnn3d | cnn3d2d
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"  # of the MLP layers: tanh | relu
    shared_torso: bool = False  # one torso for actor and critic (CNNs), or one each (classic control)
    frame_difference: bool = False  # the torso sees differences of consecutive frames (research note 003)


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


class PolicyGradientAgent(Agent):
    metric_names = ("policy_loss", "value_loss", "entropy")
    distributed = "on-policy"

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        if not isinstance(observation_space, gym.spaces.Box):
            raise GbmrError(f"{cls.__name__} needs a Box observation space, got {observation_space}")
        if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise GbmrError(f"{cls.__name__} needs a Discrete or Box action space, got {action_space}")

    def __init__(self, config, observation_space, action_space, num_envs, device, seed, total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        if config.optimizer not in OPTIMIZERS:
            raise unknown_choice("optimizer", config.optimizer, OPTIMIZERS)
        self.net = self.build_net().to(device)
        self.head = self.net.head
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        if config.optimizer == "adam":
            self.optimizer = make_adam(self.params, config.lr, device, eps=config.adam_eps)
        else:  # A2C's optimiser (Mnih et al. 2016; SB3's alpha 0.99, eps 1e-5)
            self.optimizer = torch.optim.RMSprop(self.params, lr=config.lr, alpha=0.99, eps=config.adam_eps)
        self.seed = seed
        self.assign_envs(np.arange(num_envs))
        self.storage = RolloutStorage(self.rollout_capacity(), num_envs, self.rollout_fields(), device)
        self.updates = 0
        self._pending: dict[str, torch.Tensor] | None = None  # what act() saw, for the observe() that follows

    # ------------------------------------------------------------------ what each algorithm defines
    def build_net(self) -> ActorCritic:
        cfg = self.config
        return ActorCritic(self.observation_space, self.action_space, cfg.model, cfg.hidden, cfg.activation,
                           cfg.shared_torso, cfg.frame_difference)

    def rollout_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What a rollout records per env step besides values, rewards and episode ends."""
        return {"obs": (tuple(self.observation_space.shape), torch_dtype(self.observation_space.dtype)),
                "actions": (self.head.action_shape, self.head.action_dtype),
                "log_probs": ((), torch.float32)}

    @abstractmethod
    def rollout_capacity(self) -> int:
        """Vector steps the rollout storage holds."""

    def ready(self) -> bool:
        """Whether to learn now from what the storage holds."""
        return self.storage.full

    @abstractmethod
    def learn(self) -> dict[str, float]:
        """One learning phase on the storage's rollout (cleared afterwards)."""

    # ------------------------------------------------------------------ acting and recording
    def assign_envs(self, env_ids: np.ndarray) -> None:
        """Sample env k's actions from the stream of env ``env_ids[k]`` of the run: a distributed actor holding
        envs 4-7 of the run acts on them as the single-process agent holding all of them does."""
        self.sampling_rngs = [np.random.default_rng(derive_seed(self.seed, SAMPLING_STREAM, int(i))) for i in env_ids]

    def acting_rngs(self) -> list[np.random.Generator]:
        return self.sampling_rngs

    def policy_weights(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_policy_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(weights)

    def sampling_noise(self) -> torch.Tensor:
        """This step's noise for the head to sample with, one row per env from its own stream."""
        return torch.from_numpy(self.head.noise(self.sampling_rngs)).to(self.device)

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        obs_t = torch.as_tensor(obs, device=self.device)
        with torch.inference_mode():
            params, values = self.net(obs_t)
            if not explore:
                return self.head.to_env(self.head.mode(params))
            actions = self.head.sample(params, self.sampling_noise())
            self._pending = {"obs": obs_t, "actions": actions, "values": values,
                             "log_probs": self.head.log_prob(params, actions)}
        return self.head.to_env(actions)

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        if self._pending is None:
            raise RuntimeError("observe() must follow an act(explore=True) on the same observations")
        pending, self._pending = self._pending, None
        cut = truncated & ~terminated  # a time limit: the state had a future, so its value is bootstrapped
        last_row = self.storage.size == self.storage.capacity - 1
        next_values = self.state_value(next_obs) if cut.any() or last_row else None
        bootstrap = torch.zeros(self.num_envs, device=self.device)
        if cut.any():
            cut_t = torch.as_tensor(cut, device=self.device)
            bootstrap[cut_t] = next_values[cut_t]
        self.storage.add(**pending, rewards=torch.as_tensor(rewards, dtype=torch.float32, device=self.device),
                         dones=torch.as_tensor(terminated | truncated, device=self.device), bootstrap=bootstrap)
        self.steps += self.num_envs
        if last_row:
            self.storage.last_values = next_values

    def state_value(self, obs: np.ndarray) -> torch.Tensor:
        """V of every env's next observation (a batch over all the envs)."""
        with torch.inference_mode():
            return self.net.value(torch.as_tensor(obs, device=self.device))

    # ------------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        if not self.ready():
            return {}
        if self.config.anneal_lr:  # the share of the run left when this rollout began (CleanRL's schedule)
            start = self.steps - self.storage.size * self.num_envs
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr * max(1.0 - start / self.total_steps, 0.0)
        metrics = self.learn()
        self.storage.clear()
        self.updates += 1
        return metrics

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log pi(a|s), entropy, V(s)) under the current parameters, with gradients."""
        params, values = self.net(obs)
        return self.head.log_prob(params, actions), self.head.entropy(params), values

    def optimise(self, loss: torch.Tensor) -> None:
        for param in self.params:
            param.grad = None
        loss.backward()
        if self.config.max_grad_norm > 0:
            clip_grad_norm([p.grad for p in self.params if p.grad is not None], self.config.max_grad_norm)
        self.optimizer.step()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "storage": self.storage.state_dict(), "sampling": [rng_state(r) for r in self.sampling_rngs],
                "rng": rng_state(self.rng), "counters": {"steps": self.steps, "updates": self.updates}}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.storage.load_state_dict(state["storage"])
        for rng, saved in zip(self.sampling_rngs, state["sampling"], strict=True):
            set_rng_state(rng, saved)
        set_rng_state(self.rng, state["rng"])
        self.steps = state["counters"]["steps"]
        self.updates = state["counters"]["updates"]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std (advantages per minibatch, returns per batch)."""
    return (x - x.mean()) / (x.std() + 1e-8) if x.numel() > 1 else x - x.mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): how much of the returns the critic explains (1 is perfect)."""
    var = target.var().item() if target.numel() > 1 else 0.0
    return float("nan") if var == 0 else 1.0 - (target - predicted).var().item() / var
