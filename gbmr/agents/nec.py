"""Neural episodic control (NEC, Pritzel et al. 2017).

A learned encoder h = phi(s) and one differentiable neural dictionary (DND) per action:
Q(s, a) = sum_i w_i v_i / sum_i w_i over the p = 50 nearest keys of DND_a, w_i = 1 / (||h - h_i||^2 + delta).

- Acting: epsilon-greedy on Q (ties broken at random).
- Writing: each step waits N steps in a per-environment window; then (phi(s_t), R_t) goes into DND_{a_t} with
  R_t = sum_{j<N} gamma^j r_{t+j} + gamma^N max_a Q(s_{t+N}, a) (``n_step_returns``; shorter at episode end,
  no bootstrap after termination, bootstrap from the final state after truncation). A (near-)identical key
  merges Q_i += alpha (R_t - Q_i), else the pair is inserted, evicting the least recently used entry.
  Keys are embedded when written, with the current encoder.
- Learning: every ``learn_step`` steps a batch of (obs, action, R_t) from a replay ring is looked up through
  the kernel and the squared error (R_t - Q)^2 trains the encoder (RMSprop, as in the paper) and the keys and
  values of the neighbours used (plain SGD on their gradients); the moved keys are re-indexed.
  The replay, schedule and encoder step are ``ReturnLearner`` (shared with the memory-graph agents); the DNDs
  are ``ActionDNDs``, whose stacked storage makes a read of all actions one search and the SGD step on the
  neighbours one scatter.
- Speed without changing the maths: an observation embedded for a bootstrap read is not embedded again when
  the next step acts on it, unless a learner step changed the encoder in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from gbmr.agents.acting import argmax_random_ties, epsilon_greedy, linear_schedule, require_discrete
from gbmr.agents.base import Agent
from gbmr.agents.mfec import ENCODER_STREAM, untouched
from gbmr.agents.return_learning import ReturnLearner
from gbmr.core.errors import GbmrError
from gbmr.core.seeding import derive_seed
from gbmr.core.state import rng_state, set_rng_state, to_numpy, to_saveable
from gbmr.memory.dnd import ActionDNDs, DNDRead
from gbmr.memory.episodes import n_step_returns
from gbmr.nets.encoders import make_encoder


@dataclass
class NECConfig:
    capacity: int = 100_000  # DND entries per action (preallocated)
    k: int = 50  # neighbours p of the kernel lookup
    delta: float = 1e-3
    alpha: float = 0.1  # tabular learning rate of a merge
    n_step: int = 100
    gamma: float = 0.99
    encoder: str = "learned"  # learned | random_projection | identity | vae | inverse (only learned trains)
    encoder_path: str = ""  # vae | inverse: the file of `gbmr pretrain-vae` | `gbmr pretrain-inverse`
    dim: int = 64  # key size
    torso: str = "auto"  # auto | mlp | nature_cnn | minatar_cnn
    hidden: tuple[int, ...] = (256,)
    lr: float = 7.92e-6  # RMSprop on the encoder (paper)
    rmsprop_alpha: float = 0.95
    rmsprop_eps: float = 0.01
    dnd_lr: float = 1e-3  # SGD on the neighbours' keys and values (0 = leave them to the writes)
    batch_size: int = 32
    learn_step: int = 4  # env steps between learner steps
    learning_starts: int = 1_000  # env steps before the first learner step
    replay_size: int = 100_000
    eps_start: float = 1.0
    eps_end: float = 0.001
    eps_fraction: float = 0.1  # fraction of the run over which epsilon decays linearly
    index: str = "auto"  # exact | hnsw | auto (see gbmr.memory.knn)
    index_tolerance: float = 1e-6  # re-index a learned key only once it moved this far (squared)
    match_threshold: float = 1e-6  # squared distance under which a written key merges


class NECAgent(Agent):
    Config = NECConfig
    distributed = "central"  # acting reads the learner-side memory: the learner acts for the actors
    metric_names = ("loss", "q_mean", "epsilon", "memory")

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        require_discrete("nec", observation_space, action_space)

    def __init__(self, config: NECConfig, observation_space, action_space, num_envs, device, seed, total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        if config.n_step < 1:
            raise GbmrError(f"nec needs n_step >= 1 (returns are written N steps later), got {config.n_step}")
        self.num_actions = int(action_space.n)
        self.encoder = make_encoder(config.encoder, observation_space, config.dim,
                                    seed=derive_seed(seed, ENCODER_STREAM), hidden=config.hidden,
                                    torso=config.torso, encoder_path=config.encoder_path).to(device)
        self.dnds = ActionDNDs(self.num_actions, config.capacity, self.encoder.dim, k=config.k, delta=config.delta,
                               alpha=config.alpha, index=config.index, device=device,
                               match_threshold=config.match_threshold)
        self.learner = ReturnLearner(self.encoder, observation_space, config)
        self._last_embedding: tuple[np.ndarray, torch.Tensor] | None = None  # (obs, phi(obs)), current encoder
        shape = tuple(observation_space.shape)
        # per-env window of the last steps whose returns are not known yet (a ring of n_step entries)
        n = config.n_step
        self.window_obs = np.zeros((num_envs, n, *shape), dtype=observation_space.dtype)
        self.window_actions = np.zeros((num_envs, n), dtype=np.int64)
        self.window_rewards = np.zeros((num_envs, n), dtype=np.float64)
        self.window_start = np.zeros(num_envs, dtype=np.int64)
        self.window_len = np.zeros(num_envs, dtype=np.int64)
        self.epsilon = config.eps_start

    # ------------------------------------------------------------------ reading
    def embed(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.as_tensor(obs, device=self.device))

    @torch.no_grad()
    def _embed_read(self, obs: np.ndarray) -> torch.Tensor:
        """phi(obs) for a read, reusing the last read's embedding of the same batch (same encoder, same
        input, same batch: the same numbers)."""
        last = self._last_embedding
        if last is not None and last[0].shape == obs.shape and np.array_equal(last[0], obs):
            return last[1]
        h = self.embed(obs)
        self._last_embedding = (np.array(obs, copy=True), h)
        return h

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q ``[B, A]`` by kernel lookup in every DND (touches their LRU clocks)."""
        return self.dnds.q_values(self._embed_read(obs)).cpu().numpy()

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        if not explore:
            with untouched(self.dnds):
                return argmax_random_ties(self.q_values(obs), self.rng)
        return epsilon_greedy(self.q_values, obs, self.epsilon, self.num_actions, self.rng)

    # ------------------------------------------------------------------ writing
    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        n = self.config.n_step
        envs = np.arange(self.num_envs)
        end = (self.window_start + self.window_len) % n
        self.window_obs[envs, end] = obs
        self.window_actions[envs, end] = actions
        self.window_rewards[envs, end] = rewards
        self.window_len += 1
        terminated = np.asarray(terminated, dtype=bool)
        done = terminated | np.asarray(truncated, dtype=bool)
        full = ~done & (self.window_len == n)
        bootstrap = np.flatnonzero(full | (done & ~terminated))
        values = np.zeros(self.num_envs)
        if bootstrap.size:
            values[bootstrap] = self.q_values(next_obs[bootstrap]).max(axis=1)
        emitted = [self._emit(i, values[i], bool(terminated[i]), all_steps=bool(done[i]))
                   for i in np.flatnonzero(full | done)]
        if emitted:
            self.write(*(np.concatenate(parts) for parts in zip(*emitted, strict=True)))
        self.steps += self.num_envs
        cfg = self.config
        self.epsilon = linear_schedule(cfg.eps_start, cfg.eps_end, cfg.eps_fraction * self.total_steps, self.steps)

    def _emit(self, i: int, value: float, terminated: bool, all_steps: bool) -> tuple[np.ndarray, ...]:
        """Pop env ``i``'s steps whose returns are now known: all of them at episode end, else the oldest."""
        n, length = self.config.n_step, int(self.window_len[i])
        order = (self.window_start[i] + np.arange(length)) % n
        next_values = np.zeros(length)
        next_values[-1] = value  # only the window's last next-state is ever bootstrapped from
        returns = n_step_returns(self.window_rewards[i, order], next_values, n, self.config.gamma, terminated)
        take = order if all_steps else order[:1]
        popped = len(take)
        self.window_start[i] = 0 if all_steps else (self.window_start[i] + 1) % n
        self.window_len[i] -= popped
        return self.window_obs[i, take].copy(), self.window_actions[i, take].copy(), returns[:popped]

    @torch.no_grad()
    def write(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray) -> None:
        """Append (phi(obs), R) to each action's DND (merge rule in ``DND.write``) and to the replay."""
        keys = self.embed(obs).cpu().numpy()
        for a in np.unique(actions):
            mask = actions == a
            self.dnds[a].write(keys[mask], returns[mask])
        self.learner.replay.add(obs, actions, returns)

    # ------------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        batch = self.learner.due_batch(self.steps, self.rng)
        if batch is None:
            return {}
        loss, q_mean = self.learn(*batch)
        memory = float(sum(len(dnd) for dnd in self.dnds))
        return {"loss": loss, "q_mean": q_mean, "epsilon": self.epsilon, "memory": memory}

    def batch_loss(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray) -> tuple[torch.Tensor, DNDRead]:
        """Mean squared error of the kernel lookups, and the read (Q, neighbours; their keys and values collect
        gradients when ``dnd_lr > 0``)."""
        read = self.dnds.read(self.embed(obs), actions, grad=self.config.dnd_lr > 0)
        target = torch.as_tensor(returns, dtype=torch.float32, device=self.device)
        return (target - read.q).square().mean(), read

    def learn(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray) -> tuple[float, float]:
        """One gradient step on a batch: RMSprop on the encoder, SGD on the neighbours used; moved keys are
        re-indexed."""
        loss, read = self.batch_loss(obs, actions, returns)
        self.learner.step(loss)
        self._last_embedding = None  # the encoder changed
        if self.config.dnd_lr > 0:
            self.dnds.sgd_step(read, self.config.dnd_lr)
            self.dnds.refresh_index(read.rows, tolerance=self.config.index_tolerance)
        return loss.item(), read.q.mean().item()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "encoder": self.encoder.state_dict(),
            "learner": self.learner.state_dict(),
            "dnds": [dnd.state_dict() for dnd in self.dnds],
            "window": to_saveable({"obs": self.window_obs, "actions": self.window_actions,
                                   "rewards": self.window_rewards, "start": self.window_start,
                                   "len": self.window_len}),
            "rng": rng_state(self.rng),
            "counters": {"steps": self.steps, "epsilon": self.epsilon},
        }

    def load_state_dict(self, state: dict) -> None:
        self._last_embedding = None
        self.encoder.load_state_dict(state["encoder"])
        self.learner.load_state_dict(state["learner"])
        for dnd, dnd_state in zip(self.dnds, state["dnds"], strict=True):
            dnd.load_state_dict(dnd_state)
        window = to_numpy(state["window"])
        self.window_obs[:], self.window_actions[:], self.window_rewards[:] = (
            window["obs"], window["actions"], window["rewards"])
        self.window_start[:], self.window_len[:] = window["start"], window["len"]
        set_rng_state(self.rng, state["rng"])
        counters = state["counters"]
        self.steps, self.epsilon = counters["steps"], counters["epsilon"]
