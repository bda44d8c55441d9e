"""Note 002's press-duration wrapper on a scripted frame-level env: which buttons are held on which frames, and
when the agent gets control back (hand-worked sequences)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from gbmr.core.errors import GbmrError
from gbmr.envs.press_duration import FPS, NES_BUTTONS, PressDuration, frame_counts
from gbmr.envs.registry import EPISODE_METRICS

UP, DOWN, LEFT, RIGHT, A, B, NOOP = range(7)
MASK = dict(NES_BUTTONS)


class FrameLog(gym.Env):
    """A frame-level 'console': records the controller byte of every frame; observation = frames so far,
    reward 1 a frame, the episode ends after ``end`` frames."""

    observation_space = gym.spaces.Box(0, 10_000, (1,), np.int64)
    action_space = gym.spaces.Discrete(256)

    def __init__(self, end: int = 10_000) -> None:
        self.end = end
        self.pressed: list[int] = []

    def reset(self, *, seed=None, options=None):
        self.pressed = []
        return np.array([0]), {}

    def step(self, action):
        self.pressed.append(int(action))
        return np.array([len(self.pressed)]), 1.0, len(self.pressed) >= self.end, False, {}


def values(**seconds_fraction: float) -> np.ndarray:
    """Agent values for the sigmoid squash: each named button at ``u`` of the maximum, the rest released
    (u = (a + 1) / 2, so a = 2u - 1)."""
    a = -np.ones(7)
    for name, u in seconds_fraction.items():
        a[[n for n, _ in NES_BUTTONS].index(name)] = 2 * u - 1
    return a


def wrapper(env: gym.Env, max_frames: int = 10, min_frames: int = 2, **kwargs) -> PressDuration:
    return PressDuration(env, max_seconds=max_frames / FPS, min_frames=min_frames, **kwargs)


def test_frame_counts_round_at_60_fps() -> None:
    assert frame_counts(np.array([-1.0, 0.0, 1.0, 0.05]), 30, "sigmoid").tolist() == [0, 15, 30, 16]
    assert frame_counts(np.array([-1.0, -0.5, 0.5, 3.0]), 30, "tanh").tolist() == [-30, -15, 15, 30]  # clipped


def test_buttons_held_until_the_shortest_runs_out() -> None:
    game = FrameLog()
    env = wrapper(game)
    env.reset()
    # right 5 frames, A 2 frames: both held 2 frames, then A runs out and the agent acts
    obs, reward, *_, info = env.step(values(right=0.5, A=0.2))
    assert game.pressed == [MASK["right"] | MASK["A"]] * 2
    assert obs.tolist() == [2] and reward == 2.0 and info["frames"] == 2
    assert info["remaining"].tolist() == [0, 0, 0, 3, 0, 0, 0]
    # nothing new: right keeps its 3 frames
    env.step(values())
    assert game.pressed[2:] == [MASK["right"]] * 3
    # nothing held: wait the minimum of 2 frames with the controller released
    env.step(values())
    assert game.pressed[5:] == [0, 0]
    # noop is a timer: 4 frames, while right (10) stays held afterwards
    *_, info = env.step(values(noop=0.4, right=1.0))
    assert game.pressed[7:] == [MASK["right"]] * 4 and info["remaining"][RIGHT] == 6
    metrics = info[EPISODE_METRICS]
    assert metrics["decision_frames"] == pytest.approx(11 / 4)
    assert metrics["held_right"] == pytest.approx(9 / 4) and metrics["held_A"] == pytest.approx(2 / 4)


def test_minimum_frames_per_decision() -> None:
    """B for 1 frame and right for 5 with N = 3: B is released after its frame, control returns at frame 3."""
    game = FrameLog()
    env = wrapper(game, min_frames=3)
    env.reset()
    *_, info = env.step(values(B=0.1, right=0.5))
    assert game.pressed == [MASK["right"] | MASK["B"], MASK["right"], MASK["right"]]
    assert info["remaining"][RIGHT] == 2 and info["frames"] == 3


def test_new_values_add_to_held_buttons_up_to_the_maximum() -> None:
    game = FrameLog()
    env = wrapper(game, max_frames=10, min_frames=1)
    env.reset()
    env.step(values(right=1.0, A=0.1))  # right 10, A 1: one frame
    *_, info = env.step(values(right=0.5, left=0.2))  # right 9 + 5 capped at 10, left 2
    assert info["remaining"][RIGHT] == 8 and game.pressed[1:] == [MASK["right"] | MASK["left"]] * 2


def test_negative_values_cancel_with_tanh() -> None:
    game = FrameLog()
    env = wrapper(game, min_frames=1, squash="tanh", cancel=True)
    env.reset()
    a = np.full(7, -1.0)
    a[[RIGHT, A]] = [0.8, 0.1]  # right 8, A 1
    env.step(a)
    a = np.zeros(7)
    a[[RIGHT, LEFT]] = [-0.5, 0.3]  # right 7 - 5 = 2, left 3 (and the zeros press nothing)
    *_, info = env.step(a)
    assert game.pressed[1:] == [MASK["right"] | MASK["left"]] * 2 and info["remaining"][LEFT] == 1
    # without cancel a negative value presses nothing and takes nothing off
    game2 = FrameLog()
    env2 = wrapper(game2, min_frames=1, squash="tanh")
    env2.reset()
    b = np.full(7, -1.0)
    b[[RIGHT, A]] = [0.8, 0.1]
    env2.step(b)
    b[[RIGHT, A]] = [-0.5, -1.0]
    b[NOOP] = 0.3
    *_, info = env2.step(b)
    assert game2.pressed[1:] == [MASK["right"]] * 3 and info["remaining"][RIGHT] == 4


def test_episode_end_stops_the_decision_and_reset_clears() -> None:
    game = FrameLog(end=3)
    env = wrapper(game)
    env.reset()
    _, reward, terminated, _, info = env.step(values(right=1.0, noop=0.9))
    assert terminated and reward == 3.0 and info["frames"] == 3 and len(game.pressed) == 3
    env.reset()
    assert env.remaining.sum() == 0
    env.step(values(A=0.2))
    assert game.pressed == [MASK["A"]] * 2


def test_bad_settings() -> None:
    with pytest.raises(GbmrError, match="squash"):
        PressDuration(FrameLog(), squash="relu")
    with pytest.raises(GbmrError, match="tanh"):
        PressDuration(FrameLog(), squash="sigmoid", cancel=True)
    with pytest.raises(GbmrError, match="min_frames"):
        PressDuration(FrameLog(), min_frames=0)
