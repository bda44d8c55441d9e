"""A picture of a graph agent's memory (``gbmr inspect``): what the memory holds and what reconstruction used.

Nodes are coloured by their value V(u) = max_a Q(u, a), edges are grey lines (both directions of a pair and
parallel edges of different actions draw as one line; self-loops and edges into the episode-end sentinels are
left out), the critical nodes of the last reconstruction are ringed and the edges of its paths drawn as
arrows. Positions: on a grid maze (identity encoder on (row, col) keys) a node sits on its cell, with the hell
cells, the start and the goal drawn under it; otherwise the keys are projected on their first two principal
components. Past ``max_nodes`` nodes only the critical nodes and
the most visited ones are drawn, so that a 5e5-node memory still draws in seconds.

Drawn with matplotlib's object API on the Agg canvas (no pyplot: no GUI backend, no global state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from gbmr.memory.graph import MemoryGraph

MAX_NODES = 3000
HELL_COLOR, START_COLOR, GOAL_COLOR, CRITICAL_COLOR, PATH_COLOR = "#d9534f", "#2ca02c", "#f0c000", "#e8175d", "#ff7f0e"


@dataclass(frozen=True)
class GridLayout:
    """The maze a tabular memory lives on: node keys are (row, col) cells."""

    size: int
    start: np.ndarray
    goal: np.ndarray
    hell_mask: np.ndarray  # [size, size] bool

    @classmethod
    def from_env(cls, env: Any) -> GridLayout | None:
        """The layout of a maze env exposing size, start, goal and hell_mask (the paper maze), else None."""
        maze = env.unwrapped
        if not all(hasattr(maze, name) for name in ("size", "start", "goal", "hell_mask")):
            return None
        return cls(int(maze.size), np.asarray(maze.start), np.asarray(maze.goal), np.asarray(maze.hell_mask))


class GraphSummary(NamedTuple):
    nodes: int  # alive nodes of the memory
    edges: int  # alive edges (including those into the episode-end sentinels)
    critical: int  # critical nodes of the last reconstruction still alive
    paths: int  # paths of the last reconstruction
    drawn: int  # nodes in the picture

    def line(self) -> str:
        capped = f" (drew the {self.drawn:,} most visited)" if self.drawn < self.nodes else ""
        return (f"{self.nodes:,} nodes{capped}, {self.edges:,} edges, {self.critical} critical nodes, "
                f"{self.paths} reconstructed paths")


def draw_memory_graph(graph: MemoryGraph, critical: np.ndarray, paths: list[np.ndarray], out: str | Path,
                      title: str = "memory graph", grid: GridLayout | None = None,
                      max_nodes: int = MAX_NODES) -> GraphSummary:
    """Save the picture of `graph` to `out` (PNG). `critical` (node ids) and `paths` (edge ids) are those of
    the last reconstruction; ids no longer alive (evicted since) are dropped."""
    alive = graph.alive_nodes()
    critical = np.unique(np.asarray(critical, dtype=np.int64))
    critical = critical[(critical >= 0) & (critical < graph.terminal_node)]
    critical = critical[graph.node_alive[critical]]
    drawn = _select_nodes(graph, alive, critical, max_nodes)
    shown = np.zeros(graph.terminal_node + 2, dtype=bool)
    shown[drawn] = True
    pos = np.zeros((len(shown), 2))
    pos[drawn] = _positions(graph.node_keys[drawn], grid is not None)

    fig = Figure(figsize=(7.5, 7.0) if grid else (8.0, 7.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles: list[Any] = []
    if grid is not None:
        handles += _draw_maze(ax, grid)
    edges = graph.alive_edges()
    src, dst = graph.edge_src[edges], graph.edge_dst[edges]
    keep = shown[src] & shown[dst] & (src != dst)
    pairs = np.unique(np.sort(np.stack([src[keep], dst[keep]], 1), axis=1), axis=0)
    ax.add_collection(LineCollection(pos[pairs], colors="0.55", linewidths=0.8 if grid else 0.4,
                                     alpha=0.8 if grid else 0.35, zorder=1))
    handles += _draw_paths(ax, graph, paths, shown, pos, width=0.006 if grid else 0.0025)
    values = graph.node_values(drawn)
    drawn = drawn[np.argsort(values, kind="stable")]  # valuable nodes on top where they overlap
    values = np.sort(values, kind="stable")
    size = 330.0 * (10 / grid.size) ** 2 if grid else float(np.clip(20_000 / max(drawn.size, 1), 4, 60))
    nodes = ax.scatter(*pos[drawn].T, c=values, cmap="viridis", s=size, marker="s" if grid else "o",
                       edgecolors="none", zorder=2)
    if drawn.size:
        fig.colorbar(nodes, ax=ax, shrink=0.8, label="node value V(u) = max_a Q(u, a)")
    ring = 1.9 * size if grid else max(4 * size, 60)
    ax.scatter(*pos[critical].T, s=ring, facecolors="none", edgecolors=CRITICAL_COLOR, linewidths=2.2, zorder=4)
    handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec=CRITICAL_COLOR, mew=2.2, ms=10,
                          label=f"critical node ({critical.size})"))

    summary = GraphSummary(int(alive.size), graph.num_edges, int(critical.size), len(paths), int(drawn.size))
    ax.set_title(f"{title}\n{summary.line()}", fontsize=10)
    if grid is None:
        ax.autoscale_view()
        ax.set(xlabel="principal component 1 of the keys", ylabel="principal component 2")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=8,
              frameon=False)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return summary


def _select_nodes(graph: MemoryGraph, alive: np.ndarray, critical: np.ndarray, max_nodes: int) -> np.ndarray:
    """All alive nodes, or past `max_nodes` the critical ones plus the most visited (ties: lower id)."""
    if alive.size <= max_nodes:
        return alive
    rest = np.setdiff1d(alive, critical, assume_unique=True)
    room = max(max_nodes - critical.size, 0)
    busiest = rest[np.argsort(-graph.node_visits[rest], kind="stable")[:room]]
    return np.union1d(critical, busiest)


def _positions(keys: np.ndarray, on_grid: bool) -> np.ndarray:
    """(x, y) per node: (col, row) on a grid, else the keys' first two principal components (numpy SVD)."""
    keys = keys.astype(np.float64)
    if on_grid:
        return keys[:, ::-1]
    if len(keys) == 0:
        return np.zeros((0, 2))
    centred = keys - keys.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = np.zeros((len(keys), 2))
    xy[:, : min(2, vt.shape[0])] = centred @ vt[:2].T
    return xy


