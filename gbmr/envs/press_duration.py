"""Research note 002's press-duration action space, as a wrapper over any frame-level button env.

A human holds a pad's buttons for a while; the game sees that as the number of frames each button is down. The
agent gives one value per button (Box(-1, 1), one entry per name in ``buttons``), which becomes a frame count at
60 frames per second, rounded: ``round(u * max_frames)``. The wrapper keeps a per-button array of remaining
frames, adds the new counts to it (capped at ``max_frames``), and advances the frame-level env one frame at a time
holding every button whose count is > 0, decrementing them, until the smallest positive count reaches 0 and at
least ``min_frames`` frames have passed (the note's N, the discrete sets' frame skip). Then the agent acts again,
with the other buttons still held for what remains of their counts. With nothing held it waits ``min_frames``
frames. The ``noop`` button presses nothing: its count only says how long to wait before the next decision.

``squash`` maps the agent's value ``a`` in [-1, 1] to ``u``:
- ``sigmoid``: ``u = (a + 1) / 2`` in [0, 1]. If ``a = tanh(x)`` (a squashed actor), this is exactly
  ``sigmoid(2x)``: the note's sigmoid bound, without squashing twice.
- ``tanh``: ``u = a`` in [-1, 1]; a negative ``u`` presses nothing, or, with ``cancel``, takes
  ``round(|u| * max_frames)`` frames off the button's remaining count (the note's "let it subtract": give up a
  planned press half way).

The frame-level env takes an int bitmask of held buttons (the NES controller byte); rewards are summed over the
frames, the observation is the last frame's, and the decision stops early where the episode ends.

Logged: the frames per decision and each button's frames down per decision, as episode means
(``info["episode_metrics"]``: ``decision_frames``, ``held_<button>``) and as each decision's own values
(``info["decision_metrics"]``, same names), whose spread over an evaluation the runner logs (median and 90th
percentile in eval.csv, TensorBoard histograms).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box

from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.envs.registry import DECISION_METRICS, EPISODE_METRICS, merge_episode_metrics

FPS = 60  # NES frames per second (60.0988 on NTSC hardware; the note rounds to 60)
SQUASHES = ("sigmoid", "tanh")
# Bits of the NES controller byte (cynes / nes-py): right 0, left 1, down 2, up 3, start 4, select 5, B 6, A 7
NES_BUTTONS: tuple[tuple[str, int], ...] = (
    ("up", 1 << 3), ("down", 1 << 2), ("left", 1 << 1), ("right", 1 << 0), ("A", 1 << 7), ("B", 1 << 6), ("noop", 0),
)


def frame_counts(values: np.ndarray, max_frames: int, squash: str) -> np.ndarray:
    """Signed frame counts of the agent's values (positive: hold that much longer; negative: only with tanh)."""
    a = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    u = (a + 1.0) / 2.0 if squash == "sigmoid" else a
    return np.rint(u * max_frames).astype(np.int64)


class PressDuration(gym.Wrapper):
    """Continuous press durations over a frame-level env whose action is a bitmask of held buttons."""

    def __init__(self, env: gym.Env, buttons: tuple[tuple[str, int], ...] = NES_BUTTONS, *, max_seconds: float = 0.5,
                 min_frames: int = 4, squash: str = "sigmoid", cancel: bool = False) -> None:
        super().__init__(env)
        if squash not in SQUASHES:
            raise unknown_choice("press-duration squash", squash, SQUASHES)
        if cancel and squash != "tanh":
            raise GbmrError("press_cancel needs press_squash='tanh' (sigmoid values are never negative)")
        self.max_frames = int(round(max_seconds * FPS))
        if self.max_frames < 1 or min_frames < 1:
            raise GbmrError(f"press_max_seconds must give at least one frame at {FPS} FPS and press_min_frames must "
                            f"be >= 1, got {max_seconds} s and {min_frames}")
        self.names = tuple(name for name, _ in buttons)
        self.masks = np.array([mask for _, mask in buttons], dtype=np.int64)
        self.min_frames = int(min_frames)
        self.squash = squash
        self.cancel = cancel
        self.action_space = Box(-1.0, 1.0, shape=(len(buttons),), dtype=np.float32)
        self.remaining = np.zeros(len(buttons), dtype=np.int64)
        self.episode_metric_names = ("decision_frames", *(f"held_{name}" for name in self.names))
        self.decision_metric_names = self.episode_metric_names  # each decision's own, whose means those are
        self._decisions = 0
        self._frames = 0
        self._held = np.zeros(len(buttons), dtype=np.int64)  # frames each button was down this episode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.remaining[:] = 0
        self._decisions, self._frames = 0, 0
        self._held[:] = 0
        return self.env.reset(seed=seed, options=options)

    def press(self, values: np.ndarray) -> None:
        """Fold one decision's values into the remaining-frames array."""
        counts = frame_counts(values, self.max_frames, self.squash)
        if self.cancel:
            self.remaining = np.clip(self.remaining + counts, 0, self.max_frames)
        else:
            self.remaining = np.minimum(self.remaining + np.maximum(counts, 0), self.max_frames)

    def step(self, action: np.ndarray):
        self.press(action)
        total, frames, ran_out = 0.0, 0, False
        held_frames = np.zeros(len(self.names), dtype=np.int64)  # frames each button is down in this decision
        while True:
            held = self.remaining > 0
            obs, reward, terminated, truncated, info = self.env.step(int(np.bitwise_or.reduce(self.masks[held]))
                                                                     if held.any() else 0)
            total += float(reward)
            frames += 1
            held_frames += held
            self.remaining[held] -= 1
            # control returns once a held button has run out (or nothing was held) and N frames have passed
            ran_out = ran_out or not held.any() or bool(np.any(held & (self.remaining == 0)))
            if terminated or truncated or (frames >= self.min_frames and ran_out):
                break
        self._decisions += 1
        self._frames += frames
        self._held += held_frames
        info = {**info, "frames": frames, "remaining": self.remaining.copy(),
                EPISODE_METRICS: merge_episode_metrics(info, self._stats(self._frames, self._held, self._decisions)),
                DECISION_METRICS: self._stats(frames, held_frames, 1)}
        return obs, total, terminated, truncated, info

    def _stats(self, frames: int, held: np.ndarray, decisions: int) -> dict[str, float]:
        """Frames per decision and each button's frames down per decision, over ``decisions`` decisions."""
        return {"decision_frames": frames / decisions,
                **{f"held_{name}": float(h) / decisions for name, h in zip(self.names, held, strict=True)}}
