"""Super Mario Bros (NES) through ``gymnasium-mariobros`` (the cynes emulator; ROMs ship in the wheel), with
research note 002's reward shaping and its press-duration action space.

Ids: ``SuperMarioBros-<world>-<stage>-v<r>`` (one stage: the episode ends at death or the flag/axe) and
``SuperMarioBros-v<r>`` (the whole game: it ends at game over), ``r`` the ROM: 0 vanilla, 1 downsample,
2 pixel, 3 rectangle.

Pipeline: the frame-level game (the action is the NES controller byte, one call one frame at 60 FPS) ->
random no-op frames at reset (``noop_max``, drawn from the reset seed, so evaluation episodes differ) ->
``RewardShaping`` (named terms, below) -> the action layer: ``DiscreteButtons`` (``actions=simple|complex|
right_only``: a button combination held for ``frame_skip`` frames) or ``PressDuration`` (``actions=
press_duration``: one value in [-1, 1] per button up, down, left, right, A, B, noop; see press_duration.py) ->
greyscale, resize to ``screen_size`` (0 keeps 240x256) -> ``FrameStackObservation`` -> an episode cap of
``max_episode_steps`` decisions (0: none; a stage's clock ends a stalled episode after 400 game seconds).
Observation ``(frame_stack, 84, 84)`` uint8 by default (``(3 * frame_stack, ...)`` in colour).

Reward: the sum of the shaping terms, each with its weight (``reward_<term>``, 0 switches it off):
- ``progress``: the x delta of a frame (jumps beyond 5 pixels, i.e. respawns and area changes, count 0);
- ``score``: the in-game score delta (weight 0.01: the note's score / 100);
- ``time``: the in-game clock's ticks, negative;
- ``death``: ``-reward_death`` when Mario dies, and, with ``death_forfeits_score``, minus every score reward
  the episode (the life, in the whole game) has earned so far: a death loses the score;
- ``flag``: ``+reward_flag`` when Mario reaches a flag or an axe.
The defaults keep gym-super-mario-bros' own reward (x delta + clock - 25 at death) as the progress, time and
death terms. Each term's episode sum, the furthest x position and the flags reached are in
``info["episode_metrics"]``, so they reach metrics.csv, eval.csv and TensorBoard (registry.episode_metric_names).

The emulator is deterministic: an episode is a function of its reset seed (the no-ops) and its actions, which
is what the runner's exact resume needs.
"""

from __future__ import annotations

import io
import subprocess
import sys
from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import (
    FrameStackObservation,
    GrayscaleObservation,
    ReshapeObservation,
    ResizeObservation,
    TimeLimit,
)

from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.envs.press_duration import FPS, NES_BUTTONS, PressDuration
from gbmr.envs.registry import EPISODE_METRICS, ChannelFirst, merge_episode_metrics

ROM_MODES = ("vanilla", "downsample", "pixel", "rectangle")  # the -v0 .. -v3 suffixes
STAGE_IDS = tuple(f"SuperMarioBros-{w}-{s}-v{r}" for r in range(4) for w in range(1, 9) for s in range(1, 5))
GAME_IDS = tuple(f"SuperMarioBros-v{r}" for r in range(4))
# gym-super-mario-bros' button sets (SIMPLE_MOVEMENT, COMPLEX_MOVEMENT, RIGHT_ONLY)
ACTION_SETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "right_only": (("noop",), ("right",), ("right", "A"), ("right", "B"), ("right", "A", "B")),
    "simple": (("noop",), ("right",), ("right", "A"), ("right", "B"), ("right", "A", "B"), ("A",), ("left",)),
    "complex": (("noop",), ("right",), ("right", "A"), ("right", "B"), ("right", "A", "B"), ("A",), ("left",),
                ("left", "A"), ("left", "B"), ("left", "A", "B"), ("down",), ("up",)),
}
ACTIONS = (*ACTION_SETS, "press_duration")
SHAPING_TERMS = ("progress", "score", "time", "death", "flag")
MAX_X_DELTA = 5  # pixels a frame; more is a respawn or an area change (gym-super-mario-bros' bound)
OPTIONS: dict[str, object] = {
    "actions": "simple",
    "frame_skip": 4,
    "grayscale": True,
    "screen_size": 84,
    "frame_stack": 4,
    "max_episode_steps": 0,
    "noop_max": 30,
    "reward_progress": 1.0,
    "reward_score": 0.01,
    "reward_time": 1.0,
    "reward_death": 25.0,
    "reward_flag": 50.0,
    "death_forfeits_score": True,
    "press_max_seconds": 0.5,
    "press_min_frames": 4,
    "press_squash": "sigmoid",
    "press_cancel": False,
}


