import io

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

from gbmr.agents.mfec import MFECAgent, MFECConfig
from gbmr.agents.nec import NECAgent, NECConfig
from gbmr.cli import main

PLANE = gym.spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
TWO = gym.spaces.Discrete(2)
CARTPOLE = gym.make("CartPole-v1")


def mfec(**overrides) -> MFECAgent:
    cfg = MFECConfig(capacity=16, encoder="identity", **overrides)
    return MFECAgent(cfg, PLANE, TWO, num_envs=1, device=torch.device("cpu"), seed=0, total_steps=100)


def nec(space=PLANE, **overrides) -> NECAgent:
    cfg = NECConfig(**{"capacity": 64, "encoder": "identity", "learning_starts": 0, **overrides})
    return NECAgent(cfg, space, TWO, num_envs=1, device=torch.device("cpu"), seed=0, total_steps=100)


def step(agent, obs, action, reward, next_obs, terminated=False, truncated=False) -> None:
    agent.observe(np.array([obs], np.float32), np.array([action]), np.array([reward], np.float32),
                  np.array([next_obs], np.float32), np.array([terminated]), np.array([truncated]))


def play(agent, episode: list[tuple[tuple[float, float], int, float]]) -> None:
    """Feed one terminated episode of (obs, action, reward)."""
    for t, (obs, action, reward) in enumerate(episode):
        last = t == len(episode) - 1
        step(agent, obs, action, reward, (9.0, 9.0) if last else episode[t + 1][0], terminated=last)


def q(agent, *obs) -> np.ndarray:
    return agent.q_values(np.array(obs, np.float32))


# ----------------------------------------------------------------------------------------------- MFEC
def test_mfec_writes_monte_carlo_returns_keeping_the_max():
    agent = mfec(k=2)
    play(agent, [((0, 0), 0, 1.0), ((1, 0), 1, 2.0), ((2, 0), 0, 3.0)])  # returns 6, 5, 3
    assert [len(t) for t in agent.tables] == [2, 1]
    np.testing.assert_allclose(q(agent, (0, 0), (1, 0), (2, 0)), [[6.0, 5.0], [4.5, 5.0], [3.0, 5.0]])
    play(agent, [((0, 0), 0, 10.0)])  # a better return from (0,0): replaces
    play(agent, [((0, 0), 0, 1.0)])  # a worse one: the max stays
    assert [len(t) for t in agent.tables] == [2, 1]
    np.testing.assert_allclose(q(agent, (0, 0))[0, 0], 10.0)
    # (1, 0) is not in table 0: mean of its k = 2 nearest, (0,0) -> 10 and (2,0) -> 3
    np.testing.assert_allclose(q(agent, (1, 0))[0], [6.5, 5.0])


def test_mfec_discount_option():
    agent = mfec(k=1, gamma=0.5)
    play(agent, [((0, 0), 0, 1.0), ((1, 0), 0, 2.0), ((2, 0), 0, 4.0)])
    np.testing.assert_allclose(q(agent, (0, 0), (1, 0), (2, 0))[:, 0], [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4])


def test_mfec_greedy_act_reads_without_changing_memory():
    agent = mfec(k=2)
    play(agent, [((0, 0), 0, 1.0), ((1, 0), 1, 2.0), ((2, 0), 0, 3.0)])
    before = agent.state_dict()
    assert agent.act(np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), explore=False).tolist() == [1, 0]
    for table, old in zip(agent.tables, before["tables"], strict=True):
        assert table.clock == old["clock"]
        assert torch.equal(torch.from_numpy(table.last_use[: table.size]), old["last_use"])


def test_mfec_breaks_ties_at_random_on_an_empty_memory():
    agent = mfec()
    actions = [agent.act(np.zeros((1, 2), np.float32), explore=False)[0] for _ in range(40)]
    assert set(actions) == {0, 1}


# ----------------------------------------------------------------------------------------------- NEC
def test_nec_write_path_uses_the_dnd_merge_rule():
    agent = nec(n_step=1, alpha=0.1)
    step(agent, (1, 1), 0, 1.0, (2, 2), terminated=True)
    step(agent, (1, 1), 0, 3.0, (2, 2), terminated=True)
    assert [len(d) for d in agent.dnds] == [1, 0]
    assert agent.dnds[0].values[0].item() == pytest.approx(1.0 + 0.1 * (3.0 - 1.0))
    assert len(agent.learner.replay) == 2 and agent.learner.replay.returns[:2].tolist() == [1.0, 3.0]


def test_nec_n_step_return_bootstraps_from_max_q():
    agent = nec(n_step=2, gamma=0.5)
    agent.dnds[0].write(np.array([[5.0, 5.0]]), np.array([4.0]))
    agent.dnds[1].write(np.array([[-5.0, -5.0]]), np.array([-1.0]))
    step(agent, (1, 0), 0, 1.0, (2, 0))
    assert len(agent.dnds[0]) == 1  # return of (1,0) not known yet
    step(agent, (2, 0), 1, 2.0, (5, 5))  # window full: R = 1 + 0.5 * 2 + 0.25 * max(4, -1)
    _, slot = agent.dnds[0].index.search(np.array([[1.0, 0.0]], np.float32), 1)
    assert agent.dnds[0].values[slot[0, 0]].item() == pytest.approx(3.0)
    step(agent, (5, 5), 0, 8.0, (9, 9), terminated=True)  # flush: (2,0) -> 2 + 0.5 * 8, (5,5) merges 8
    _, slot = agent.dnds[1].index.search(np.array([[2.0, 0.0]], np.float32), 1)
    assert agent.dnds[1].values[slot[0, 0]].item() == pytest.approx(6.0)
    assert agent.dnds[0].values[0].item() == pytest.approx(4.0 + 0.1 * (8.0 - 4.0))
    assert agent.window_len[0] == 0


