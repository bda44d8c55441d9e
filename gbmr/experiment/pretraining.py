"""Pretraining the frozen encoders (``gbmr pretrain-vae``, ``gbmr pretrain-inverse``), separately from the agent.

1. Data: ``steps`` transitions of the training environment (the same wrappers an agent's run uses), each
   episode reset with its own derived seed, under a policy that needs no agent:
   - ``random``: a uniformly random action each step;
   - ``ez``: uniformly random actions each held for a duration n drawn from a zeta distribution (p(n) ~ n^-2,
     capped at 100), the temporally extended exploration of ez-greedy (Dabney et al. 2021). Held actions go
     further: a random policy on MinAtar Freeway seldom leaves the bottom lanes, so an encoder trained on its
     data has never seen the chicken near the top.
   The value target of a state is its Monte-Carlo return sum_j gamma^j r_{t+j} to the end of its episode (no
   bootstrap; the episode cut off by the step budget counts as ended).
2. Training: ``epochs`` passes of Adam over shuffled minibatches: the VAE loss (``gbmr.nets.vae``) on states,
   or the inverse model's cross-entropy (``gbmr.nets.inverse_dynamics``) on the transitions that did not end
   an episode.
3. The file is written atomically, loads with ``torch.load(weights_only=True)`` (``gbmr.nets.pretrained``), and
   is used by ``--set encoder=vae|inverse --set encoder_path=FILE`` on the agents with an encoder (gq, gbmr,
   gcmr, gbmr-sweep, nec, mfec).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.core.seeding import derive_seed
from gbmr.envs import make_env
from gbmr.memory.episodes import n_step_returns
from gbmr.nets.inverse_dynamics import InverseDynamics
from gbmr.nets.pretrained import KINDS, save_pretrained
from gbmr.nets.vae import VAE

EPISODE_STREAM, SHUFFLE_STREAM, WEIGHTS_STREAM, POLICY_STREAM = 1, 2, 3, 4  # derived seeds
POLICIES = ("random", "ez")
EZ_EXPONENT, EZ_MAX_HOLD = 2.0, 100

Log = Callable[[int, dict[str, float]], None]


@dataclass
class Pretraining:
    """What the pretrain commands take; names follow the agents' configs. ``beta``, ``value_weight`` and
    ``gamma`` are the VAE's (the inverse model has no other term)."""

    env: str
    kind: str = "vae"  # vae | inverse
    steps: int = 50_000  # environment steps of data
    seed: int = 1
    policy: str = "random"  # random | ez
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
        if self.kind not in KINDS:
            raise unknown_choice("pretrained encoder", self.kind, tuple(KINDS))
        if self.policy not in POLICIES:
            raise unknown_choice("data policy", self.policy, POLICIES)
        for name in ("steps", "latent_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise GbmrError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.beta < 0 or self.value_weight < 0 or not 0 <= self.gamma <= 1:
            raise GbmrError("need lr > 0, beta >= 0, value_weight >= 0 and 0 <= gamma <= 1")


class Transitions(NamedTuple):
    """``obs[t]`` for t < steps plus the observation after the last step (``steps + 1`` rows); ``actions[t]``;
    ``continues[t]``: step t did not end its episode, so ``obs[t + 1]`` is its next observation."""

    obs: np.ndarray
    actions: np.ndarray
    continues: np.ndarray
    returns: np.ndarray


def ez_holds(rng: np.random.Generator, size: int) -> np.ndarray:
    """Durations of held actions: zeta(2) draws capped at ``EZ_MAX_HOLD``."""
    return np.minimum(rng.zipf(EZ_EXPONENT, size), EZ_MAX_HOLD)


def collect(env: gym.Env, steps: int, seed: int, gamma: float, policy: str = "random") -> Transitions:
    """``steps`` transitions under ``policy`` ("random" | "ez") with their Monte-Carlo returns."""
    space = env.observation_space
    obs_buf = np.zeros((steps + 1, *space.shape), dtype=space.dtype)
    actions = np.zeros(steps, dtype=np.int64)
    continues = np.zeros(steps, dtype=bool)
    returns = np.zeros(steps, dtype=np.float32)
    rng = np.random.default_rng(derive_seed(seed, POLICY_STREAM))
    env.action_space.seed(derive_seed(seed, POLICY_STREAM))
    rewards: list[float] = []
    episode, start, held, hold = 0, 0, 0, 0
    obs, _ = env.reset(seed=derive_seed(seed, EPISODE_STREAM, episode))
    for t in range(steps):
        obs_buf[t] = obs
        if hold == 0:
            held, hold = env.action_space.sample(), 1 if policy == "random" else int(ez_holds(rng, 1)[0])
        actions[t], hold = held, hold - 1
        obs, reward, terminated, truncated, _ = env.step(held)
        rewards.append(float(reward))
        continues[t] = not (terminated or truncated)
        if not continues[t] or t == steps - 1:
            returns[start:t + 1] = n_step_returns(np.asarray(rewards), np.zeros(len(rewards)), 0, gamma, True)
            rewards, start, episode = [], t + 1, episode + 1
            if not continues[t]:
                obs, _ = env.reset(seed=derive_seed(seed, EPISODE_STREAM, episode))
                hold = 0
    obs_buf[steps] = obs
    return Transitions(obs_buf, actions, continues, returns)


def _train(model: torch.nn.Module, samples: np.ndarray, batch_loss: Callable[[torch.Tensor], dict[str, torch.Tensor]],
           cfg: Pretraining, log: Log | None) -> list[dict[str, float]]:
    """Adam over shuffled minibatches of ``samples`` (row ids); the per-epoch mean of each term."""
    rng = np.random.default_rng(derive_seed(cfg.seed, SHUFFLE_STREAM))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history = []
    model.train()
    for epoch in range(cfg.epochs):
        sums: dict[str, float] = {}
        order = rng.permutation(samples)
        for start in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[start:start + cfg.batch_size])
            terms = batch_loss(idx)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(idx)
        history.append({name: total / len(samples) for name, total in sums.items()})
        if log is not None:
            log(epoch, history[-1])
    model.eval()
    return history


