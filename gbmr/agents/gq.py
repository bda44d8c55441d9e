"""GQ: Q-learning on a memory graph (GBMR paper, GBMR.md "GQ"): graph write + kernel read, no reconstruction.

Each environment's steps are collected until its episode ends (the reference writes at episode end); then
every step's N-step return is computed, bootstrapping from the graph's own read V(s) = max_a Q(s, a), and the
episode is merged into the graph (``MemoryGraph.write_episode``). Acting reads the graph once per vector step
for all actions (the ``joint`` layout) and is epsilon-greedy with random ties. Keys are the encoder's
embeddings, computed once when a step is observed; the collector holds embeddings, not observations, so a
long Atari episode costs d floats per step. Evaluation (``explore=False``) reads only: memory, counters and
the training RNG stay untouched.

Encoders: ``identity`` (tabular mazes), ``random_projection`` (default), ``vae`` and ``inverse`` (frozen nets
trained beforehand by ``gbmr pretrain-vae`` / ``pretrain-inverse``, file ``encoder_path``) and ``learned`` (GBMR.md
"Encoder training"): every ``learn_step`` env steps a batch of (obs, a, R) is drawn from a replay of the steps
written so far (R the N-step return the step was written with) and RMSprop minimises (R - Q_lookup(phi(obs), a))^2,
Q_lookup the kernel read of the graph with phi's gradient: the neighbours are the k nearest nodes of phi(obs),
their keys and values Q(u_i, a) are constants, so only phi learns (``ReturnLearner`` and ``kernel_lookup``, shared
with NEC).

Keys already in the graph were embedded by an older phi and are kept as they are, as in the reference code
(the spec says nothing else). Re-embedding is not possible: a node is a merge of many states whose observations
are not kept (keeping them would cost an observation per step instead of d floats). Keeping them is also
coherent with the loss: phi is trained to put a state near the *stored* keys whose values match its return, so
it learns to address the memory as it is; and the memory keeps up with phi by itself: merges pull a node's key
towards the new embeddings, key <- (key + d h) / (1 + d), and LRU eviction replaces nodes no longer visited.
The small learning rate keeps phi's drift slow next to that turnover. Observations of unfinished episodes are
held (besides their keys) only when the encoder is trained, to feed the replay when the episode is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from gbmr.agents.acting import argmax_random_ties, linear_schedule, require_discrete
from gbmr.agents.base import Agent
from gbmr.agents.return_learning import ReturnLearner
from gbmr.core.errors import GbmrError
from gbmr.core.seeding import derive_seed
from gbmr.core.state import rng_state, set_rng_state, to_numpy, to_saveable
from gbmr.memory.episodes import Episode, EpisodeCollector, n_step_returns
from gbmr.memory.graph import MISSING, MemoryGraph
from gbmr.memory.kernel import kernel_lookup
from gbmr.nets.encoders import make_encoder

ENCODER_STREAM, EVAL_STREAM = 1, 2  # derived seeds: the projection matrix and evaluation's tie-breaking


@dataclass
class GQConfig:
    encoder: str = "random_projection"  # random_projection | identity | learned (trained) | vae | inverse
    embed_dim: int = 64  # ignored by identity (the observation size), vae and inverse (their latent size)
    torso: str = "auto"  # learned: auto | mlp | nature_cnn | minatar_cnn
    hidden: tuple[int, ...] = (256,)  # learned: MLP layers, or the fully connected layer after a CNN
    encoder_path: str = ""  # vae | inverse: the file of `gbmr pretrain-vae` | `gbmr pretrain-inverse`
    layout: str = "joint"  # joint | per_action (GBMR.md "The memory graph")
    capacity: int = 500_000  # nodes per table
    edge_capacity: int = 0  # 0 = 4 x nodes
    index: str = "auto"  # nearest-node search: exact | hnsw | auto (hnsw from 1e5 nodes; see gbmr.memory.knn)
    index_tolerance: float = 0.0  # re-index a merged node once it moved this fraction of dist_th (0: every move)
    k: int = 50  # neighbours of the kernel read
    delta: float = 1e-3  # kernel w = 1 / (d^2 + delta)
    dist_th: float = 1.0  # merge a step into a node closer than this (Euclidean)
    eta: float = 0.1  # edge update rate w += eta (R - w), also the backup rate of reconstructions
    gamma: float = 0.99
    n_step: int = 100  # 0 = Monte-Carlo
    node_value: str = "mean"  # Q(u, a) from u's out-edges labelled a: visit-weighted mean | max
    missing: str = "zero"  # a neighbour without an out-edge labelled a: contributes 0 (reference) | skip
    eps_start: float = 0.1
    eps_end: float = 0.1
    eps_fraction: float = 0.1  # fraction of the run over which epsilon goes from start to end
    # training of a learned encoder (GBMR.md "Encoder training"; ignored by the other encoders)
    lr: float = 1e-5  # RMSprop
    rmsprop_alpha: float = 0.9  # the reference code's decay
    rmsprop_eps: float = 0.01
    batch_size: int = 32
    learn_step: int = 4  # env steps between learner steps
    learning_starts: int = 1_000  # env steps before the first learner step
    replay_size: int = 100_000  # (obs, action, R) triples kept for the learner


class GQAgent(Agent):
    Config = GQConfig
    distributed = "central"  # acting reads the learner-side memory: the learner acts for the actors
    metric_names = ("nodes", "edges", "epsilon", "encoder_loss")

    @classmethod
    def check_spaces(cls, observation_space: gym.Space, action_space: gym.Space) -> None:
        require_discrete(cls.__name__, observation_space, action_space)

    def __init__(self, config: GQConfig, observation_space, action_space, num_envs, device, seed, total_steps):
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        if config.missing not in MISSING:
            raise GbmrError(f"missing must be one of {MISSING}, got '{config.missing}'")
        self.num_actions = int(action_space.n)
        self.encoder = make_encoder(config.encoder, observation_space, config.embed_dim,
                                    seed=derive_seed(seed, ENCODER_STREAM), hidden=config.hidden,
                                    torso=config.torso, encoder_path=config.encoder_path).to(device)
        # a trained encoder also needs each unfinished episode's observations, for the replay
        self.learner = ReturnLearner(self.encoder, observation_space, config) if self.encoder.trainable else None
        self.obs_collector = EpisodeCollector(num_envs) if self.learner is not None else None
        self.graph = MemoryGraph(self.encoder.dim, config.capacity, self.num_actions, config.layout,
                                 config.edge_capacity or None, config.dist_th, config.eta, config.node_value,
                                 index=config.index, index_tolerance=config.index_tolerance)
        self.collector = EpisodeCollector(num_envs)
        self.eval_rng = np.random.default_rng(derive_seed(seed, EVAL_STREAM))
        self.epsilon = config.eps_start
        self.episode_steps = np.zeros(num_envs, dtype=np.int64)  # steps of each env's current episode
        self._metrics: dict[str, float] = {}

    @property
    def graph_agent(self) -> GQAgent:
        """The agent that holds the memory graph and reads it (``gbmr inspect``): this one."""
        return self

    # ------------------------------------------------------------------ reading
    @torch.no_grad()
    def embed(self, obs: np.ndarray) -> np.ndarray:
        """Encoder keys [B, dim] float32 of a batch of observations."""
        return self.encoder(torch.as_tensor(np.asarray(obs), device=self.device)).cpu().numpy()

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q(s, a) for a batch of observations: one kernel read of the graph."""
        return self.read_keys(self.embed(obs))

    def read_keys(self, keys: np.ndarray) -> np.ndarray:
        cfg = self.config
        return self.graph.read(keys, cfg.k, cfg.delta, cfg.missing).q

    # ------------------------------------------------------------------ acting
    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        q = self.q_values(obs)
        if not explore:
            return argmax_random_ties(q, self.eval_rng)
        random_mask = self.explore_mask()
        random_actions = self.rng.integers(self.num_actions, size=self.num_envs)
        return np.where(random_mask, random_actions, argmax_random_ties(q, self.rng))

    def explore_mask(self) -> np.ndarray:
        """Which environments act at random this step (epsilon-greedy; GBMR adds its exploration trick)."""
        return self.rng.random(self.num_envs) < self.epsilon

    # ------------------------------------------------------------------ learning
    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        done = np.asarray(terminated) | np.asarray(truncated)
        final = np.zeros((self.num_envs, self.encoder.dim), dtype=np.float32)
        if done.any():
            final[done] = self.embed(np.asarray(next_obs)[done])
        episodes = self.collector.add(self.embed(obs), actions, rewards, terminated, truncated, final)
        observed = (self.obs_collector.add(obs, actions, rewards, terminated, truncated)
                    if self.obs_collector is not None else [None] * len(episodes))
        self.steps += self.num_envs
        self.episode_steps = np.where(done, 0, self.episode_steps + 1)
        cfg = self.config
        self.epsilon = linear_schedule(cfg.eps_start, cfg.eps_end, cfg.eps_fraction * self.total_steps, self.steps)
        for episode, with_obs in zip(episodes, observed, strict=True):
            self.after_write(episode, self.write(episode, None if with_obs is None else with_obs.obs))
        if episodes:
            self.after_episodes()
            self._metrics.update(nodes=self.graph.num_nodes, edges=self.graph.num_edges, epsilon=self.epsilon)

    def write(self, episode: Episode, obs: np.ndarray | None = None) -> np.ndarray:
        """Merge an ended episode into the graph with its N-step returns; returns its node ids. The episode's
        observations ``obs``, if given, go to the learner's replay with the same returns."""
        cfg = self.config
        T, n = len(episode.actions), cfg.n_step
        # next_values[i] = V(state after step i); only the ones a bootstrap uses are read
        needed = np.arange(n - 1, T - 1) if 0 < n < T else np.zeros(0, dtype=np.int64)
        if not episode.terminated:
            needed = np.append(needed, T - 1)
        next_values = np.zeros(T)
        if needed.size:
            next_keys = np.concatenate([episode.obs[1:], episode.final_obs[None]])
            next_values[needed] = self.read_keys(next_keys[needed]).max(axis=1)
        returns = n_step_returns(episode.rewards, next_values, n, cfg.gamma, episode.terminated)
        if obs is not None and self.learner is not None:
            self.learner.replay.add(obs, episode.actions, returns)
        return self.graph.write_episode(episode.obs, episode.actions, episode.rewards, returns,
                                        episode.terminated)

    def after_write(self, episode: Episode, nodes: np.ndarray) -> None:
        """Hook: an episode was just written as `nodes` (GBMR keeps its expert episodes here)."""

    def after_episodes(self) -> None:
        """Hook: the episodes that ended in this vector step are written (GBMR reconstructs here)."""

    def update(self) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        batch = self.learner.due_batch(self.steps, self.rng) if self.learner is not None else None
        if batch is not None:
            loss = self.encoder_loss(*batch)
            if loss is not None:
                self.learner.step(loss)
                out["encoder_loss"] = loss.item()
        return out

    def encoder_loss(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray) -> torch.Tensor | None:
        """Mean (R - Q_lookup(phi(obs), a))^2 over the rows whose lookup finds nodes (None if none does), with
        phi's gradient; the nodes' keys and values enter as constants."""
        h = self.encoder(torch.as_tensor(np.asarray(obs), device=self.device))
        keys, values, valid = self.neighbours(h.detach().cpu().numpy(), np.asarray(actions))
        rows = valid.any(1)
        if not rows.any():
            return None
        q, _ = kernel_lookup(h[rows], keys[rows], values[rows], valid[rows], self.config.delta)
        target = torch.as_tensor(np.asarray(returns), dtype=torch.float32, device=self.device)[rows]
        return (target - q).square().mean()

    def neighbours(self, queries: np.ndarray, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the graph read of ``queries`` uses for action ``actions[i]``: the neighbours' keys ``[B, k, d]``,
        their Q(u, a) ``[B, k]`` and which neighbours count ``[B, k]`` (absent ones, and under ``missing=skip``
        those without an out-edge labelled a, do not)."""
        cfg, graph = self.config, self.graph
        B = len(actions)
        tables = actions if graph.layout == "per_action" else np.zeros(B, dtype=np.int64)
        nodes = graph.read(queries, cfg.k, cfg.delta, cfg.missing).nodes[np.arange(B), tables]  # [B, k]
        valid = nodes >= 0
        nodes = np.where(valid, nodes, graph.terminal_node)  # a placeholder without key or out-edges
        q, has = graph.node_q(nodes.ravel())
        pick = (np.arange(nodes.size), np.repeat(actions, nodes.shape[1]))
        values, has = q[pick].reshape(nodes.shape), has[pick].reshape(nodes.shape)
        if cfg.missing == "skip":
            valid &= has
        keys, values, valid = (torch.as_tensor(x, device=self.device)
                               for x in (graph.node_keys[nodes], values.astype(np.float32), valid))
        return keys, values, valid

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        trained = {} if self.learner is None else {"learner": self.learner.state_dict(),
                                                   "obs_collector": self.obs_collector.state_dict()}
        return {
            **trained,
            "encoder": self.encoder.state_dict(),
            "graph": self.graph.state_dict(),
            "collector": self.collector.state_dict(),
            "rng": rng_state(self.rng),
            "eval_rng": rng_state(self.eval_rng),
            "counters": {"steps": self.steps, "epsilon": self.epsilon,
                         "episode_steps": to_saveable(self.episode_steps)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
            self.obs_collector.load_state_dict(state["obs_collector"])
        self.graph.load_state_dict(state["graph"])
        self.collector.load_state_dict(state["collector"])
        set_rng_state(self.rng, state["rng"])
        set_rng_state(self.eval_rng, state["eval_rng"])
        counters = state["counters"]
        self.steps, self.epsilon = int(counters["steps"]), float(counters["epsilon"])
        self.episode_steps = to_numpy(counters["episode_steps"]).copy()