def _draw_maze(ax: Any, grid: GridLayout) -> list[Any]:
    """Floor, hell cells, start and goal, rows growing downwards as in the env's render."""
    n = grid.size
    floor = np.ones((n, n, 3))
    floor[grid.hell_mask] = (0.85, 0.33, 0.31)
    ax.imshow(floor, extent=(-0.5, n - 0.5, n - 0.5, -0.5), zorder=0)
    (sr, sc), (gr, gc) = grid.start, grid.goal
    ax.add_patch(Rectangle((gc - 0.5, gr - 0.5), 1, 1, facecolor=GOAL_COLOR, zorder=0.5))
    ax.add_patch(Rectangle((sc - 0.47, sr - 0.47), 0.94, 0.94, facecolor="none", edgecolor=START_COLOR, lw=3,
                           zorder=3))
    ax.text(gc, gr, "G", ha="center", va="center", fontsize=14, weight="bold", zorder=3)
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.85", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set(xlim=(-0.5, n - 0.5), ylim=(n - 0.5, -0.5), xlabel="col", ylabel="row", aspect="equal")
    return [Patch(color=HELL_COLOR, label="hell cell"), Patch(color=GOAL_COLOR, label="goal"),
            Patch(facecolor="none", edgecolor=START_COLOR, lw=2, label="start")]


def _draw_paths(ax: Any, graph: MemoryGraph, paths: list[np.ndarray], shown: np.ndarray, pos: np.ndarray,
                width: float) -> list[Any]:
    """The edges of the reconstructed paths as arrows (an edge shared by several paths is drawn once)."""
    if not paths:
        return []
    edges = np.concatenate([np.asarray(p, dtype=np.int64) for p in paths])
    edges = edges[(edges >= 0) & (edges < graph.edge_capacity)]
    edges = edges[graph.edge_alive[edges]]
    src, dst = graph.edge_src[edges], graph.edge_dst[edges]
    keep = shown[src] & shown[dst] & (src != dst)
    pairs = np.unique(np.stack([src[keep], dst[keep]], 1), axis=0)
    start, delta = pos[pairs[:, 0]], pos[pairs[:, 1]] - pos[pairs[:, 0]]
    ax.quiver(*(start + 0.2 * delta).T, *(0.6 * delta).T, angles="xy", scale_units="xy", scale=1,
              color=PATH_COLOR, width=width, headwidth=3.5, headlength=4, alpha=0.9, zorder=3)
    return [Line2D([], [], color=PATH_COLOR, lw=2, label=f"reconstructed path edge ({len(paths)} paths)")]
