"""The multi-agent interface: adapter shapes and masks on MPE and LBF, team rewards, truncation against
termination, determinism (what exact resume replays), the families' ids and errors, the episode buffer."""

import numpy as np
import pytest

from gbmr.core.errors import GbmrError
from gbmr.envs import make_env, make_vector_env
from gbmr.envs.multiagent import dimensions, is_multi_agent
from gbmr.memory.episode_buffer import EpisodeBuffer
from gbmr.runners.collector import Collector


def random_available(obs, rng):
    return np.array([rng.choice(np.flatnonzero(row)) for row in obs["avail_actions"]])


def test_mpe_simple_spread_shapes_team_reward_and_time_limit():
    from mpe2 import simple_spread_v3

    env = make_env("MPE/simple_spread-v3")
    assert is_multi_agent(env.observation_space)
    assert dimensions(env.observation_space) == (3, 18, 54, 5)
    raw = simple_spread_v3.parallel_env(max_cycles=25, continuous_actions=False)
    obs, _ = env.reset(seed=4)
    raw_obs, _ = raw.reset(seed=4)
    np.testing.assert_array_equal(obs["obs"], np.stack([raw_obs[a] for a in raw.possible_agents]))
    np.testing.assert_array_equal(obs["state"], raw.state())
    assert obs["avail_actions"].tolist() == [[1] * 5] * 3 and obs["agent_terminated"].tolist() == [0, 0, 0]
    rng = np.random.default_rng(0)
    for t in range(25):
        actions = random_available(obs, rng)
        obs, reward, terminated, truncated, _ = env.step(actions)
        _, raw_rewards, *_ = raw.step({a: int(actions[i]) for i, a in enumerate(raw.possible_agents)})
        assert reward == pytest.approx(sum(raw_rewards.values()))  # the team reward: the agents' sum
        assert env.observation_space.contains(obs)
        assert not terminated and truncated == (t == 24)  # a time limit, not a termination: it bootstraps


def test_lbf_avail_actions_are_the_valid_moves_and_the_time_limit_truncates():
    env = make_env("LBF/Foraging-8x8-2p-1f-coop-v3")
    assert dimensions(env.observation_space) == (2, 9, 18, 6)
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(1)
    for t in range(50):
        base = env.unwrapped.base
        valid = [[int(a.value) for a in base._valid_actions[p]] for p in base.players]
        assert [np.flatnonzero(row).tolist() for row in obs["avail_actions"]] == valid
        np.testing.assert_array_equal(obs["state"], obs["obs"].reshape(-1))
        obs, reward, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.int64))  # no-ops: food stays
        assert reward == 0 and not terminated and truncated == (t == 49)
    assert obs["agent_terminated"].tolist() == [0, 0]
    # LOAD (5) is offered only next to food, so a random available policy sometimes eats: then it terminates
    env = make_env("LBF/Foraging-5x5-2p-1f-v3")  # small, and one agent may be strong enough to eat alone
    ends = []
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(random_available(obs, rng))
            assert reward == pytest.approx(sum(p.reward for p in env.unwrapped.base.players))  # the agents' sum
            done = terminated or truncated
        ends.append((terminated, reward))
    assert any(terminated for terminated, _ in ends)
    assert all(reward > 0 for terminated, reward in ends if terminated)  # the last food eaten pays


def test_lbf_observations_are_scaled_so_the_untrained_q_tot_is_on_the_reward_scale():
    import torch

    from gbmr.agents.qmix import QMIXAgent, QMIXConfig

    env = make_env("LBF/Foraging-8x8-2p-1f-coop-v3")
    obs, _ = env.reset(seed=0)
    base = env.unwrapped.base
    raw = np.stack(base._make_gym_obs())  # (row, col, level) of the food, then of each player
    np.testing.assert_allclose(obs["obs"], raw / np.array([7, 7, 4, 7, 7, 2, 7, 7, 2]), rtol=1e-6)
    # raw coordinates up to 7 gave an untrained mixer Q_tot of 3-32 on these states (returns are at most 1)
    for seed in range(5):
        torch.manual_seed(seed)
        agent = QMIXAgent(QMIXConfig(), env.observation_space, env.action_space, 1, torch.device("cpu"), seed,
                          1000)
        obs, _ = env.reset(seed=seed)
        states = []
        for _ in range(20):
            states.append(obs["state"])
            obs, *_ = env.step(np.zeros(2, dtype=np.int64))
        assert np.all((obs["obs"] >= 0) & (obs["obs"] <= 1))
        q_tot = agent.mixer(torch.zeros(20, 2), torch.as_tensor(np.stack(states)))
        assert q_tot.abs().max().item() < 1.0


