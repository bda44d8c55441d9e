"""GBMR: GQ plus graph-based memory reconstruction (Kang et al. 2024; GBMR.md "GBMR").

Every ``reconstruct_every`` steps, at the next episode end: pick critical nodes (``crossing``: nodes with
non-zero reward shared by two or more of the best ``expert_episodes`` episodes, the reference default;
``degree``; ``cluster``, GCMR; ``gnn``; ``none``), join every ordered pair by a path (``shortest``, ``reward``,
``diversity``), back the values up along the paths last edge first, and optionally sweep all edges
(``sweeps`` iterations of value iteration on the graph). Backups move each edge weight at rate ``backup_eta``
towards its target (default: the write rate ``eta``; 1 replaces it, so enough sweeps converge to the Bellman
optimum of the empirical graph; ``sweep_min_visits`` > 1 keeps that optimum from maximising over actions
tried too rarely, see ``MemoryGraph.sweep``). Options of the reference code: ``reference_backup``
(target max next weight, no reward or discount) and the exploration trick (act at random once an episode runs
past 0.9 x the mean length of the expert episodes).

``gcmr`` is GBMR with cluster critical nodes, ``gbmr-sweep`` GBMR with full sweeps instead of paths
(ERLAM-like propagation); both are GBMR with other defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gbmr.agents.gq import GQAgent, GQConfig
from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.core.state import to_numpy, to_saveable
from gbmr.memory.episodes import Episode
from gbmr.memory.graph import PATH_SCORES

CRITICAL = ("crossing", "degree", "cluster", "gnn", "none")


@dataclass
class GBMRConfig(GQConfig):
    reconstruct_every: int = 10_000  # env steps between reconstructions (each at the next episode end)
    critical: str = "crossing"  # crossing | degree | cluster | gnn | none (no path backups)
    num_critical: int = 20  # K of degree / cluster / gnn
    gnn_hops: int = 2
    path_score: str = "shortest"  # shortest | reward | diversity
    sweeps: int = 0  # full-graph backup iterations per reconstruction
    backup_eta: float = 0.0  # rate of the path backups and sweeps (0: eta, the write rate; 1: value iteration)
    sweep_min_visits: int = 1  # sweeps maximise V(u) over actions taken >= this often at u (else: their mean)
    expert_episodes: int = 10  # best episodes kept for `crossing` and the exploration trick
    reference_backup: bool = False  # target = V(dst) alone, as the reference code
    exploration_trick: bool = False  # random actions past 0.9 x mean expert episode length


@dataclass
class GCMRConfig(GBMRConfig):
    critical: str = "cluster"


@dataclass
class GBMRSweepConfig(GBMRConfig):
    critical: str = "none"
    sweeps: int = 10


class GBMRAgent(GQAgent):
    Config = GBMRConfig
    metric_names = GQAgent.metric_names + ("critical", "paths")

    def __init__(self, config: GBMRConfig, observation_space, action_space, num_envs, device, seed, total_steps):
        if config.critical not in CRITICAL:
            raise unknown_choice("critical-node mode", config.critical, CRITICAL)
        if config.path_score not in PATH_SCORES:
            raise unknown_choice("path score", config.path_score, PATH_SCORES)
        if not 0.0 <= config.backup_eta <= 1.0:
            raise GbmrError(f"backup_eta must lie in [0, 1] (0: use eta), got {config.backup_eta}")
        if config.sweep_min_visits < 1:
            raise GbmrError(f"sweep_min_visits must be >= 1, got {config.sweep_min_visits}")
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        # the best episodes so far, best first: node ids, rewards, return (sum of rewards), length
        self.experts: list[tuple[np.ndarray, np.ndarray, float, int]] = []
        self.last_reconstruct = 0
        self.reconstructions = 0
        # what the last reconstruction used, kept for `gbmr inspect`: critical node ids and paths (edge ids)
        self.last_critical = np.zeros(0, dtype=np.int64)
        self.last_paths: list[np.ndarray] = []

    def explore_mask(self) -> np.ndarray:
        mask = super().explore_mask()
        if self.config.exploration_trick and self.experts:
            mean_length = np.mean([length for *_, length in self.experts])
            mask |= self.episode_steps > 0.9 * mean_length
        return mask

    def after_write(self, episode: Episode, nodes: np.ndarray) -> None:
        """Keep the `expert_episodes` best episodes (ties: the newer first: its node ids are fresher)."""
        entry = (nodes, episode.rewards.copy(), float(episode.rewards.sum()), len(nodes))
        self.experts.insert(0, entry)
        order = sorted(range(len(self.experts)), key=lambda i: -self.experts[i][2])  # stable: newer first
        self.experts = [self.experts[i] for i in order[: self.config.expert_episodes]]

    def after_episodes(self) -> None:
        if self.steps - self.last_reconstruct >= self.config.reconstruct_every:
            self.last_reconstruct = self.steps
            self._metrics.update(self.reconstruct())

    def critical_nodes(self) -> np.ndarray:
        cfg, graph = self.config, self.graph
        if cfg.critical == "crossing":
            nodes, rewards, returns, _ = zip(*self.experts, strict=True) if self.experts else ((), (), (), ())
            return graph.critical_nodes_crossing(list(nodes), list(rewards), list(returns), cfg.expert_episodes)
        if cfg.critical == "degree":
            return graph.critical_nodes_degree(cfg.num_critical)
        if cfg.critical == "cluster":
            return graph.critical_nodes_cluster(cfg.num_critical, seed=int(self.rng.integers(2**31)))
        if cfg.critical == "gnn":
            return graph.critical_nodes_gnn(cfg.num_critical, cfg.gnn_hops)
        return np.zeros(0, dtype=np.int64)

    def reconstruct(self) -> dict[str, float]:
        """One reconstruction: critical nodes, paths between them, backups along the paths, sweeps."""
        cfg = self.config
        critical = self.critical_nodes()
        rate = cfg.backup_eta or cfg.eta
        paths = self.graph.reconstruct_paths(critical, cfg.path_score) if critical.size >= 2 else []
        self.graph.backup_paths(paths, cfg.gamma, rate, cfg.reference_backup)
        if cfg.sweeps > 0:
            self.graph.sweep(cfg.gamma, rate, cfg.sweeps, cfg.reference_backup, cfg.sweep_min_visits)
        self.reconstructions += 1
        self.last_critical, self.last_paths = critical, paths
        return {"critical": float(critical.size), "paths": float(len(paths))}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["experts"] = [to_saveable({"nodes": n, "rewards": r, "return": ret, "length": length})
                            for n, r, ret, length in self.experts]
        state["reconstruction"] = to_saveable({"last": self.last_reconstruct, "count": self.reconstructions,
                                               "critical": self.last_critical, "paths": self.last_paths})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.experts = [(e["nodes"].copy(), e["rewards"].copy(), float(e["return"]), int(e["length"]))
                        for e in to_numpy(state["experts"])]
        self.last_reconstruct = int(state["reconstruction"]["last"])
        self.reconstructions = int(state["reconstruction"]["count"])
        self.last_critical = to_numpy(state["reconstruction"]["critical"]).copy()
        self.last_paths = [p.copy() for p in to_numpy(state["reconstruction"]["paths"])]


class GCMRAgent(GBMRAgent):
    """GCMR: critical nodes are the nodes nearest k-means centres of the node keys (the maze prototype)."""

    Config = GCMRConfig


class GBMRSweepAgent(GBMRAgent):
    """Reconstruction by full value-iteration sweeps over the graph (ERLAM-like), no critical paths."""

    Config = GBMRSweepConfig
