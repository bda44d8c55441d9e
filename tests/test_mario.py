"""The mario family: note 002's shaping terms on scripted infos, ids and options, the game itself (its RAM
shortcut against the package's env, the pipelines' spaces) and a short PPO run whose logs carry the terms.
Tests that need the emulator skip when gymnasium-mariobros is not installed (scripts/setup.sh installs it)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from run_helpers import assert_press_duration_eval_logs, needs_mario, read_rows

from gbmr.cli import main
from gbmr.core.errors import GbmrError
from gbmr.envs import env_family, env_options, make_env
from gbmr.envs.mario import ACTION_SETS, SHAPING_TERMS, DiscreteButtons, RewardShaping, shaped_terms
from gbmr.envs.registry import EPISODE_METRICS, episode_metric_names

WEIGHTS = {"progress": 1.0, "score": 0.01, "time": 1.0, "death": 25.0, "flag": 50.0}


def info(x: int = 40, score: int = 0, time: int = 400, dead: bool = False, flag: bool = False) -> dict:
    return {"x_pos": x, "score": score, "time": time, "dead": dead, "flag_get": flag}


# ---------------------------------------------------------------------------------------------- shaping
def test_progress_is_the_x_delta_without_respawn_jumps() -> None:
    assert shaped_terms(info(x=40), info(x=43), WEIGHTS, 0.0)["progress"] == 3.0
    assert shaped_terms(info(x=43), info(x=40), {**WEIGHTS, "progress": 2.0}, 0.0)["progress"] == -6.0
    assert shaped_terms(info(x=900), info(x=40), WEIGHTS, 0.0)["progress"] == 0.0  # respawn / area change


def test_score_delta_scaled_by_one_hundred() -> None:
    assert shaped_terms(info(score=100), info(score=300), WEIGHTS, 0.0)["score"] == 2.0
    assert shaped_terms(info(score=300), info(score=0), WEIGHTS, 0.0)["score"] == 0.0  # a game over zeroes it


def test_time_penalty_counts_clock_ticks() -> None:
    assert shaped_terms(info(time=400), info(time=399), WEIGHTS, 0.0)["time"] == -1.0
    assert shaped_terms(info(time=400), info(time=400), WEIGHTS, 0.0)["time"] == 0.0
    assert shaped_terms(info(time=3), info(time=400), WEIGHTS, 0.0)["time"] == 0.0  # the next stage refills it


def test_death_penalty_forfeits_the_episode_score() -> None:
    # 5.0 of score reward earned so far plus 1.0 on the dying frame: all taken back, and 25
    terms = shaped_terms(info(score=500), info(score=600, dead=True), WEIGHTS, 5.0)
    assert terms["score"] == 1.0 and terms["death"] == -31.0
    assert sum(terms.values()) == -30.0  # the frame's score cancels: the episode keeps none of its score
    assert shaped_terms(info(), info(dead=True), WEIGHTS, 5.0, forfeit_score=False)["death"] == -25.0
    assert shaped_terms(info(dead=True), info(dead=True), WEIGHTS, 5.0)["death"] == 0.0  # once per death


def test_flag_bonus_once() -> None:
    assert shaped_terms(info(), info(flag=True), WEIGHTS, 0.0)["flag"] == 50.0
    assert shaped_terms(info(flag=True), info(flag=True), WEIGHTS, 0.0)["flag"] == 0.0
    assert shaped_terms(info(), info(flag=True), {**WEIGHTS, "flag": 0.0}, 0.0)["flag"] == 0.0


class ScriptedGame(gym.Env):
    """Plays back a list of infos, one per frame."""

    observation_space = gym.spaces.Box(0, 1, (1,))
    action_space = gym.spaces.Discrete(256)

    def __init__(self, infos: list[dict]) -> None:
        self.infos = infos

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1), self.infos[0]

    def step(self, action):
        self.t += 1
        return np.zeros(1), 0.0, self.t == len(self.infos) - 1, False, self.infos[self.t]


def test_shaping_wrapper_sums_terms_and_forfeits_per_life() -> None:
    """Whole-game style: score, a death (forfeits 3.0 = 300 points), a new life scores again, then the flag."""
    script = [info(x=40), info(x=42, score=300, time=399), info(x=43, score=300, time=399, dead=True),
              info(x=40, score=300, time=398), info(x=45, score=500, time=398), info(x=46, score=500, flag=True)]
    env = RewardShaping(ScriptedGame(script), WEIGHTS)
    env.reset()
    rewards = []
    for _ in range(len(script) - 1):
        _, reward, _, _, step_info = env.step(0)
        rewards.append(reward)
    m = step_info[EPISODE_METRICS]
    assert rewards == [2.0 + 3.0 - 1.0, 1.0 - 25.0 - 3.0, -3.0 - 1.0, 5.0 + 2.0, 1.0 + 50.0]
    assert m == {"reward_progress": 6.0, "reward_score": 5.0, "reward_time": -2.0, "reward_death": -28.0,
                 "reward_flag": 50.0, "x_pos": 46.0, "flag": 1.0}
    assert sum(m[f"reward_{t}"] for t in SHAPING_TERMS) == pytest.approx(sum(rewards))


# ---------------------------------------------------------------------------------------------- button sets
# gym-super-mario-bros' lists (gym_super_mario_bros/actions.py), written out by hand
RIGHT_ONLY = [["NOOP"], ["right"], ["right", "A"], ["right", "B"], ["right", "A", "B"]]
SIMPLE_MOVEMENT = [["NOOP"], ["right"], ["right", "A"], ["right", "B"], ["right", "A", "B"], ["A"], ["left"]]
COMPLEX_MOVEMENT = [["NOOP"], ["right"], ["right", "A"], ["right", "B"], ["right", "A", "B"], ["A"], ["left"],
                    ["left", "A"], ["left", "B"], ["left", "A", "B"], ["down"], ["up"]]


class Pad(gym.Env):
    """A frame-level console that records the controller byte of every frame."""

    observation_space = gym.spaces.Box(0, 1, (1,))
    action_space = gym.spaces.Discrete(256)

    def __init__(self) -> None:
        self.pressed: list[int] = []

    def reset(self, *, seed=None, options=None):
        return np.zeros(1), {}

    def step(self, action):
        self.pressed.append(int(action))
        return np.zeros(1), 0.0, False, False, {}


@pytest.mark.parametrize(("name", "combos", "bytes_"), [
    # the NES controller byte (cynes): right 1, left 2, down 4, up 8, B 64, A 128
    ("right_only", RIGHT_ONLY, [0, 1, 129, 65, 193]),
    ("simple", SIMPLE_MOVEMENT, [0, 1, 129, 65, 193, 128, 2]),
    ("complex", COMPLEX_MOVEMENT, [0, 1, 129, 65, 193, 128, 2, 130, 66, 194, 4, 8]),
])
def test_button_sets_are_gym_super_mario_bros_and_press_their_buttons(name: str, combos: list, bytes_: list) -> None:
    assert [list(c) for c in ACTION_SETS[name]] == [["noop" if b == "NOOP" else b for b in c] for c in combos]
    pad = Pad()
    env = DiscreteButtons(pad, ACTION_SETS[name], frame_skip=2)
    assert env.action_space == gym.spaces.Discrete(len(combos))
    for action in range(len(combos)):
        env.step(action)
    assert pad.pressed == [b for b in bytes_ for _ in range(2)]  # each held for frame_skip frames


# ---------------------------------------------------------------------------------------------- ids, options
def test_ids_and_options_are_validated() -> None:
    assert env_family("SuperMarioBros-1-1-v0") == "mario" and env_family("SuperMarioBros-v3") == "mario"
    assert env_family("SuperMarioBros-8-4-v1") == "mario"
    with pytest.raises(GbmrError, match="Did you mean 'SuperMarioBros-8-1-v0'"):
        env_family("SuperMarioBros-9-1-v0")
    assert env_options("SuperMarioBros-1-1-v0")["reward_score"] == 0.01
    with pytest.raises(GbmrError, match="reward_score"):
        make_env("SuperMarioBros-1-1-v0", reward_scor=0.1)
    with pytest.raises(GbmrError, match="must be int"):
        make_env("SuperMarioBros-1-1-v0", frame_skip="4")
    with pytest.raises(GbmrError, match="complex, press_duration, right_only, simple"):
        make_env("SuperMarioBros-1-1-v0", actions="left_only")


# ---------------------------------------------------------------------------------------------- the game
@needs_mario
def test_ram_shortcut_plays_the_same_game() -> None:
    """Our subclass reads RAM from the emulator on demand; the package's env copies all of it each frame. From the
    same start state: same frames, same infos, same rewards for 120 random frames."""
    from gymnasium_mariobros.smb_env import SuperMarioBrosEnv

    from gbmr.envs.mario import make_game, start_state

    ours, theirs = make_game("SuperMarioBros-1-1-v0"), SuperMarioBrosEnv(target=(1, 1))
    theirs._nes.load(start_state("vanilla", (1, 1))[0])
    theirs._time_last = start_state("vanilla", (1, 1))[1]
    theirs._backup()
    a, _ = ours.reset()
    b, _ = theirs.reset()
    assert np.array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(120):
        action = int(rng.choice([0, 1, 2, 0x81, 0x41, 0x80]))
        a, ra, ta, _, ia = ours.step(action)
        b, rb, tb, _, ib = theirs.step(action)
        assert np.array_equal(a, b) and ra == rb and ta == tb
        assert {k: v for k, v in ia.items() if k != "dead"} == ib
        if ta:
            break


def play_frames() -> np.ndarray:
    """A fixed 100-frame game of 1-1 from reset (every fourth pixel)."""
    from gbmr.envs.mario import make_game

    env = make_game("SuperMarioBros-1-1-v0")
    frames = [env.reset()[0]] + [env.step(0x81 if t % 9 == 0 else 1)[0] for t in range(100)]
    return np.stack(frames)[:, ::4, ::4]


@needs_mario
def test_every_process_plays_the_same_game() -> None:
    """cynes' title-screen pass differs between NES instances of a process (the clock a tick apart), so the start
    state comes from a fresh interpreter: here, after other NES instances were made, as in a new process (a
    resumed run)."""
    import io
    import subprocess
    import sys
    from pathlib import Path

    from gymnasium_mariobros.smb_env import SuperMarioBrosEnv

    SuperMarioBrosEnv(target=(1, 1)).close()
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import numpy as np; "
              "from test_mario import play_frames; np.save(sys.stdout.buffer, play_frames())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
    assert np.array_equal(play_frames(), np.load(io.BytesIO(out)))


@needs_mario
@pytest.mark.parametrize(("options", "shape", "space"), [
    ({}, (4, 84, 84), gym.spaces.Discrete(7)),
    ({"actions": "complex", "grayscale": False, "frame_stack": 2, "screen_size": 42}, (6, 42, 42),
     gym.spaces.Discrete(12)),
    ({"actions": "press_duration"}, (4, 84, 84), gym.spaces.Box(-1, 1, (7,))),
])
def test_pipelines(options: dict, shape: tuple, space: gym.Space) -> None:
    env = make_env("SuperMarioBros-1-1-v0", 0, **options)
    assert env.observation_space.shape == shape and env.action_space == space
    obs, _ = env.reset(seed=1)
    obs, reward, _, _, step_info = env.step(env.action_space.sample())
    assert obs.shape == shape and obs.dtype == np.uint8
    names = episode_metric_names(env)
    assert set(names) == set(step_info[EPISODE_METRICS]) and "x_pos" in names and "reward_death" in names


@needs_mario
def test_reset_seed_and_actions_fix_the_episode() -> None:
    """Exact resume replays actions after a seeded reset; the no-ops at reset come from that seed."""
    def play(seed: int) -> list:
        env = make_env("SuperMarioBros-1-1-v0", actions="right_only", noop_max=30)
        obs, _ = env.reset(seed=seed)
        frames = [obs]
        for action in [1, 2, 2, 4, 1, 3] * 3:
            frames.append(env.step(action)[0])
        return frames

    first, again, other = play(7), play(7), play(8)
    assert all(map(np.array_equal, first, again))
    assert not all(map(np.array_equal, first, other))


@needs_mario
@pytest.mark.slow
@pytest.mark.parametrize("actions", ["simple", "press_duration"])
def test_ppo_smoke_run_logs_the_terms(tmp_path, actions: str) -> None:
    """A short PPO run (mario preset, 2 envs: the vector env's infos) writes a complete folder; each episode's
    return is the sum of its logged shaping terms; ``gbmr eval --video`` records the game."""
    run = tmp_path / "run"
    assert main(["train", "--algo", "ppo", "--env", "SuperMarioBros-1-1-v0", "--total-steps", "128", "--num-envs", "2",
                 "--no-progress", "--run-dir", str(run), "--set", "n_steps=32", "--set", "num_minibatches=2",
                 "--set", "update_epochs=1", "--set", "eval_every=128", "--set", "eval_episodes=1",
                 "--set", "eval_max_steps=60", "--set", f"env_options.actions={actions}",
                 "--set", "env_options.max_episode_steps=20"]) == 0
    for name in ("config.yaml", "metrics.csv", "eval.csv", "learner.csv", "status.json", "checkpoints/latest.pt"):
        assert (run / name).exists(), name
    header, *rows = read_rows(run / "metrics.csv")
    terms = [f"reward_{t}" for t in SHAPING_TERMS]
    assert set(terms) | {"x_pos", "flag"} <= set(header) and rows
    for row in rows:
        values = dict(zip(header, row, strict=True))
        assert float(values["return"]) == pytest.approx(sum(float(values[t]) for t in terms), abs=1e-4)
        assert float(values["x_pos"]) >= 40
    eval_header, eval_row = read_rows(run / "eval.csv")
    assert set(terms) | {"x_pos", "flag"} <= set(eval_header)
    shares = [name for name in eval_header if name.startswith("held_" if actions == "press_duration" else "action_")
              and not name.endswith(("_p50", "_p90"))]
    assert len(shares) == 7
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {"train/x_pos", "train/reward_death", "eval/x_pos", "eval/reward_progress", "eval/flag"} <= set(
        events.Tags()["scalars"])
    assert ("eval/actions" if actions == "simple" else "eval/action_6") in events.Tags()["histograms"]
    if actions == "press_duration":
        assert_press_duration_eval_logs(run)
    if actions == "simple":  # action shares of the evaluation's decisions
        assert sum(float(eval_row[eval_header.index(n)]) for n in shares) == pytest.approx(1.0)
        assert main(["eval", str(run), "--episodes", "1", "--video"]) == 0
        assert list((run / "videos").glob("*.mp4"))


@needs_mario
def test_collector_resume_rebuilds_a_press_duration_episode() -> None:
    """The runner's exact resume on Mario: a new collector (new envs) loaded from the state mid-episode replays
    the actions, and the game, the held buttons and the running episode metrics go on exactly as before."""
    from gbmr.envs import make_vector_env
    from gbmr.runners.collector import Collector

    options = {"actions": "press_duration", "max_episode_steps": 30}
    first = Collector(make_vector_env("SuperMarioBros-1-1-v0", 1, **options), seed=5)
    first.start()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(20, 1, 7)).astype(np.float32)
    for a in actions[:12]:
        first.step(a)
    second = Collector(make_vector_env("SuperMarioBros-1-1-v0", 1, **options), seed=5)
    second.load_state_dict(first.state_dict())
    assert np.array_equal(first.obs, second.obs)
    old_env, new_env = first.envs.envs[0], second.envs.envs[0]
    for a in actions[12:]:
        s1, s2 = first.step(a), second.step(a)
        assert np.array_equal(s1.next_obs, s2.next_obs) and np.array_equal(s1.rewards, s2.rewards)
        assert s1.finished == s2.finished
    assert np.array_equal(old_env.get_wrapper_attr("remaining"), new_env.get_wrapper_attr("remaining"))