def test_nec_training_step_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    agent = nec(space=CARTPOLE.observation_space, encoder="learned", dim=8, hidden=(32,), k=5, lr=1e-3,
                dnd_lr=1e-2)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 4)).astype(np.float32)
    actions = rng.integers(2, size=200)
    returns = (obs[:, 0] * 3 + actions).astype(np.float32)
    agent.write(obs, actions, returns)
    batch = obs[:32] + 0.1, actions[:32], returns[:32] + 1.0
    before = agent.batch_loss(*batch)[0].item()
    keys_before = agent.dnds[0].keys.detach().clone()
    agent.learn(*batch)
    assert agent.batch_loss(*batch)[0].item() < before
    assert not torch.equal(agent.dnds[0].keys.detach(), keys_before)  # the neighbours' keys moved too


def test_nec_reuses_an_embedding_only_while_the_encoder_is_unchanged():
    agent = nec(space=CARTPOLE.observation_space, encoder="learned", dim=8, hidden=(32,), k=5, lr=1e-2)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(100, 4)).astype(np.float32)
    actions = rng.integers(2, size=100)
    agent.write(obs, actions, obs[:, 0] + actions)
    probe = obs[:2] + 0.05
    first = agent.q_values(probe)
    np.testing.assert_array_equal(agent.q_values(probe), first)  # the same read again (cached embedding)
    agent.learn(obs[:32], actions[:32], obs[:32, 1])
    after = agent.q_values(probe)
    assert not np.array_equal(after, first)
    agent._last_embedding = None
    np.testing.assert_array_equal(agent.q_values(probe), after)


def test_nec_greedy_act_does_not_touch_memory():
    agent = nec(n_step=1)
    step(agent, (1, 1), 0, 1.0, (2, 2), terminated=True)
    step(agent, (3, 1), 1, 0.0, (2, 2), terminated=True)
    clocks = [d.clock for d in agent.dnds]
    assert agent.act(np.array([[1.0, 1.0]], np.float32), explore=False).tolist() == [0]
    assert [d.clock for d in agent.dnds] == clocks


# ----------------------------------------------------------------------------------------------- both
def roll(agent, steps: int, seed: int = 0) -> None:
    """Random-policy experience on CartPole through act/observe/update, ending mid-episode."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        action = agent.act(obs[None])
        next_obs, reward, terminated, truncated, _ = env.step(action[0])
        agent.observe(obs[None], action, np.array([reward]), next_obs[None], np.array([terminated]),
                      np.array([truncated]))
        agent.update()
        obs = env.reset()[0] if terminated or truncated else next_obs


@pytest.mark.parametrize("algo, index", [("mfec", "exact"), ("mfec", "hnsw"), ("nec", "exact"), ("nec", "hnsw")])
def test_state_dict_round_trip_gives_identical_q(algo, index):
    """hnsw: the tables save hnswlib's graph itself, so the restored index searches and grows as the saved one."""
    def build():
        if algo == "mfec":
            cfg, cls = MFECConfig(capacity=500, dim=8, index=index), MFECAgent
        else:
            cfg, cls = NECConfig(capacity=500, dim=8, hidden=(16,), n_step=5, learning_starts=50, lr=1e-3,
                                 dnd_lr=1e-2, index_tolerance=1e-4, index=index), NECAgent  # stale index keys
        return cls(cfg, CARTPOLE.observation_space, CARTPOLE.action_space, 1, torch.device("cpu"), 7, 1000)

    agent = build()
    roll(agent, 300)
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    restored = build()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    probe = np.random.default_rng(1).normal(scale=0.5, size=(20, 4)).astype(np.float32)
    np.testing.assert_array_equal(restored.q_values(probe), agent.q_values(probe))
    roll(agent, 50, seed=3)  # and they continue identically (window / episode in progress, RNG, replay)
    roll(restored, 50, seed=3)
    np.testing.assert_array_equal(restored.q_values(probe), agent.q_values(probe))
    if index == "hnsw":  # the hnswlib graphs themselves, not only what they return
        tables = "tables" if algo == "mfec" else "dnds"
        graphs = [[table["index"]["hnsw"]["link_lists"] for table in a.state_dict()[tables]]
                  for a in (agent, restored)]
        assert all(torch.equal(x, y) for x, y in zip(*graphs, strict=True))


# ----------------------------------------------------------------------------------------------- learning
def first_and_last_returns(run_dir) -> tuple[float, float]:
    returns = pd.read_csv(run_dir / "metrics.csv")["return"]
    assert len(returns) >= 20
    return returns[:10].mean(), returns[-10:].mean()


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["nec", "mfec"])
def test_learns_cartpole(algo, tmp_path):
    """The classic preset through the real runner: 5000 steps, fixed seed."""
    args = ["train", "--algo", algo, "--env", "CartPole-v1", "--total-steps", "5000", "--seed", "1",
            "--no-progress", "--run-dir", str(tmp_path / algo), "--set", "eval_every=0", "--set", "eval_episodes=1"]
    assert main(args) == 0
    first, last = first_and_last_returns(tmp_path / algo)
    assert last > 100 and last > 2 * first  # a random policy lasts ~22 steps
