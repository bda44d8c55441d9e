"""What the policy-gradient agents share, in issue 17's split: a Policy that acts (``StochasticPolicy``: samples
from the actor-critic net with per-env noise streams), a Learner base (optimiser, scoring actions, the clipped
gradient step) and the Agent that composes them with a RolloutStorage for the runners. Each algorithm
(reinforce, a2c, actor-critic, ppo, ppo-transformer) is a Learner: how big its rollout is, when it learns and
what it learns from the Batch."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from gbmr.agents.base import Agent, Learner, Policy
from gbmr.agents.optim import adam_step, clip_grad_norm, make_adam
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


class StochasticPolicy(Policy):
    """Acting from an actor-critic net: a sample from its action distribution (greedy: the mode), with log pi and
    V as extras. Env k samples from the stream of the run's env ``env_ids[k]`` (``assign_envs``), so a
    distributed actor holding envs 4-7 of a run acts on them as the one process holding all of them does."""

    def __init__(self, net: nn.Module, seed: int, num_envs: int, device: torch.device) -> None:
        self.net, self.head, self.seed, self.device = net, net.head, seed, device
        self.assign_envs(np.arange(num_envs))

    def assign_envs(self, env_ids: np.ndarray) -> None:
        self.sampling_rngs = [np.random.default_rng(derive_seed(self.seed, SAMPLING_STREAM, int(i))) for i in env_ids]

    def sampling_noise(self) -> torch.Tensor:
        """This step's noise for the head to sample with, one row per env from its own stream."""
        return torch.from_numpy(self.head.noise(self.sampling_rngs)).to(self.device)

    def act(self, obs: torch.Tensor, state: dict[str, torch.Tensor], explore: bool
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params, values, state = self.distribution(obs, state)
        if not explore:
            return self.head.mode(params), state, {}
        actions = self.head.sample(params, self.sampling_noise())
        return actions, state, {"values": values, "log_probs": self.head.log_prob(params, actions)}

    def distribution(self, obs: torch.Tensor, state: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(distribution parameters, V, the state after this step)."""
        params, values = self.net(obs)
        return params, values, state

    def value(self, obs: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """V of a batch of next observations (the state is not advanced)."""
        return self.net.value(obs)

    def after_learning(self, state: dict[str, torch.Tensor], storage: RolloutStorage) -> dict[str, torch.Tensor]:
        """The acting state once the weights changed (a cache of the old weights' keys must be rebuilt)."""
        return state

    def weights(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(weights)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "sampling": [rng_state(r) for r in self.sampling_rngs]}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        for rng, saved in zip(self.sampling_rngs, state["sampling"], strict=True):
            set_rng_state(rng, saved)


class PolicyGradientLearner(Learner):
    """What the policy-gradient learners share: the optimiser on the policy's parameters, scoring actions under
    the current parameters, the clipped gradient step, learning-rate annealing. Each algorithm adds how big its
    rollout is (``rollout_capacity``), when it learns (``ready``) and what it learns (``learn``)."""

    def __init__(self, config: PolicyGradientConfig, policy: StochasticPolicy, num_envs: int,
                 device: torch.device, seed: int, total_steps: int) -> None:
        if config.optimizer not in OPTIMIZERS:
            raise unknown_choice("optimizer", config.optimizer, OPTIMIZERS)
        self.config, self.policy, self.head = config, policy, policy.head
        self.num_envs, self.device, self.total_steps = num_envs, device, total_steps
        self.params = [p for p in policy.net.parameters() if p.requires_grad]
        if config.optimizer == "adam":
            self.optimizer = make_adam(self.params, config.lr, device, eps=config.adam_eps)
        else:  # A2C's optimiser (Mnih et al. 2016; SB3's alpha 0.99, eps 1e-5)
            self.optimizer = torch.optim.RMSprop(self.params, lr=config.lr, alpha=0.99, eps=config.adam_eps)
        self.rng = np.random.default_rng(seed)  # minibatch order
        self.updates = 0

    @abstractmethod
    def rollout_capacity(self) -> int:
        """Vector steps the rollout storage holds."""

    def ready(self, storage: RolloutStorage) -> bool:
        """Whether to learn now from what the storage holds."""
        return storage.full

    def anneal(self, start_step: int) -> None:
        """lr at the share of the run left when the rollout began (CleanRL's schedule), if annealing."""
        if self.config.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr * max(1.0 - start_step / self.total_steps, 0.0)

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log pi(a|s), entropy, V(s)) under the current parameters, with gradients."""
        params, values = self.policy.net(obs)
        return self.head.log_prob(params, actions), self.head.entropy(params), values

    def optimise(self, loss: torch.Tensor) -> None:
        for param in self.params:
            param.grad = None
        loss.backward()
        if self.config.max_grad_norm > 0:
            clip_grad_norm([p.grad for p in self.params if p.grad is not None], self.config.max_grad_norm)
        adam_step(self.optimizer)  # RMSprop (a2c) falls back to step()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "rng": rng_state(self.rng), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(self.rng, state["rng"])
        self.updates = int(state["updates"])


class PolicyGradientAgent(Agent):
    """The Agent contract the runners drive, composed of a Policy (acting), a RolloutStorage and a Learner:
    ``act`` keeps what the policy computed (log pi, V) for the ``observe`` that writes the rollout row, and
    ``update`` hands the complete rollout to the learner as a Batch. Subclasses name their ``Learner``."""

    metric_names = ("policy_loss", "value_loss", "entropy")
    distributed = "on-policy"
    Policy: type[StochasticPolicy] = StochasticPolicy
    Learner: type[PolicyGradientLearner]

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        if not isinstance(observation_space, gym.spaces.Box):
            raise GbmrError(f"{cls.__name__} needs a Box observation space, got {observation_space}")
        if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise GbmrError(f"{cls.__name__} needs a Discrete or Box action space, got {action_space}")

    def __init__(self, config, observation_space, action_space, num_envs, device, seed, total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        self.policy = self.Policy(self.build_net().to(device), seed, num_envs, device)
        self.learner = self.Learner(config, self.policy, num_envs, device, seed, total_steps)
        self.storage = self.build_storage(self.learner.rollout_capacity())
        self.acting_state = self.policy.initial_state(num_envs)
        self.eval_state: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, torch.Tensor] | None = None  # what act() saw, for the observe() that follows

    def build_net(self) -> nn.Module:
        cfg = self.config
        return ActorCritic(self.observation_space, self.action_space, cfg.model, cfg.hidden, cfg.activation,
                           cfg.shared_torso, cfg.frame_difference)

    def rollout_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What a rollout records per env step besides values, rewards and episode ends."""
        return {"obs": (tuple(self.observation_space.shape), torch_dtype(self.observation_space.dtype)),
                "actions": (self.policy.head.action_shape, self.policy.head.action_dtype),
                "log_probs": ((), torch.float32)}

    def build_storage(self, capacity: int) -> RolloutStorage:
        return RolloutStorage(capacity, self.num_envs, self.rollout_fields(), self.device)

    # ------------------------------------------------------------------ acting and recording
    def assign_envs(self, env_ids: np.ndarray) -> None:
        self.policy.assign_envs(env_ids)

    def acting_rngs(self) -> list[np.random.Generator]:
        return self.policy.sampling_rngs

    def policy_weights(self) -> dict[str, torch.Tensor]:
        return self.policy.weights()

    def load_policy_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.policy.load_weights(weights)

    def begin_evaluation_episode(self) -> None:
        self.eval_state = None

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        obs_t = torch.as_tensor(obs, device=self.device)
        with torch.inference_mode():
            if not explore:  # greedy evaluation keeps its own state, apart from the training envs'
                state = self.eval_state if self.eval_state is not None else self.policy.initial_state(len(obs_t))
                actions, self.eval_state, _ = self.policy.act(obs_t, state, explore=False)
                return self.policy.head.to_env(actions)
            state = self.acting_state
            actions, self.acting_state, extras = self.policy.act(obs_t, state, explore=True)
            self._pending = {"obs": obs_t, "actions": actions, **extras,
                             **{name: state[name].clone() for name in self.recorded_state()}}
        return self.policy.head.to_env(actions)

    def recorded_state(self) -> tuple[str, ...]:
        """Names of the policy state the rollout records with each step (where episodes began)."""
        return ()

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        if self._pending is None:
            raise RuntimeError("observe() must follow an act(explore=True) on the same observations")
        pending, self._pending = self._pending, None
        cut = truncated & ~terminated  # a time limit: the state had a future, so its value is bootstrapped
        last_row = self.storage.size == self.storage.capacity - 1
        next_values = self.state_value(next_obs) if cut.any() or last_row else None
        bootstrap: torch.Tensor | float = 0.0  # the storage fills a row from a scalar
        if cut.any():
            cut_t = torch.as_tensor(cut, device=self.device)
            bootstrap = torch.where(cut_t, next_values, 0.0)
        dones = torch.from_numpy(terminated | truncated).to(self.device)
        self.storage.add(**pending, rewards=torch.from_numpy(np.asarray(rewards)).to(self.device), dones=dones,
                         bootstrap=bootstrap)
        self.acting_state = self.policy.episode_ends(self.acting_state, dones)
        self.steps += self.num_envs
        if last_row:
            self.storage.last_values = next_values

    def state_value(self, obs: np.ndarray) -> torch.Tensor:
        """V of every env's next observation (a batch over all the envs)."""
        with torch.inference_mode():
            return self.policy.value(torch.as_tensor(obs, device=self.device), self.acting_state)

    # ------------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        if not self.learner.ready(self.storage):
            return {}
        self.learner.anneal(self.steps - self.storage.size * self.num_envs)
        metrics = self.learner.learn(self.storage.batch())
        self.learner.updates += 1
        self.storage.clear()
        self.acting_state = self.policy.after_learning(self.acting_state, self.storage)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "acting_state": self.acting_state,
                "learner": self.learner.state_dict(), "storage": self.storage.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.acting_state = {k: v.to(self.device) for k, v in state["acting_state"].items()}
        self.learner.load_state_dict(state["learner"])
        self.storage.load_state_dict(state["storage"])
        self.steps = state["steps"]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std (advantages per minibatch, returns per batch)."""
    return (x - x.mean()) / (x.std() + 1e-8) if x.numel() > 1 else x - x.mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): how much of the returns the critic explains (1 is perfect)."""
    var = target.var().item() if target.numel() > 1 else 0.0
    return float("nan") if var == 0 else 1.0 - (target - predicted).var().item() / var