def env_ids() -> tuple[str, ...]:
    return GAME_IDS + STAGE_IDS


def options(env_id: str) -> dict[str, object]:
    return OPTIONS


# ---------------------------------------------------------------------------------------------- reward shaping
def shaped_terms(prev: dict[str, Any], info: dict[str, Any], weights: dict[str, float], episode_score: float,
                 forfeit_score: bool = True) -> dict[str, float]:
    """One frame's shaping terms from the game's info before and after it (keys x_pos, score, time, dead,
    flag_get). ``episode_score`` is the score reward earned so far in the episode (before this frame), which a
    death takes back when ``forfeit_score``."""
    dx = int(info["x_pos"]) - int(prev["x_pos"])
    terms = {
        "progress": weights["progress"] * dx if abs(dx) <= MAX_X_DELTA else 0.0,
        "score": weights["score"] * max(int(info["score"]) - int(prev["score"]), 0),  # a game over zeroes it
        "time": weights["time"] * min(int(info["time"]) - int(prev["time"]), 0),  # a new stage refills it
        "death": 0.0,
        "flag": weights["flag"] if info["flag_get"] and not prev["flag_get"] else 0.0,
    }
    if info["dead"] and not prev["dead"]:
        terms["death"] = -weights["death"] - ((episode_score + terms["score"]) if forfeit_score else 0.0)
    return {name: float(value) for name, value in terms.items()}


class RewardShaping(gym.Wrapper):
    """Replaces the frame-level game's reward by the sum of the weighted terms; keeps the episode's sums."""

    def __init__(self, env: gym.Env, weights: dict[str, float], forfeit_score: bool = True) -> None:
        super().__init__(env)
        self.weights = {name: float(weights[name]) for name in SHAPING_TERMS}
        self.forfeit_score = forfeit_score
        self.episode_metric_names = (*(f"reward_{name}" for name in SHAPING_TERMS), "x_pos", "flag")
        self._prev: dict[str, Any] = {}
        self._sums = dict.fromkeys(SHAPING_TERMS, 0.0)
        self._score_since_death = 0.0
        self._max_x = 0
        self._flags = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._prev = info
        self._sums = dict.fromkeys(SHAPING_TERMS, 0.0)
        self._score_since_death = 0.0
        self._max_x = int(info["x_pos"])
        self._flags = 0
        return obs, {**info, EPISODE_METRICS: self._metrics(info)}

    def step(self, action: Any):
        obs, _, terminated, truncated, info = self.env.step(action)
        terms = shaped_terms(self._prev, info, self.weights, self._score_since_death, self.forfeit_score)
        for name, value in terms.items():
            self._sums[name] += value
        self._score_since_death = 0.0 if terms["death"] else self._score_since_death + terms["score"]
        self._max_x = max(self._max_x, int(info["x_pos"]))
        self._flags += int(bool(info["flag_get"]) and not self._prev["flag_get"])
        self._prev = info
        return obs, sum(terms.values()), terminated, truncated, {**info, EPISODE_METRICS: self._metrics(info)}

    def _metrics(self, info: dict[str, Any]) -> dict[str, float]:
        return merge_episode_metrics(info, {**{f"reward_{name}": s for name, s in self._sums.items()},
                                            "x_pos": float(self._max_x), "flag": float(self._flags)})


# ---------------------------------------------------------------------------------------------- actions
def button_mask(combo: tuple[str, ...]) -> int:
    masks = dict(NES_BUTTONS)
    return int(np.bitwise_or.reduce([masks[b] for b in combo]))


