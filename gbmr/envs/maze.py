"""Grid mazes: fixed MiniGrid mazes of growing size, a MiniGrid maze whose walls change, and (delegated to
``paper_maze``) the GBMR paper's 10x10 maze with hell cells.

MiniGrid mazes (``GridMaze-S7-v0``, ``-S11-``, ``-S15-``, ``GridMaze-Dynamic-v0`` of size 11): perfect mazes
(one path between any two cells) carved by a depth-first search from a fixed seed; the agent starts in the
top-left cell facing east, the goal is in the bottom-right cell. Reward is MiniGrid's sparse one,
``1 - 0.9 * steps / max_steps`` on reaching the goal, 0 otherwise; ``max_steps = 4 * size**2``. The actions
are restricted to navigation: 0 turn left, 1 turn right, 2 forward.
Observation: MiniGrid's symbolic encoding (object, colour, state), channel-first uint8: ``(3, size, size)``
with ``fully_observed=True`` (default: a fixed maze seen whole is Markov, as value-based memories assume),
else the agent's ``(3, 7, 7)`` egocentric view. Rows are y, columns x.
``GridMaze-Dynamic-v0`` carves layout ``i = episode // change_every`` from ``(layout_seed, i)``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Discrete
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Goal, Wall
from minigrid.minigrid_env import MiniGridEnv
from minigrid.wrappers import FullyObsWrapper, ImgObsWrapper

from gbmr.core.errors import GbmrError
from gbmr.envs import paper_maze
from gbmr.envs.registry import ChannelFirst, LayoutSchedule, register_once

FIXED_SIZES = (7, 11, 15)
DYNAMIC_SIZE = 11
MISSION = "reach the goal"
NAVIGATION_ACTIONS = 3  # MiniGrid's actions 0 left, 1 right, 2 forward; pickup/drop/toggle/done are cut

OPTIONS: dict[str, dict[str, object]] = {
    **{f"GridMaze-S{size}-v0": {"fully_observed": True} for size in FIXED_SIZES},
    "GridMaze-Dynamic-v0": {"fully_observed": True, "change_every": 20, "layout_seed": 0},
}


def env_ids() -> tuple[str, ...]:
    return (*OPTIONS, *paper_maze.IDS)


def options(env_id: str) -> dict[str, object]:
    return paper_maze.OPTIONS[env_id] if env_id in paper_maze.OPTIONS else OPTIONS[env_id]


def carve_maze(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) bool wall map indexed [x, y] of a perfect maze (randomised depth-first search). Cells
    sit at odd coordinates; ``size`` must be odd so the outer wall closes the grid."""
    cells = (size - 1) // 2
    walls = np.ones((size, size), dtype=bool)
    visited = np.zeros((cells, cells), dtype=bool)
    visited[0, 0] = True
    walls[1, 1] = False
    stack = [(0, 0)]
    while stack:
        cx, cy = stack[-1]
        unvisited = [
            (cx + dx, cy + dy)
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
            if 0 <= cx + dx < cells and 0 <= cy + dy < cells and not visited[cx + dx, cy + dy]
        ]
        if not unvisited:
            stack.pop()
            continue
        nx, ny = unvisited[rng.integers(len(unvisited))]
        visited[nx, ny] = True
        walls[2 * nx + 1, 2 * ny + 1] = False
        walls[cx + nx + 1, cy + ny + 1] = False  # the wall between the two cells
        stack.append((nx, ny))
    return walls


class GridMazeEnv(MiniGridEnv, LayoutSchedule):
    """A MiniGrid maze whose walls are layout ``episode // change_every`` (always 0 if ``change_every=0``)."""

    def __init__(
        self, size: int, change_every: int = 0, layout_seed: int = 0, render_mode: str | None = None
    ):
        self.change_every = change_every
        self.layout_seed = layout_seed
        self._layout_index = -1
        self._set_layout(size, 0)
        super().__init__(
            mission_space=MissionSpace(mission_func=self._gen_mission),
            grid_size=size,
            max_steps=4 * size * size,
            see_through_walls=False,
            render_mode=render_mode,
        )
        self.action_space = Discrete(NAVIGATION_ACTIONS)

    @staticmethod
    def _gen_mission() -> str:
        return MISSION

    def _set_layout(self, size: int, index: int) -> None:
        if index != self._layout_index:
            self._layout_index = index
            self.walls = carve_maze(size, np.random.default_rng([self.layout_seed, index]))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._set_layout(self.width, self._next_layout_index())
        return super().reset(seed=seed, options=options)

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        for x, y in np.argwhere(self.walls):
            self.grid.set(int(x), int(y), Wall())
        self.put_obj(Goal(), width - 2, height - 2)
        self.agent_pos = (1, 1)
        self.agent_dir = 0
        self.mission = MISSION


for _size in FIXED_SIZES:
    register_once(f"GridMaze-S{_size}-v0", "gbmr.envs.maze:GridMazeEnv", size=_size)
register_once("GridMaze-Dynamic-v0", "gbmr.envs.maze:GridMazeEnv", size=DYNAMIC_SIZE, change_every=20)


def make(env_id: str, *, training: bool, render_mode: str | None, **opts: Any) -> gym.Env:
    if opts.get("change_every", 0) < 0:
        raise GbmrError(f"option 'change_every' of '{env_id}' must be >= 0, got {opts['change_every']}")
    if env_id in paper_maze.IDS:
        return paper_maze.make(env_id, render_mode=render_mode, **opts)
    fully_observed = opts.pop("fully_observed")
    env = gym.make(env_id, render_mode=render_mode, **opts)
    if fully_observed:
        env = FullyObsWrapper(env)
    return ChannelFirst(ImgObsWrapper(env), axes=(2, 1, 0))
