"""Pretraining the VAE encoder of seed note 001 (``gbmr pretrain-vae``): it is trained separately from the agent.

1. Data: ``steps`` observations of the training environment (the same wrappers an agent's run uses) under a
   uniformly random policy; each episode reset with its own derived seed. The value target of a state is its
   Monte-Carlo return sum_j gamma^j r_{t+j} to the end of its episode (no bootstrap; the episode cut off by the
   step budget counts as ended).
2. Training: ``epochs`` passes of Adam over shuffled minibatches on the VAE loss (``gbmr.nets.vae``).
3. The file is written atomically, loads with ``torch.load(weights_only=True)``, and is used by
   ``--set encoder=vae --set vae_path=FILE`` on the agents with an encoder (gq, gbmr, gcmr, gbmr-sweep, nec, mfec).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from gbmr.envs import make_env
from gbmr.errors import GbmrError
from gbmr.experiment.seeding import derive_seed
from gbmr.memory.episodes import n_step_returns
from gbmr.nets.vae import VAE, save_vae

EPISODE_STREAM = 1  # derived seeds of the data episodes' resets


@dataclass
class VAETraining:
    """What ``gbmr pretrain-vae`` takes; names follow the agents' configs."""

    env: str
    steps: int = 50_000  # environment steps of random-policy data
    seed: int = 1
    latent_dim: int = 32
    hidden: tuple[int, ...] = (256,)
    torso: str = "auto"
    gamma: float = 0.99  # discount of the Monte-Carlo value targets
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    beta: float = 1.0  # weight of the KL term
    value_weight: float = 1.0  # weight of the value-decoding term
    env_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        for name in ("steps", "latent_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise GbmrError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.beta < 0 or self.value_weight < 0 or not 0 <= self.gamma <= 1:
            raise GbmrError("need lr > 0, beta >= 0, value_weight >= 0 and 0 <= gamma <= 1")


def collect(env: gym.Env, steps: int, seed: int, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` observations under a uniformly random policy and their Monte-Carlo returns (float32)."""
    space = env.observation_space
    obs_buf = np.zeros((steps, *space.shape), dtype=space.dtype)
    returns = np.zeros(steps, dtype=np.float32)
    rewards: list[float] = []
    episode, start = 0, 0
    obs, _ = env.reset(seed=derive_seed(seed, EPISODE_STREAM, episode))
    for t in range(steps):
        obs_buf[t] = obs
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        rewards.append(float(reward))
        if terminated or truncated or t == steps - 1:
            returns[start:t + 1] = n_step_returns(np.asarray(rewards), np.zeros(len(rewards)), 0, gamma, True)
            rewards, start, episode = [], t + 1, episode + 1
            obs, _ = env.reset(seed=derive_seed(seed, EPISODE_STREAM, episode))
    return obs_buf, returns


def train_vae(model: VAE, obs: np.ndarray, returns: np.ndarray, cfg: VAETraining,
              log: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place; returns the mean of each loss term per epoch (``log`` sees them as they come)."""
    rng = np.random.default_rng(derive_seed(cfg.seed, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    obs_t, returns_t = torch.from_numpy(obs), torch.from_numpy(returns)
    history = []
    model.train()
    for epoch in range(cfg.epochs):
        sums: dict[str, float] = {}
        order = rng.permutation(len(obs))
        for start in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[start:start + cfg.batch_size])
            terms = model.loss(obs_t[idx], returns_t[idx], cfg.beta, cfg.value_weight)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(idx)
        history.append({name: total / len(obs) for name, total in sums.items()})
        if log is not None:
            log(epoch, history[-1])
    model.eval()
    return history


def pretrain_vae(cfg: VAETraining, out: str | Path,
                 log: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Collect data, train, save to ``out``; everything is checked before the (long) data collection."""
    cfg.check()
    out = Path(out)
    if not out.parent.is_dir():
        raise GbmrError(f"folder '{out.parent}' of --out does not exist")
    env = make_env(cfg.env, cfg.seed, training=True, **cfg.env_options)
    if not isinstance(env.observation_space, gym.spaces.Box):
        raise GbmrError(f"the VAE needs a Box (array) observation space; '{cfg.env}' has {env.observation_space}")
    with torch.random.fork_rng(devices=[]):  # the initial weights and the sampling noise depend on the seed only
        torch.manual_seed(derive_seed(cfg.seed, 3))
        model = VAE(env.observation_space, cfg.latent_dim, cfg.hidden, cfg.torso)
        obs, returns = collect(env, cfg.steps, cfg.seed, cfg.gamma)
        env.close()
        history = train_vae(model, obs, returns, cfg, log)
    save_vae(model, out, env=cfg.env, steps=cfg.steps, seed=cfg.seed, gamma=cfg.gamma, epochs=cfg.epochs,
             final_loss=history[-1])
    return history
