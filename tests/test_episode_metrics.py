"""The generic per-episode metrics: an env that reports ``info["episode_metrics"]`` (and names them in
``episode_metric_names``) gets those columns in metrics.csv and eval.csv, with one env or a vector of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import read_rows

from gbmr.cli import main

COUNTER_MODULE = '''
import gymnasium as gym
import numpy as np


class Counter(gym.Env):
    """Episodes of 4 + (reset seed % 3) steps; reports how many steps took action 1 and the episode's length."""
    observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    episode_metric_names = ("ones", "steps")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n, self.ones, self.length = 0, 0, 4 + (seed or 0) % 3
        return np.zeros(1, np.float32), {"episode_metrics": {"ones": 0.0, "steps": 0.0}}

    def step(self, action):
        self.n += 1
        self.ones += int(action)
        info = {"episode_metrics": {"ones": float(self.ones), "steps": float(self.n)}}
        return np.full(1, self.n, np.float32), float(action), self.n >= self.length, False, info


gym.register("GbmrCounter-v0", entry_point=Counter)
'''


@pytest.mark.parametrize("num_envs", ["1", "2"])
def test_env_metrics_reach_the_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, num_envs: str) -> None:
    (tmp_path / "gbmr_counter_env.py").write_text(COUNTER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert main(["train", "--algo", "dqn", "--env", "gbmr_counter_env:GbmrCounter-v0", "--total-steps", "200",
                 "--num-envs", num_envs, "--no-progress", "--run-dir", str(run), "--set", "learning_starts=50",
                 "--set", "eval_every=100", "--set", "eval_episodes=3", "--set", "hidden=[8]"]) == 0
    header, *rows = read_rows(run / "metrics.csv")
    assert header[:6] == ["step", "episode", "return", "length", "ones", "steps"]
    for row in rows:
        # the reward is the action, so the return counts the ones; the env's step count is the episode length
        assert float(row[4]) == float(row[2]) and float(row[5]) == float(row[3])
    eval_header, *evals = read_rows(run / "eval.csv")
    assert eval_header[-2:] == ["ones", "steps"] and len(evals) == 2
    for row in evals:
        assert float(row[eval_header.index("ones")]) == pytest.approx(float(row[eval_header.index("mean_return")]))
