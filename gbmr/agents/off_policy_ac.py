"""What the off-policy actor-critics (SAC, TD3, DDPG) share, in issue 17's split: a Policy that acts
(``OffPolicyPolicy``: the actor and the encoder it reads, warm-up random actions, per-env exploration), a
Learner base (``OffPolicyLearner``: critics, targets, optimisers, the updates' noise) and the Agent that composes
them with a replay buffer on the update schedule (``OffPolicyActorCritic``).

Continuous actions live in [-1, 1]^d everywhere inside the agent (actor outputs, noise, replay, critics);
``BoxScaling`` maps them to the env's bounds and back. Env i's exploration (warm-up actions, acting noise)
draws from its own numpy stream (seed, EXPLORE_STREAM, i), as the policy-gradient agents sample, so a
distributed actor holding envs 2-3 acts on them as one process does. The updates draw their noise (SAC's
reparameterisation, TD3's target smoothing) from one torch Generator whose state is checkpointed: resumed runs
equal uninterrupted ones.

Image observations (Mario, Atari, MinAtar frames; the torso picked from the shape as PPO's is, or ``model``) go
through one CNN encoder (``make_encoder``) whose features feed the critics (the action concatenated after the
CNN) and the actor. The encoder learns from the critic loss only and the actor reads its features detached,
as in SAC-AE and DrQ (Yarats et al. 2019, 2021): one CNN forward per batch instead of one per net (CleanRL's
sac_atari gives the actor and each critic their own Nature CNN, three times the convolutions on 2 CPU cores),
and the actor's loss cannot move the features the critics' targets are built on. The encoder belongs to the
policy (it travels in the policy's weights to remote actors); the target critics have a target encoder,
Polyak-averaged with them, which only the learner holds. Vectors skip the encoder: the critics' batched
ensemble reads the flat observation.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from gbmr.agents.base import Agent, Learner, Policy
from gbmr.agents.optim import adam_step, make_adam, polyak_update
from gbmr.agents.train_schedule import TrainSchedule
from gbmr.core.errors import GbmrError
from gbmr.core.seeding import derive_seed
from gbmr.core.state import rng_state, set_rng_state
from gbmr.memory.replay import Batch, ReplayBuffer
from gbmr.nets.action_scaling import BoxScaling, require_bounded_box
from gbmr.nets.continuous import make_encoder

REPLAY_STREAM = 1
EXPLORE_STREAM = 3  # env i's warm-up actions and acting noise: stream (3, i)
LEARN_STREAM = 4  # the torch Generator of the updates' noise


@dataclass
class OffPolicyConfig:
    """CleanRL's shared defaults (sac_continuous_action.py, td3_continuous_action.py, ddpg_continuous_action.py)."""

    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target networks
    buffer_size: int = 1_000_000
    batch_size: int = 256
    learning_starts: int = 25_000  # env steps of uniform random actions before the first update
    train_freq: int = 1  # env steps between update phases
    gradient_steps: int = 1  # critic updates per phase
    policy_frequency: int = 2  # critic updates per actor update (TD3's delay)
    policy_lr: float = 3e-4
    q_lr: float = 3e-4
    adam_eps: float = 1e-8
    hidden: tuple[int, ...] = (256, 256)  # the MLPs of actor and critics (after the encoder for images)
    model: str = "auto"  # the torso: auto (a CNN for frames, none for vectors) | mlp | nature_cnn | minatar_cnn ...
    features: int = 512  # the CNN encoder's fully connected output
    frame_stack: int = 0  # > 0: replay keeps each frame of uint8 stacks once (ReplayBuffer's FrameStore)


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The sum over the ensemble ``q`` [n, B] of each critic's mean squared error (CleanRL's qf1_loss + qf2_loss)."""
    return (q - target).square().mean(dim=-1).sum()


class OffPolicyPolicy(Policy):
    """The acting half: the actor and the image encoder it reads, in the normalised cube (or action indices).
    Exploring, it takes uniform random actions until ``learning_starts`` env steps of the run
    (``follow_schedule``), then the actor's with its exploration noise; greedy, the actor's mean / argmax. Env k
    draws from the stream of the run's env ``env_ids[k]`` (``assign_envs``). Subclasses make the actor and say
    how it explores."""

    def __init__(self, config: OffPolicyConfig, observation_space: gym.Space, action_space: gym.Space,
                 num_envs: int, device: torch.device, seed: int) -> None:
        self.config, self.device, self.seed = config, device, seed
        self.encoder, self.feature_dim = make_encoder(config.model, observation_space, config.features)
        if self.encoder is not None:
            self.encoder = self.encoder.to(device)
        self.obs_shape = tuple(observation_space.shape)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.scaling = None if self.discrete else BoxScaling(action_space)
        self.action_dim = int(action_space.n) if self.discrete else self.scaling.dim
        self.actor = self.make_actor().to(device)
        encoder = {} if self.encoder is None else {"encoder": self.encoder}
        self.nets = nn.ModuleDict({"actor": self.actor, **encoder})  # what remote actors receive
        self.steps = 0  # the run's env steps, for the warm-up
        self.assign_envs(np.arange(num_envs))

    # ------------------------------------------------------------------ what each family defines
    @abstractmethod
    def make_actor(self) -> nn.Module:
        """The actor on ``feature_dim`` features (its parameters are drawn here, before the critics')."""

    def exploration(self, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This step's acting noise, a row per env from its stream, and the state after it (OU noise)."""
        return torch.from_numpy(self.normal_noise()).to(self.device), state

    @abstractmethod
    def actor_actions(self, features: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """[B, d] actions in [-1, 1] (or [B] indices) for observation features, exploring with ``noise`` from
        ``exploration`` (None: greedy); in inference mode."""

    # ------------------------------------------------------------------ acting
    def assign_envs(self, env_ids: np.ndarray) -> None:
        """Draw env k's exploration from the stream of env ``env_ids[k]`` of the run (distributed actors)."""
        self.explore_rngs = [np.random.default_rng(derive_seed(self.seed, EXPLORE_STREAM, int(i))) for i in env_ids]

    def acting_rngs(self) -> list[np.random.Generator]:
        return self.explore_rngs

    def follow_schedule(self, steps: int) -> None:
        """Act as the learner would after ``steps`` env steps (random actions until ``learning_starts``)."""
        self.steps = steps

    def normal_noise(self) -> np.ndarray:
        """[num_envs, d] standard normal draws, row k from env k's stream."""
        return np.stack([rng.standard_normal(self.action_dim, dtype=np.float32) for rng in self.explore_rngs])

    def random_actions(self) -> np.ndarray:
        """CleanRL's warm-up: uniform over the action space (over the cube, then scaled, for a Box)."""
        if self.discrete:
            return np.array([rng.integers(self.action_dim) for rng in self.explore_rngs], dtype=np.int64)
        unit = np.stack([rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32) for rng in self.explore_rngs])
        return self.scaling.to_env(unit)

    def obs_tensor(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Flat float vectors for the MLPs; frames keep their shape and dtype (the encoder scales uint8)."""
        obs = torch.as_tensor(obs, device=self.device)
        if self.encoder is None:
            return obs.reshape(len(obs), self.feature_dim).float()
        return obs.reshape(len(obs), *self.obs_shape)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """The features the actor reads: the flat observation itself, or the CNN's output."""
        return obs if self.encoder is None else self.encoder.forward(obs)

    def act_numpy(self, obs: np.ndarray, state: dict[str, torch.Tensor], explore: bool
                  ) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """Env actions (scaled to the Box's bounds, or indices) for numpy observations, as the runners hand
        them over; and the state after this step."""
        if explore and self.steps < self.config.learning_starts:
            return self.random_actions(), state
        noise, state = self.exploration(state) if explore else (None, state)
        with torch.inference_mode():
            actions = self.actor_actions(self.encode(self.obs_tensor(obs)), noise).cpu().numpy()
        return (actions if self.discrete else self.scaling.to_env(actions)), state

    def act(self, obs: torch.Tensor, state: dict[str, torch.Tensor], explore: bool
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        actions, state = self.act_numpy(obs.cpu().numpy(), state, explore)
        return torch.from_numpy(actions), state, {}

    def weights(self) -> dict[str, torch.Tensor]:
        return self.nets.state_dict()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.nets.load_state_dict(weights)


class OffPolicyLearner(Learner):
    """The learning half: one update of critics (and encoder), actor and targets per ``learn`` on a replay
    batch; it holds the critics, all target nets, the optimisers and the checkpointed generator of the updates'
    noise, and trains the policy's actor and encoder in place. Subclasses build their nets in ``build`` and
    define one ``gradient_step``."""

    def __init__(self, config: OffPolicyConfig, policy: OffPolicyPolicy, device: torch.device, seed: int) -> None:
        self.config, self.policy, self.device = config, policy, device
        self.actor, self.encoder = policy.actor, policy.encoder
        self.action_dim, self.feature_dim, self.discrete = policy.action_dim, policy.feature_dim, policy.discrete
        if self.encoder is not None:
            self.encoder_target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(derive_seed(seed, LEARN_STREAM))
        self.updates = 0  # critic updates so far
        self.build()

    @abstractmethod
    def build(self) -> None:
        """Make the critics, the targets and the optimisers."""

    @abstractmethod
    def gradient_step(self, obs: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
                      next_obs: torch.Tensor, discounts: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on a replay batch; metrics as 0-d tensors (turned to floats once by ``learn``)."""

    @abstractmethod
    def checkpointed(self) -> dict[str, Any]:
        """The nets and optimisers (anything with state_dict/load_state_dict) a checkpoint holds, by name."""

    def learn(self, batch: Batch) -> dict[str, float]:
        obs_tensor, device = self.policy.obs_tensor, self.device
        metrics = self.gradient_step(
            obs_tensor(batch.obs), torch.from_numpy(batch.actions).to(device),
            torch.from_numpy(batch.returns).to(device), obs_tensor(batch.next_obs),
            torch.from_numpy(batch.discounts).to(device),
        )
        self.updates += 1
        return dict(zip(metrics, torch.stack(list(metrics.values())).tolist(), strict=True))

    # ------------------------------------------------------------------ the image encoder
    def encoders(self) -> dict[str, nn.Module]:
        return {} if self.encoder is None else {"encoder": self.encoder, "encoder_target": self.encoder_target}

    def encode(self, obs: torch.Tensor, target: bool = False) -> torch.Tensor:
        """The features the actor and critics read: the flat observation itself, or the (target) CNN's output."""
        if self.encoder is None:
            return obs
        return (self.encoder_target if target else self.encoder).forward(obs)

    def critic_parameters(self) -> list[torch.Tensor]:
        """What the critic loss trains: the critics and the encoder."""
        encoder = list(self.encoder.parameters()) if self.encoder is not None else []
        return [*self.critic.parameters(), *encoder]

    def update_critic_target(self) -> None:
        self.soft_update(self.critic_target, self.critic)
        if self.encoder is not None:
            self.soft_update(self.encoder_target, self.encoder)

    # ------------------------------------------------------------------ optimising
    def adam(self, params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
        return make_adam(params, lr, self.device, eps=self.config.adam_eps)

    @staticmethod
    def optimise(loss: torch.Tensor, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        for param in params:  # zero_grad(set_to_none=True) without its profiler hooks
            param.grad = None
        loss.backward()
        adam_step(optimizer)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal noise for an update, from the checkpointed generator."""
        return torch.randn(*shape, generator=self.generator, device=self.device)

    def soft_update(self, target: torch.nn.Module, online: torch.nn.Module) -> None:
        polyak_update(list(target.parameters()), list(online.parameters()), self.config.tau)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {**{name: obj.state_dict() for name, obj in {**self.checkpointed(), **self.encoders()}.items()},
                "generator": self.generator.get_state(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for name, obj in {**self.checkpointed(), **self.encoders()}.items():
            obj.load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.updates = state["updates"]


class OffPolicyActorCritic(Agent):
    """The runners' Agent: the policy acts (carrying its per-env state, e.g. OU noise), the replay stores
    normalised actions, the learner learns on the shared schedule. Subclasses name their ``policy_class`` and
    ``learner_class``."""

    distributed = "off-policy"
    discrete_ok = False  # discrete SAC: Discrete action spaces too
    policy_class: type[OffPolicyPolicy]
    learner_class: type[OffPolicyLearner]

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        name = cls.__name__.removesuffix("Agent").lower()
        if not isinstance(observation_space, gym.spaces.Box):
            raise GbmrError(f"{name} needs a Box observation space, got {observation_space}")
        if cls.discrete_ok and isinstance(action_space, gym.spaces.Discrete):
            return
        if cls.discrete_ok and not isinstance(action_space, gym.spaces.Box):
            raise GbmrError(f"{name} needs a Box or Discrete action space, got {action_space}")
        require_bounded_box(name, action_space)

    @classmethod
    def async_problem(cls, config: Any) -> str | None:
        """None: the replay keeps each env's n-step window and frames apart, so an actor's slice is added alone."""
        return None

    @classmethod
    def make_policy(cls, config: OffPolicyConfig, observation_space: gym.Space, action_space: gym.Space,
                    device: torch.device, seed: int, total_steps: int) -> OffPolicyPolicy:
        """The acting half alone, as a remote actor needs it (it then assigns the policy its envs)."""
        return cls.policy_class(config, observation_space, action_space, 0, device, seed)

    def __init__(self, config, observation_space, action_space, num_envs, device, seed, total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        if config.policy_frequency < 1:
            raise GbmrError(f"policy_frequency must be >= 1, got {config.policy_frequency}")
        self.schedule = TrainSchedule(config.learning_starts, config.train_freq, config.gradient_steps)
        self.policy = self.policy_class(config, observation_space, action_space, num_envs, device, seed)
        self.learner = self.learner_class(config, self.policy, device, seed)
        self.acting_state = self.policy.initial_state(num_envs)
        discrete = self.policy.discrete
        self.buffer = ReplayBuffer(
            capacity=config.buffer_size, obs_shape=observation_space.shape, obs_dtype=observation_space.dtype,
            action_shape=() if discrete else (self.policy.action_dim,),
            action_dtype=np.int64 if discrete else np.float32, num_envs=num_envs, gamma=config.gamma,
            seed=derive_seed(seed, REPLAY_STREAM), frame_stack=config.frame_stack,
        )

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        actions, self.acting_state = self.policy.act_numpy(obs, self.acting_state, explore)
        return actions

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated, envs=None) -> None:
        """``envs``: the environments the rows are (an async actor's slice); None: all of them."""
        policy = self.policy
        stored = np.asarray(actions, dtype=np.int64) if policy.discrete else policy.scaling.from_env(actions)
        self.buffer.add(obs, stored, rewards, next_obs, terminated, truncated, envs)
        self.follow_schedule(self.steps + len(stored))
        done = np.asarray(terminated) | np.asarray(truncated)
        if done.any():
            ended = np.zeros(self.num_envs, dtype=bool)
            ended[slice(None) if envs is None else envs] = done
            self.acting_state = policy.episode_ends(self.acting_state, torch.from_numpy(ended))

    def follow_schedule(self, steps: int) -> None:
        self.steps = steps
        self.policy.follow_schedule(steps)

    def acting_rngs(self) -> list[np.random.Generator]:
        return self.policy.acting_rngs()

    def policy_weights(self) -> dict[str, torch.Tensor]:
        return self.policy.weights()

    def load_policy_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.policy.load_weights(weights)

    def update(self) -> dict[str, float]:
        gradient_steps = self.schedule.phase(self.steps)
        if not gradient_steps:
            return {}
        for _ in range(gradient_steps):
            metrics = self.learner.learn(self.buffer.sample(self.config.batch_size))
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "learner": self.learner.state_dict(),
            "buffer": self.buffer.state_dict(),
            "explore": [rng_state(r) for r in self.policy.explore_rngs],
            "acting_state": {name: value.clone() for name, value in self.acting_state.items()},
            "rng": rng_state(self.rng),
            "counters": {"steps": self.steps, **self.schedule.state_dict()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.buffer.load_state_dict(state["buffer"])
        for rng, saved in zip(self.policy.explore_rngs, state["explore"], strict=True):
            set_rng_state(rng, saved)
        self.acting_state = dict(state["acting_state"])
        set_rng_state(self.rng, state["rng"])
        counters = state["counters"]
        self.follow_schedule(counters["steps"])
        self.schedule.load_state_dict(counters)
