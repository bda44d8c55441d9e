"""SMAX (jaxmarl) through the multi-agent interface: spaces, available actions, seeded replay, the win metric."""

import csv
import importlib.util

import gymnasium as gym
import numpy as np
import pytest

from gbmr.core.errors import GbmrError
from gbmr.envs import make_env
from gbmr.envs.multiagent import dimensions

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jaxmarl") is None,
                                reason="jaxmarl not installed (pip install -e '.[smax]')")


def rollout(env, seed, steps=30):
    """Random available actions from a fixed generator; returns the observations and rewards seen."""
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=seed)
    seen, rewards = [obs], []
    for _ in range(steps):
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in obs["avail_actions"]])
        obs, reward, terminated, truncated, info = env.step(actions)
        seen.append(obs)
        rewards.append(reward)
        assert set(info["episode_metrics"]) == {"won"}
        if terminated or truncated:
            break
    return seen, rewards


@pytest.mark.parametrize(("scenario", "n_agents", "n_enemies"), [("3m", 3, 3), ("2s3z", 5, 5)])
def test_spaces_and_available_actions(scenario, n_agents, n_enemies):
    env = make_env(f"SMAX/{scenario}")
    n, _, _, n_actions = dimensions(env.observation_space)
    assert (n, n_actions) == (n_agents, 5 + n_enemies)  # 4 moves + stop, one attack per enemy
    assert list(env.action_space.nvec) == [n_actions] * n_agents
    seen, _ = rollout(env, seed=0)
    for obs in seen:
        assert env.observation_space.contains(obs)
        assert (obs["avail_actions"].sum(axis=1) >= 1).all()
        dead = obs["agent_terminated"] > 0
        assert (obs["avail_actions"][dead] == np.eye(n_actions, dtype=np.int8)[4]).all()  # stop only
        assert not obs["obs"][dead].any()
    assert not seen[0]["avail_actions"][:, 5:].any()  # enemies start out of shooting range
    assert any((obs["agent_terminated"] > 0).any() for obs in seen)  # the dead-ally checks above ran
    states = np.stack([obs["state"] for obs in seen])
    assert states.min() >= 0.0 and states.max() <= 1.0 + 1e-6  # normalised, as SMAC's state
    assert states.max() > 0.5  # positions scaled by the map size, not squashed to nothing


def test_same_seed_replays_the_episode():
    env = make_env("SMAX/3m")
    (a, ra), (b, rb), (c, _) = rollout(env, 7), rollout(env, 7), rollout(env, 8)
    assert ra == rb and all(np.array_equal(x["state"], y["state"]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1]["state"], c[1]["state"])


def test_bad_scenario_lists_the_valid_ids():
    with pytest.raises(GbmrError, match="SMAX/2s3z"):
        make_env("SMAX/2s4z")


def test_qmix_training_run_logs_the_win_rate(tmp_path):
    from gbmr.cli import main

    run = tmp_path / "run"
    assert main(["train", "--algo", "qmix", "--env", "SMAX/3m", "--total-steps", "40", "--num-envs", "2",
                 "--run-dir", str(run),
                 "--set", "eval_every=40", "--set", "eval_episodes=1", "--set", "agent.batch_size=1"]) == 0
    with open(run / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[-1]["won"] in {"0", "1", "0.0", "1.0"}


def random_actions(rng, obs):
    """One random available action per agent of every env in a batch."""
    return np.array([[rng.choice(np.flatnonzero(row)) for row in env_rows] for env_rows in obs["avail_actions"]])


def test_two_or_more_envs_are_one_vmapped_env_and_one_env_stays_the_plain_env():
    from gbmr.envs import make_vector_env
    from gbmr.envs.smax import SMAXVectorEnv

    assert isinstance(make_vector_env("SMAX/3m", 3), SMAXVectorEnv)
    assert isinstance(make_vector_env("SMAX/3m", 1), gym.vector.SyncVectorEnv)


def test_vmapped_vector_env_steps_each_env_as_the_single_env_does():
    """Same seeds and actions, partial resets included: the vmapped env equals a vector of single envs."""
    from gbmr.envs.smax import SMAXVectorEnv

    n = 4
    vmapped = SMAXVectorEnv("3m", 100, n)
    plain = gym.vector.SyncVectorEnv([lambda: make_env("SMAX/3m") for _ in range(n)],
                                     autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    rng = np.random.default_rng(0)
    every = np.ones(n, dtype=bool)
    obs, _ = vmapped.reset(seed=[11, 12, 13, 14], options={"reset_mask": every})
    expected, _ = plain.reset(seed=[11, 12, 13, 14], options={"reset_mask": every})
    episodes = 0
    for _ in range(150):
        for key in obs:
            assert np.array_equal(obs[key], expected[key]), key
        actions = random_actions(rng, obs)
        obs, reward, terminated, truncated, info = vmapped.step(actions)
        expected, expected_reward, expected_terminated, expected_truncated, expected_info = plain.step(actions)
        assert np.array_equal(reward, expected_reward)
        assert np.array_equal(terminated, expected_terminated) and np.array_equal(truncated, expected_truncated)
        assert np.array_equal(info["episode_metrics"]["won"], expected_info["episode_metrics"]["won"])
        done = terminated | truncated
        if done.any():
            episodes += int(done.sum())
            seeds = [int(s) for s in rng.integers(2**32, size=n)]
            obs, _ = vmapped.reset(seed=seeds, options={"reset_mask": done})
            fresh, _ = plain.reset(seed=seeds, options={"reset_mask": done})
            expected = {k: np.where(done.reshape(-1, *[1] * (v.ndim - 1)), v, expected[k]) for k, v in fresh.items()}
    assert episodes >= 4  # the partial resets above ran


def test_collector_resumes_the_vmapped_env_exactly():
    """A checkpointed collector rebuilt on a fresh vmapped env continues with the same observations."""
    from gbmr.envs.smax import SMAXVectorEnv
    from gbmr.runners.collector import Collector

    rng = np.random.default_rng(1)
    first = Collector(SMAXVectorEnv("3m", 100, 3), seed=5)
    first.start()
    for _ in range(90):
        first.step(random_actions(rng, first.obs))
    assert first.episode_index.sum() > 3 and any(len(a) > 0 for a in first.episode_actions)  # mid-episode
    resumed = Collector(SMAXVectorEnv("3m", 100, 3), seed=5)
    resumed.load_state_dict(first.state_dict())
    for _ in range(40):
        for key in first.obs:
            assert np.array_equal(resumed.obs[key], first.obs[key]), key
        actions = random_actions(rng, first.obs)
        a, b = first.step(actions), resumed.step(actions)
        assert np.array_equal(a.rewards, b.rewards) and a.finished == b.finished