def train_vae(model: VAE, obs: np.ndarray, returns: np.ndarray, cfg: Pretraining,
              log: Log | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place on states and their returns; the mean of each loss term per epoch."""
    obs_t, returns_t = torch.from_numpy(obs), torch.from_numpy(returns)
    return _train(model, np.arange(len(returns)),
                  lambda i: model.loss(obs_t[i], returns_t[i], cfg.beta, cfg.value_weight), cfg, log)


def train_inverse(model: InverseDynamics, data: Transitions, cfg: Pretraining,
                  log: Log | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place on the transitions that continue; cross-entropy and accuracy per epoch."""
    obs_t, actions_t = torch.from_numpy(data.obs), torch.from_numpy(data.actions)
    samples = np.flatnonzero(data.continues)
    if samples.size == 0:
        raise GbmrError("no transition of the data continues its episode; collect more steps")
    return _train(model, samples, lambda i: model.loss(obs_t[i], obs_t[i + 1], actions_t[i]), cfg, log)


def pretrain(cfg: Pretraining, out: str | Path, log: Log | None = None) -> list[dict[str, float]]:
    """Collect data, train, save to ``out``; everything is checked before the (long) data collection."""
    cfg.check()
    out = Path(out)
    if not out.parent.is_dir():
        raise GbmrError(f"folder '{out.parent}' of --out does not exist")
    env = make_env(cfg.env, cfg.seed, training=True, **cfg.env_options)
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box):
        raise GbmrError(f"the {cfg.kind} encoder needs a Box (array) observation space; '{cfg.env}' has {space}")
    if cfg.kind == "inverse" and not isinstance(env.action_space, gym.spaces.Discrete):
        raise GbmrError(f"the inverse model classifies discrete actions; '{cfg.env}' has {env.action_space}")
    with torch.random.fork_rng(devices=[]):  # the initial weights and the sampling noise depend on the seed only
        torch.manual_seed(derive_seed(cfg.seed, WEIGHTS_STREAM))
        if cfg.kind == "vae":
            model: VAE | InverseDynamics = VAE(space, cfg.latent_dim, cfg.hidden, cfg.torso)
        else:
            model = InverseDynamics(space, int(env.action_space.n), cfg.latent_dim, cfg.hidden, cfg.torso)
        data = collect(env, cfg.steps, cfg.seed, cfg.gamma, cfg.policy)
        env.close()
        if isinstance(model, VAE):
            history = train_vae(model, data.obs[:-1], data.returns, cfg, log)
        else:
            history = train_inverse(model, data, cfg, log)
    save_pretrained(model, space, out, env=cfg.env, steps=cfg.steps, seed=cfg.seed, policy=cfg.policy,
                    gamma=cfg.gamma, epochs=cfg.epochs, final_loss=history[-1])
    return history
