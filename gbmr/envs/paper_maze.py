"""The GBMR paper's grid maze (its first test), as a plain gymnasium Env.

10x10 grid, actions 0 up, 1 down, 2 left, 3 right; start (0, 0), goal (9, 9): +200 and termination.
12 "hell" cells, placed at random from ``layout_seed`` but never on the start or the goal and always leaving
a path from start to goal: entering one gives -1 and bounces the agent back to where it was. A move off the
grid leaves the agent in place. Every other step gives 0; episodes are truncated after 200 steps.
Observation: the agent's ``(row, col)`` as int64 of shape (2,), an exact key for tabular agents.

``GridMaze-PaperDynamic-v0`` moves the hell cells every ``change_every`` episodes; layout ``i`` is drawn from
``(layout_seed, i)`` only, so the static maze is layout 0 of the dynamic one. For drawing, the unwrapped env
exposes ``size``, ``start``, ``goal``, ``hell_cells`` ((12, 2) int64, row-major sorted) and ``agent_pos``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete
from scipy import ndimage

from gbmr.envs.registry import LayoutSchedule, register_once

SIZE = 10
NUM_HELL = 12
MAX_STEPS = 200
GOAL_REWARD = 200.0
HELL_REWARD = -1.0
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)  # up, down, left, right

OPTIONS: dict[str, dict[str, object]] = {
    "GridMaze-Paper-v0": {"layout_seed": 0},
    "GridMaze-PaperDynamic-v0": {"layout_seed": 0, "change_every": 25},
}
IDS = tuple(OPTIONS)


def hell_layout(
    layout_seed: int, layout_index: int, size: int = SIZE, num_hell: int = NUM_HELL
) -> np.ndarray:
    """(num_hell, 2) hell cells drawn from ``(layout_seed, layout_index)``, redrawn until the goal is
    reachable from the start (4-connected free cells)."""
    rng = np.random.default_rng([layout_seed, layout_index])
    free = np.arange(1, size * size - 1)  # every cell but the start (first) and the goal (last)
    while True:
        mask = np.zeros(size * size, dtype=bool)
        mask[rng.choice(free, num_hell, replace=False)] = True
        labels, _ = ndimage.label(~mask.reshape(size, size))  # default structure: 4-connectivity
        if labels[0, 0] == labels[-1, -1]:
            return np.argwhere(mask.reshape(size, size))


class PaperMazeEnv(gym.Env, LayoutSchedule):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, layout_seed: int = 0, change_every: int = 0, render_mode: str | None = None):
        self.size = SIZE
        self.start = np.zeros(2, dtype=np.int64)
        self.goal = np.full(2, SIZE - 1, dtype=np.int64)
        self.layout_seed = layout_seed
        self.change_every = change_every
        self.render_mode = render_mode
        self.observation_space = Box(0, SIZE - 1, shape=(2,), dtype=np.int64)
        self.action_space = Discrete(len(MOVES))
        self._layout_index = -1
        self._set_layout(0)
        self.agent_pos = self.start.copy()
        self._steps = 0

    def _set_layout(self, index: int) -> None:
        if index != self._layout_index:
            self._layout_index = index
            self.hell_cells = hell_layout(self.layout_seed, index)
            self.hell_mask = np.zeros((SIZE, SIZE), dtype=bool)
            self.hell_mask[tuple(self.hell_cells.T)] = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._set_layout(self._next_layout_index())
        self.agent_pos = self.start.copy()
        self._steps = 0
        return self.agent_pos.copy(), {}

    def step(self, action: int):
        self._steps += 1
        target = self.agent_pos + MOVES[action]
        reward = 0.0
        if np.all((target >= 0) & (target < SIZE)):
            if self.hell_mask[target[0], target[1]]:
                reward = HELL_REWARD  # bounced back: the agent stays where it was
            else:
                self.agent_pos = target
        terminated = bool(np.array_equal(self.agent_pos, self.goal))
        if terminated:
            reward = GOAL_REWARD
        truncated = not terminated and self._steps >= MAX_STEPS
        return self.agent_pos.copy(), reward, terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        """RGB picture, 16 pixels per cell: white floor, red hell, gold goal, blue agent."""
        if self.render_mode != "rgb_array":
            return None
        image = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
        image[self.hell_mask] = (200, 40, 40)
        image[tuple(self.goal)] = (240, 200, 0)
        image[tuple(self.agent_pos)] = (40, 80, 220)
        return image.repeat(16, axis=0).repeat(16, axis=1)


register_once("GridMaze-Paper-v0", "gbmr.envs.paper_maze:PaperMazeEnv")
register_once("GridMaze-PaperDynamic-v0", "gbmr.envs.paper_maze:PaperMazeEnv", change_every=25)


def make(env_id: str, *, render_mode: str | None, **options: Any) -> gym.Env:
    return gym.make(env_id, render_mode=render_mode, **options)
