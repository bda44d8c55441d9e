"""The contract every agent keeps, so one runner drives them all (Tianshou's collector/policy split)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
import torch


class Agent(ABC):
    """An agent decides and learns; it never steps an environment.

    Subclasses set ``Config`` (a dataclass of the algorithm's hyperparameters, named as in its paper) and
    ``metric_names`` (the columns ``update`` may report, written to metrics.csv).

    All arrays are batched over the ``num_envs`` environments of a vector env. ``observe`` receives, for an
    environment whose episode just ended, the true final observation as ``next_obs``; the runner then resets
    that environment itself, so the next ``act`` sees the first observation of a new episode.
    """

    Config: type
    metric_names: tuple[str, ...] = ()
    # How a distributed run (runners/distributed.py) feeds it: "on-policy" (actors fill rollouts the learner
    # concatenates), "off-policy" (actors send transitions the learner observes), "central" (the learner acts
    # for all actors each vector step: agents whose acting reads a learner-side memory), None (one process only).
    distributed: str | None = None
    multi_agent: bool = False  # True: takes the multi-agent interface of gbmr/envs/multiagent.py

    def __init__(
        self,
        config: Any,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_envs: int,
        device: torch.device,
        seed: int,
        total_steps: int,
    ) -> None:
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.num_envs = num_envs
        self.device = device
        self.total_steps = total_steps  # the run's budget, for schedules (epsilon, PER beta)
        self.rng = np.random.default_rng(seed)
        self.steps = 0  # environment steps observed, summed over environments

    @classmethod  # noqa: B027 - an optional hook, not an abstract method
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        """Raise GbmrError naming what the algorithm needs when it cannot handle these spaces."""

    def begin_evaluation_episode(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """A greedy evaluation episode starts: agents that remember within an episode (a Transformer policy's
        cache) clear what they keep for evaluation, apart from the training environments' state."""

    @abstractmethod
    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        """Actions for a batch of observations; ``explore=False`` is the greedy evaluation policy."""

    @abstractmethod
    def observe(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Record one vector step of experience."""

    @abstractmethod
    def update(self) -> dict[str, float]:
        """Learn if it is time to (the agent keeps its own schedule); return metrics of what it did."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: nets, optimisers, memories, counters, RNG states.

        Only tensors, numpy-free containers and plain Python values: checkpoints load with weights_only=True.
        """

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    # ------------------------------------------------------------------ distributed acting (optional)
    @classmethod
    def async_problem(cls, config: Any) -> str | None:
        """Why an async distributed run cannot feed this agent one actor's slice of the envs at a time, or None
        when it can. On-policy agents learn from joined slices; off-policy ones that take slices (``observe``
        with ``envs=`` the slice's env ids, as DQN's) override this to return None."""
        if cls.distributed == "central":
            return ("its memory is learner-side, so the learner acts for all actors at every vector step "
                    "(central inference) and no actor can run ahead")
        return None if cls.distributed == "on-policy" else "it observes whole vector steps only"

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """What an actor's copy needs to act as this agent does (one Ray object store put per version)."""
        raise NotImplementedError(f"{type(self).__name__} does not run distributed")

    def load_policy_weights(self, weights: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not run distributed")

    def follow_schedule(self, steps: int) -> None:
        """An actor's copy acts as the learner would after ``steps`` env steps (exploration schedules)."""
        self.steps = steps

    def acting_rngs(self) -> list[np.random.Generator]:
        """The generators acting draws from: an actor's state for a restart carries them."""
        return [self.rng]


class Policy(ABC):
    """Acting apart from learning (issue 17's split): what a remote actor needs is this and its weights, never
    the optimiser or the storage. ``state`` is what the policy carries between steps per env (a Transformer's KV
    cache; empty for a memoryless policy); ``extras`` is what a learner needs of the step (log pi, V)."""

    def initial_state(self, num_envs: int) -> dict[str, torch.Tensor]:
        """The per-env state at the start of episodes in ``num_envs`` environments."""
        return {}

    @abstractmethod
    def act(self, obs: torch.Tensor, state: dict[str, torch.Tensor], explore: bool
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(actions, the state after this step, extras) for a batch of observations."""

    def episode_ends(self, state: dict[str, torch.Tensor], dones: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state once the envs where ``dones`` is True start new episodes."""
        return state

    @abstractmethod
    def weights(self) -> dict[str, torch.Tensor]:
        """What a copy needs to act as this policy does (one Ray object-store put per version)."""

    @abstractmethod
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Act with ``weights`` from now on."""


class Learner(ABC):
    """Learning apart from acting: turns a batch (``gbmr.core.batch.Batch``, [T, N]) into parameter updates of
    the policy it was built on, and owns what only learning needs (optimiser, its randomness, counters)."""

    @abstractmethod
    def learn(self, batch: Any) -> dict[str, float]:
        """One learning phase on ``batch``; metrics of what it did."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything learning needs to resume exactly (tensors and plain values: weights_only=True loads)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