class DiscreteButtons(gym.Wrapper):
    """A discrete set of button combinations, each held for ``frame_skip`` frames (rewards summed, stopping where
    the episode ends); the share of each combination in the episode goes to the episode metrics."""

    def __init__(self, env: gym.Env, combos: tuple[tuple[str, ...], ...], frame_skip: int) -> None:
        super().__init__(env)
        if frame_skip < 1:
            raise GbmrError(f"frame_skip must be at least 1, got {frame_skip}")
        self.masks = [button_mask(c) for c in combos]
        self.meanings = ["_".join(c) for c in combos]
        self.frame_skip = frame_skip
        self.action_space = gym.spaces.Discrete(len(combos))
        self.episode_metric_names = tuple(f"action_{m}" for m in self.meanings)
        self._counts = np.zeros(len(combos), dtype=np.int64)

    def get_action_meanings(self) -> list[str]:
        return list(self.meanings)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._counts[:] = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any):
        a = int(action)
        self._counts[a] += 1
        total = 0.0
        for _ in range(self.frame_skip):
            obs, reward, terminated, truncated, info = self.env.step(self.masks[a])
            total += float(reward)
            if terminated or truncated:
                break
        shares = self._counts / self._counts.sum()
        info = {**info, EPISODE_METRICS: merge_episode_metrics(info, dict(zip(self.episode_metric_names,
                                                                              map(float, shares), strict=True)))}
        return obs, total, terminated, truncated, info


class NoopReset(gym.Wrapper):
    """Up to ``noop_max`` released-controller frames after each reset, drawn from the reset seed."""

    def __init__(self, env: gym.Env, noop_max: int) -> None:
        super().__init__(env)
        self.noop_max = noop_max
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        for _ in range(int(self._rng.integers(0, self.noop_max + 1)) if self.noop_max > 0 else 0):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


# ---------------------------------------------------------------------------------------------- the game
class LiveRAM:
    """NES RAM read from and written to the emulator directly: gymnasium-mariobros copies all 2 KB into a
    numpy cache byte by byte after every frame (~1 ms, most of a step), though a step reads ~20 bytes."""

    def __init__(self, nes: Any) -> None:
        self._nes = nes

    def __getitem__(self, address: int | slice) -> Any:
        if isinstance(address, slice):
            return [self._nes[i] for i in range(*address.indices(0x800))]
        return self._nes[address]

    def __setitem__(self, address: int, value: int) -> None:
        self._nes[address] = int(value) & 0xFF


_START_STATES: dict[tuple, tuple[np.ndarray, int]] = {}  # (ROM mode, target) -> emulator state after the title
# Run in a fresh interpreter: the package's env pressing through the title screen, as the first NES of a process.
_START_SCRIPT = """
import sys
import numpy as np
from gymnasium_mariobros.smb_env import SuperMarioBrosEnv
rom, world, stage = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = SuperMarioBrosEnv(rom_mode=rom, target=(world, stage) if world else None)
clock = np.frombuffer(np.int64(env._time_last).tobytes(), np.uint8)
np.save(sys.stdout.buffer, np.concatenate([env._backup_data, clock]))
"""


def start_state(rom_mode: str, target: tuple[int, int] | None) -> tuple[np.ndarray, int]:
    """The emulator state a game starts its episodes from (after the title screen) and its clock then.

    Not taken in this process: the title-screen pass of cynes is not the same in every NES instance (seen here:
    the first two of a process reach the stage a frame apart from the later ones, the game clock one tick off),
    so it runs as the first NES of a fresh interpreter, which always ends in the same state. Every env of a ROM
    and stage then starts its episodes from it, in a training process as in its resumed one (~2 s, once per
    ROM and stage in a process)."""
    key = (rom_mode, target)
    if key not in _START_STATES:
        world, stage = target or (0, 0)
        out = subprocess.run([sys.executable, "-c", _START_SCRIPT, rom_mode, str(world), str(stage)],
                             capture_output=True, check=True).stdout
        data = np.load(io.BytesIO(out))
        _START_STATES[key] = (data[:-8].copy(), int(np.frombuffer(data[-8:].tobytes(), np.int64)[0]))
    return _START_STATES[key]