@pytest.mark.parametrize("env_id", ["MPE/simple_reference-v3", "LBF/Foraging-2s-5x5-2p-1f-coop-v3"])
def test_an_episode_is_a_function_of_its_seed_and_actions(env_id):
    """What exact resume needs (the collector resets with the episode's seed and replays its actions)."""
    runs = []
    for _ in range(2):
        env = make_env(env_id)
        obs, _ = env.reset(seed=11)
        rng = np.random.default_rng(5)
        seen = [obs["obs"].copy()]
        for _ in range(20):
            obs, *_ = env.step(random_available(obs, rng))
            seen.append(obs["obs"].copy())
        runs.append(np.stack(seen))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_collector_resumes_dict_observations_by_replay():
    envs = make_vector_env("LBF/Foraging-5x5-2p-1f-coop-v3", 2)
    collector = Collector(envs, seed=3)
    obs = collector.start()
    rng = np.random.default_rng(0)
    for _ in range(70):  # past the first episodes' time limit of 50
        obs = collector.step(np.stack([random_available({"avail_actions": obs["avail_actions"][i]}, rng)
                                       for i in range(2)])).next_obs
        obs = collector.obs
    state = collector.state_dict()
    other = Collector(make_vector_env("LBF/Foraging-5x5-2p-1f-coop-v3", 2), seed=3)
    other.load_state_dict(state)
    for key in collector.obs:
        np.testing.assert_array_equal(other.obs[key], collector.obs[key])


def test_family_ids_and_errors():
    with pytest.raises(GbmrError, match="Did you mean 'LBF/Foraging-8x8-2p-1f-coop-v3'"):
        make_env("LBF/Foraging-8x8-2p-1f-coop-v9")
    with pytest.raises(GbmrError, match="Did you mean 'MPE/simple_spread-v3'"):
        make_env("MPE/simple_spred-v3")
    with pytest.raises(GbmrError, match="max_cycles=25"):
        make_env("MPE/simple_spread-v3", max_steps=3)
    assert make_env("MPE/simple_spread-v3", max_cycles=5).reset(seed=0)[0]["obs"].shape == (3, 18)


def episode_rows(length, n_agents=2, obs_dim=3, n_actions=4, start=0.0):
    """Steps whose values count up, to see where each lands in the buffer."""
    rows = []
    for t in range(length + 1):
        rows.append({"obs": np.full((n_agents, obs_dim), start + t, np.float32),
                     "state": np.full(5, start + t, np.float32),
                     "avail_actions": np.ones((n_agents, n_actions), np.int8),
                     "agent_terminated": np.array([int(t >= 2), 0], np.int8)})
    return rows


def test_episode_buffer_pads_masks_grows_and_round_trips():
    buffer = EpisodeBuffer(capacity=3, n_agents=2, obs_dim=3, state_dim=5, n_actions=4, num_envs=2, max_length=2)
    long, short = episode_rows(4, start=0.0), episode_rows(1, start=100.0)
    for t in range(4):  # env 0 runs 4 steps (longer than max_length 2: the arrays grow), env 1 one step
        buffer.add_step(0, long[t], np.array([t, t]), float(t), t == 3, long[t + 1], t == 3)
        if t == 0:
            buffer.add_step(1, short[0], np.array([1, 2]), 0.5, False, short[1], True)  # cut by a time limit
    assert buffer.size == 2 and buffer.max_length >= 4
    batch = buffer.batch(np.array([1, 0]))  # slot 0 holds the short episode (it ended first): long one first
    assert batch["obs"].shape == (2, 5, 2, 3) and batch["actions"].shape == (2, 4, 2)
    assert batch["filled"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch["obs"][0, :, 0, 0].tolist() == [0, 1, 2, 3, 4]  # T+1 observations, the last one kept
    assert batch["obs"][1, :, 0, 0].tolist() == [100, 101, 0, 0, 0]
    assert batch["reward"][0].tolist() == [0, 1, 2, 3] and batch["terminated"][0].tolist() == [0, 0, 0, 1]
    assert batch["terminated"][1].tolist() == [0, 0, 0, 0]  # truncated: no termination
    assert batch["agent_terminated"][0, :, 0].tolist() == [0, 1, 1, 1]  # agent 0 was done after step 1
    buffer.add_step(0, long[0], np.array([0, 0]), 0.0, False, long[1], False)  # an episode in progress
    restored = EpisodeBuffer(capacity=3, n_agents=2, obs_dim=3, state_dim=5, n_actions=4, num_envs=2)
    restored.load_state_dict(buffer.state_dict())
    for key, value in buffer.batch(np.array([0, 1])).items():
        np.testing.assert_array_equal(restored.batch(np.array([0, 1]))[key], value)
    restored.add_step(0, long[1], np.array([1, 1]), 1.0, True, long[2], True)
    assert restored.size == 3 and restored.length[2] == 2  # the episode in progress was kept
