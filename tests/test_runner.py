"""The runner's fast paths keep its results: a single env stepped directly, TensorBoard points as window means."""

import csv

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gbmr.cli import main
from gbmr.envs import make_vector_env
from gbmr.runners.collector import Collector


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MinAtar/Breakout-v1"])
def test_single_env_step_equals_vector_env_step(env_id):
    direct, vector = make_vector_env(env_id, 1), make_vector_env(env_id, 1)
    collector = Collector(direct, seed=0)
    rng = np.random.default_rng(0)
    for episode in range(3):
        obs_a, _ = direct.reset(seed=[episode])
        obs_b, _ = vector.reset(seed=[episode])
        np.testing.assert_array_equal(obs_a, obs_b)
        done = False
        while not done:
            actions = rng.integers(direct.single_action_space.n, size=1)
            got = collector._step_envs(actions)[:4]  # the fifth: infos (a list of one, or the vector dict)
            want = vector.step(actions)[:4]
            for a, b in zip(got, want, strict=True):
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)
            done = bool(got[2][0] or got[3][0])


def test_tensorboard_points_are_means_of_the_episodes_since_the_last_point(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--algo", "dqn", "--env", "CartPole-v1", "--seed", "2", "--total-steps", "2500",
                 "--no-progress", "--set", "learning_starts=200", "--set", "hidden=[16]", "--set", "n_step=1",
                 "--set", "eval_episodes=0", "--set", "checkpoint_every=700", "--run-dir", str(run)]) == 0
    with open(run / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    points = [(e.step, e.value) for e in events.Scalars("train/episode_return")]
    # every 1000 steps, at each checkpoint (700, 1400, 2100) and at the end
    assert [step for step, _ in points] == [700, 1000, 1400, 2000, 2100, 2500]
    previous = 0
    for step, value in points:
        window = [r for r in rows if previous < r["step"] <= step]
        assert value == pytest.approx(np.mean([r["return"] for r in window]))
        previous = step
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    window = [r["loss"] for r in rows if 1400 < r["step"] <= 2000 and "loss" in r]
    assert losses[2000] == pytest.approx(np.mean(window))


def test_evaluation_episodes_end_at_max_steps():
    """A greedy policy can stall forever where an environment has no time limit (PPO on MinAtar Seaquest did):
    evaluation cuts each episode at max_steps."""
    import gymnasium as gym
    import numpy as np

    from gbmr.runners.sync import evaluate

    class Endless(gym.Env):
        observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, seed=None, options=None):
            return np.zeros(1, np.float32), {}

        def step(self, action):
            return np.zeros(1, np.float32), 1.0, False, False, {}

    class Still:
        def begin_evaluation_episode(self):
            pass

        def act(self, obs, explore=True):
            return np.zeros(len(obs), dtype=np.int64)

    assert evaluate(Still(), Endless(), episodes=2, base_seed=1, max_steps=7).tolist() == [7.0, 7.0]