@cache
def game_class() -> type:
    """``SuperMarioBrosEnv`` reading RAM on demand, with a ``dead`` flag in its info (imported lazily: the
    package is optional)."""
    try:
        from gymnasium_mariobros.smb_env import SuperMarioBrosEnv
    except ImportError as e:
        raise GbmrError("Super Mario Bros needs gymnasium-mariobros (pip install -e '.[mario]', or "
                        f"scripts/setup.sh): {e}") from e

    class SuperMarioBrosFrames(SuperMarioBrosEnv):
        @property
        def ram(self) -> LiveRAM:
            live = self.__dict__.get("_live_ram")
            if live is None or live._nes is not self._nes:
                live = self.__dict__["_live_ram"] = LiveRAM(self._nes)
            return live

        def _frame_advance(self, action: int) -> None:
            self._nes.controller = int(action)
            frame = self._nes.step()
            if frame is not None:
                self._screen = frame  # a read-only view of the frame buffer; step() and render() copy it

        def _restore(self) -> None:
            if self._backup_data is not None:
                self._nes.load(self._backup_data)

        def _get_info(self) -> dict[str, Any]:
            return {**super()._get_info(), "dead": bool(self._is_dying or self._is_dead)}

        def _skip_start_screen(self) -> None:
            """Load the one start state of this ROM and stage (see start_state) instead of pressing through."""
            state, self._time_last = start_state(self._rom_mode, self._target)
            self._nes.load(state)

        def __init__(self, rom_mode: str = "vanilla", target: tuple[int, int] | None = None,
                     render_mode: str | None = None) -> None:
            self._rom_mode, self._target = rom_mode, target
            super().__init__(rom_mode=rom_mode, target=target, render_mode=render_mode)

    return SuperMarioBrosFrames


def make_game(env_id: str, render_mode: str | None = None) -> gym.Env:
    """The frame-level game of ``env_id`` (Discrete(256): the controller byte)."""
    parts = env_id.split("-")  # SuperMarioBros-v0 or SuperMarioBros-1-1-v0
    rom = ROM_MODES[int(parts[-1][1:])]
    target = (int(parts[1]), int(parts[2])) if len(parts) == 4 else None
    return game_class()(rom_mode=rom, target=target, render_mode=render_mode)


def make(
    env_id: str,
    *,
    training: bool,
    render_mode: str | None,
    actions: str,
    frame_skip: int,
    grayscale: bool,
    screen_size: int,
    frame_stack: int,
    max_episode_steps: int,
    noop_max: int,
    reward_progress: float,
    reward_score: float,
    reward_time: float,
    reward_death: float,
    reward_flag: float,
    death_forfeits_score: bool,
    press_max_seconds: float,
    press_min_frames: int,
    press_squash: str,
    press_cancel: bool,
) -> gym.Env:
    if actions not in ACTIONS:
        raise unknown_choice("Mario action set", actions, ACTIONS)
    if frame_stack < 1 or screen_size < 0 or noop_max < 0 or max_episode_steps < 0:
        raise GbmrError("frame_stack must be >= 1 and screen_size, noop_max, max_episode_steps >= 0")
    env = NoopReset(make_game(env_id, render_mode), noop_max)
    weights = {"progress": reward_progress, "score": reward_score, "time": reward_time, "death": reward_death,
               "flag": reward_flag}
    env = shaping = RewardShaping(env, weights, death_forfeits_score)
    if actions == "press_duration":
        env = layer = PressDuration(env, NES_BUTTONS, max_seconds=press_max_seconds, min_frames=press_min_frames,
                                    squash=press_squash, cancel=press_cancel)
        decision_frames = press_min_frames
    else:
        env = layer = DiscreteButtons(env, ACTION_SETS[actions], frame_skip)
        decision_frames = frame_skip
    if grayscale:
        env = GrayscaleObservation(env, keep_dim=False)
    if screen_size:
        env = ResizeObservation(env, (screen_size, screen_size))
    if not grayscale:
        env = ChannelFirst(env, axes=(2, 0, 1))
    env = FrameStackObservation(env, stack_size=frame_stack)
    if not grayscale:  # (stack, 3, H, W) -> (3 * stack, H, W): a 2-d CNN's channels
        stack, channels, height, width = env.observation_space.shape
        env = ReshapeObservation(env, (stack * channels, height, width))
    if max_episode_steps:
        env = TimeLimit(env, max_episode_steps)
    env.episode_metric_names = shaping.episode_metric_names + layer.episode_metric_names
    env.metadata = {**env.metadata, "render_fps": FPS / decision_frames}  # videos show one frame per decision
    return env
