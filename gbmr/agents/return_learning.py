"""Training an encoder by regressing N-step returns through a kernel lookup: the piece NEC and the memory-graph
agents (GQ, GBMR, GCMR, GBMR-sweep) share (GBMR.md "Encoder training").

Every ``learn_step`` env steps (after ``learning_starts``) a batch of ``batch_size`` (obs, action, R) triples is
drawn from a ring of the last ``replay_size`` written steps, the agent computes (R - Q_lookup(phi(obs), a))^2
through its memory, and one optimiser step follows: RMSprop on the encoder (as NEC's paper and the GBMR
reference code). What the lookup reads, and any update of the memory itself (NEC: SGD on the neighbours' keys and
values), is the agent's business; this module owns the replay, the schedule and the encoder's steps, and their
checkpoint state.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from gbmr.core.state import to_numpy, to_saveable


class ReturnReplay:
    """Ring of (obs, action, N-step return) triples the learner samples uniformly."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> None:
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.returns = np.zeros(capacity, dtype=np.float32)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray) -> None:
        capacity = len(self.actions)
        slots = (self.pos + np.arange(len(actions))) % capacity
        self.obs[slots], self.actions[slots], self.returns[slots] = obs, actions, returns
        self.pos = int((self.pos + len(actions)) % capacity)
        self.size = min(self.size + len(actions), capacity)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = rng.integers(self.size, size=n)
        return self.obs[idx], self.actions[idx], self.returns[idx]

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return to_saveable({"obs": self.obs[:n], "actions": self.actions[:n], "returns": self.returns[:n],
                            "pos": self.pos, "size": n})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = to_numpy(state)
        n = self.size = int(state["size"])
        self.pos = int(state["pos"])
        self.obs[:n], self.actions[:n], self.returns[:n] = state["obs"], state["actions"], state["returns"]


class LearnerConfig(Protocol):
    """The hyperparameters ``ReturnLearner`` reads from an agent's config (same names in NEC and GQ)."""

    lr: float
    rmsprop_alpha: float
    rmsprop_eps: float
    batch_size: int
    learn_step: int
    learning_starts: int
    replay_size: int


class ReturnLearner:
    """Replay, schedule and optimiser steps of return regression; the agent supplies the loss."""

    def __init__(self, encoder: torch.nn.Module, observation_space: gym.spaces.Box, config: LearnerConfig) -> None:
        self.batch_size, self.learn_step = config.batch_size, config.learn_step
        self.learning_starts = config.learning_starts
        self.replay = ReturnReplay(config.replay_size, tuple(observation_space.shape), observation_space.dtype)
        params = [p for p in encoder.parameters() if p.requires_grad]
        self.optimizer = (
            torch.optim.RMSprop(params, lr=config.lr, alpha=config.rmsprop_alpha, eps=config.rmsprop_eps)
            if params else None
        )
        self.last_learn = 0  # env steps at the last learner step

    def due_batch(self, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """A replay batch if a learner step is due at ``steps`` env steps (recorded as taken), else None."""
        if steps < self.learning_starts or steps - self.last_learn < self.learn_step or len(self.replay) == 0:
            return None
        self.last_learn = steps
        return self.replay.sample(self.batch_size, rng)

    def step(self, loss: torch.Tensor) -> None:
        """One gradient step of the encoder on ``loss`` (the gradients of anything else it reaches stay for the
        caller)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"replay": self.replay.state_dict(), "last_learn": self.last_learn,
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replay.load_state_dict(state["replay"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.last_learn = int(state["last_learn"])
