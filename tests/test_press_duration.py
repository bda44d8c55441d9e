"""Note 002's press-duration wrapper on a scripted frame-level env: which buttons are held on which frames, when
the agent gets control back, and the distribution of press durations an evaluation logs (hand-worked
sequences)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from gbmr.core.errors import GbmrError
from gbmr.envs.press_duration import FPS, NES_BUTTONS, PressDuration, frame_counts
from gbmr.envs.registry import DECISION_METRICS, EPISODE_METRICS, decision_metric_names
from gbmr.runners.sync import decision_percentiles, evaluate_episodes, percentile_columns

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
    # this decision alone: 4 frames, right and noop down all of them
    assert info[DECISION_METRICS] == {"decision_frames": 4.0, "held_up": 0.0, "held_down": 0.0, "held_left": 0.0,
                                      "held_right": 4.0, "held_A": 0.0, "held_B": 0.0, "held_noop": 4.0}


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


class Script:
    """An agent that plays a fixed list of actions, one per step, across episodes."""

    def __init__(self, actions: list[np.ndarray]) -> None:
        self.actions = list(actions)

    def begin_evaluation_episode(self) -> None:
        pass

    def act(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        return self.actions.pop(0)[None]


def test_evaluation_pools_the_frames_held_per_decision_into_percentiles() -> None:
    """Two episodes of an 11-frame game. The first: right + A 2 frames, right 3, nothing 2, right + noop 4 (the
    sequence above); the second: right 10 frames, then 1 frame released (the game ends). Frames right is held in
    the six decisions: 2, 3, 0, 4, 10, 0; sorted 0 0 2 3 4 10, so the median is (2 + 3) / 2 = 2.5 and the 90th
    percentile sits at rank 0.9 x 5 = 4.5: 4 + 0.5 x (10 - 4) = 7 (the mean of the episodes' own percentiles,
    (2.5 + 5) / 2 and (3.7 + 9) / 2, would be 3.75 and 6.35)."""
    env = wrapper(FrameLog(end=11))
    script = [values(right=0.5, A=0.2), values(), values(), values(noop=0.4, right=1.0), values(right=1.0), values()]
    result = evaluate_episodes(Script(script), env, episodes=2, base_seed=0)
    assert result.decisions["held_right"].tolist() == [2, 3, 0, 4, 10, 0]
    assert result.decisions["decision_frames"].tolist() == [2, 3, 2, 4, 10, 1]
    names = decision_metric_names(env)
    assert names == ("decision_frames", "held_up", "held_down", "held_left", "held_right", "held_A", "held_B",
                     "held_noop")
    assert percentile_columns(names)[:4] == ("decision_frames_p50", "decision_frames_p90", "held_up_p50",
                                             "held_up_p90")
    percentiles = decision_percentiles(result.decisions, names)
    assert list(percentiles) == list(percentile_columns(names))
    assert percentiles["held_right_p50"] == pytest.approx(2.5) and percentiles["held_right_p90"] == pytest.approx(7.0)
    # A: 2 0 0 0 0 0 -> median 0, 90th percentile 0.5 x 2 = 1; frames per decision: 1 2 2 3 4 10 -> 2.5 and 7
    assert percentiles["held_A_p50"] == 0.0 and percentiles["held_A_p90"] == pytest.approx(1.0)
    assert percentiles["decision_frames_p50"] == pytest.approx(2.5)
    assert percentiles["decision_frames_p90"] == pytest.approx(7.0)
    assert percentiles["held_up_p90"] == 0.0


def test_bad_settings() -> None:
    with pytest.raises(GbmrError, match="squash"):
        PressDuration(FrameLog(), squash="relu")
    with pytest.raises(GbmrError, match="tanh"):
        PressDuration(FrameLog(), squash="sigmoid", cancel=True)
    with pytest.raises(GbmrError, match="min_frames"):
        PressDuration(FrameLog(), min_frames=0)
