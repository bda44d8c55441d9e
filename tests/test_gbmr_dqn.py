"""GBMR-DQN: replay slots map to the graph nodes of their steps, the memory term by hand, exact resume, bad input."""

import io

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

from gbmr.agents.dqn import DQNAgent, DQNConfig
from gbmr.agents.gbmr_dqn import GBMRDQNAgent, GBMRDQNConfig
from gbmr.cli import main
from gbmr.core.errors import GbmrError

CARTPOLE = "CartPole-v1"


def _agent(config, num_envs=1, seed=0):
    env = gym.make(CARTPOLE)
    return GBMRDQNAgent(config, env.observation_space, env.action_space, num_envs, torch.device("cpu"), seed, 10_000)


def _play(agent, steps, num_envs=1, seed=0):
    """Drive the agent as the runner does (true final observations, then a reset); returns its actions."""
    envs = [gym.make(CARTPOLE) for _ in range(num_envs)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    actions_taken = []
    for _ in range(steps):
        actions = agent.act(obs)
        results = [env.step(int(a)) for env, a in zip(envs, actions, strict=True)]
        next_obs, rewards, terminated, truncated = (np.array(x) for x in list(zip(*results, strict=True))[:4])
        agent.observe(obs, actions, rewards, next_obs, terminated, truncated)
        agent.update()
        actions_taken.append(actions.tolist())
        obs = np.stack([env.reset()[0] if term or trunc else o
                        for env, o, term, trunc in zip(envs, next_obs, terminated, truncated, strict=True)])
    return actions_taken


@pytest.mark.parametrize(("num_envs", "buffer_size"), [(1, 5000), (2, 5000), (2, 64)])
def test_replay_slots_map_to_the_nodes_of_their_steps(num_envs, buffer_size):
    """Every mapped slot's node holds the key of the slot's observation (no merges at this dist_th; up to the
    rounding of another batch size);
    every step of a finished episode still in the replay is mapped; slots overwritten since are not stale."""
    memory = {"dist_th": 1e-6, "capacity": 10_000, "n_step": 1, "k": 1}
    agent = _agent(GBMRDQNConfig(buffer_size=buffer_size, learning_starts=100, memory=memory), num_envs)
    _play(agent, 400, num_envs)
    mapped = np.flatnonzero(agent.slot_node >= 0)
    keys = agent.memory.embed(agent.buffer.obs[mapped])
    np.testing.assert_allclose(agent.memory.graph.node_keys[agent.slot_node[mapped]], keys, atol=1e-6)
    unfinished = len(agent.memory.collector)  # steps of episodes still running: in the replay, not yet written
    if agent.buffer.size < buffer_size:  # nothing overwritten yet: every step of a finished episode is mapped
        assert len(mapped) == agent.buffer.size - unfinished
    else:  # wrapped many times over
        assert len(mapped) > buffer_size // 4


def test_memory_term_hand_computed():
    """One 3-step episode with rewards 1, 1, 1 that terminates; one-step writes and value-iteration sweeps give
    Q_G = 1 + 0.9 + 0.81, 1 + 0.9, 1 along it; the term is lambda * mean((Q - Q_G)^2), or of the shortfalls only."""
    memory = {"dist_th": 1e-6, "capacity": 100, "n_step": 1, "k": 1, "gamma": 0.9, "reconstruct_every": 1,
              "sweeps": 5, "backup_eta": 1.0}
    agent = _agent(GBMRDQNConfig(memory_weight=0.5, buffer_size=100, memory=memory))
    obs = np.arange(16, dtype=np.float32).reshape(4, 1, 4) / 10  # s0 s1 s2 and the final state
    for t in range(3):
        agent.observe(obs[t], np.array([t % 2]), np.array([1.0]), obs[t + 1], np.array([t == 2]), np.array([False]))
    batch = agent.buffer.transitions(np.array([0, 1, 2]))
    values, valid = agent.memory_values(batch.obs, batch.actions, batch.indices)
    np.testing.assert_allclose(values, [2.71, 1.9, 1.0], rtol=1e-6)
    assert valid.all()
    q = torch.tensor([3.0, 0.0, 1.5])
    term = agent.extra_loss(batch, q)
    assert term.item() == pytest.approx(0.5 * (0.29**2 + 1.9**2 + 0.5**2) / 3, rel=1e-5)
    agent.config.memory_loss = "lower_bound"  # Q above the achieved value is left alone
    term = agent.extra_loss(batch, q)
    assert term.item() == pytest.approx(0.5 * (0.0 + 1.9**2 + 0.0) / 3, rel=1e-5)
    # a slot whose node was evicted (or whose key drifted away) no longer counts
    agent.memory.graph.node_keys[agent.slot_node[1]] += 1.0
    values, valid = agent.memory_values(batch.obs, batch.actions, batch.indices)
    assert valid.tolist() == [True, False, True]


class _FixedQ(torch.nn.Module):
    """A network that values every state alike: what acting with memory_act adds is then visible."""

    def __init__(self, q):
        super().__init__()
        self.values = torch.tensor([q])

    def forward(self, obs):
        return self.values.expand(len(obs), -1)


def test_memory_act_max_takes_the_graph_value_where_it_knows_the_state():
    """After one episode s0 -0-> s1 -1-> s2 -0-> end (rewards 1; Q_G 2.71, 1.9, 1.0), a network valuing every
    state at (0.5, 0): in s1 the graph's Q_G(s1, 1) = 1.9 beats 0.5, so the agent plays 1; in s0 the graph only
    knows action 0, which the network already prefers; a state no node lies within dist_th of is the network's;
    a network value above the graph's stays (max); memory_act off acts by the network alone."""
    memory = {"dist_th": 1e-3, "capacity": 100, "n_step": 1, "k": 1, "gamma": 0.9, "reconstruct_every": 1,
              "sweeps": 5, "backup_eta": 1.0}
    agent = _agent(GBMRDQNConfig(memory_act="max", buffer_size=100, memory=memory))
    obs = np.arange(16, dtype=np.float32).reshape(4, 1, 4) / 10
    for t in range(3):
        agent.observe(obs[t], np.array([t % 2]), np.array([1.0]), obs[t + 1], np.array([t == 2]), np.array([False]))
    states = np.concatenate([obs[0], obs[1], obs[1] + 1.0])  # s0, s1, a state far from every node
    q, known = agent.known_values(states)
    assert known.tolist() == [[True, False], [False, True], [False, False]]
    np.testing.assert_allclose(q[known], [2.71, 1.9], rtol=1e-6)
    agent.policy.q = _FixedQ([0.5, 0.0])
    assert agent.act(states, explore=False).tolist() == [0, 1, 0]
    agent.policy.q = _FixedQ([0.0, 2.0])  # above the graph's 1.9 in s1, and above its 0 where it has no edge
    assert agent.act(states, explore=False).tolist() == [0, 1, 1]
    agent.policy.q = _FixedQ([0.5, 0.0])
    agent.config.memory_act = "off"
    assert agent.act(states, explore=False).tolist() == [0, 0, 0]


def _saved(agent):
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_checkpoint_resumes_identically():
    memory = {"dist_th": 0.05, "capacity": 300, "n_step": 1, "k": 5, "reconstruct_every": 100, "sweeps": 3,
              "backup_eta": 1.0}
    config = GBMRDQNConfig(buffer_size=500, learning_starts=100, train_freq=1, hidden=(32,), memory=memory,
                           eps_fraction=0.5)
    a, b = _agent(config, seed=3), _agent(config, seed=99)
    _play(a, 400)
    assert len(a.memory.collector) > 0 and a.memory.reconstructions > 0  # saved mid-episode
    b.load_state_dict(_saved(a))
    assert _play(a, 300, seed=7) == _play(b, 300, seed=7)
    for p, q in zip(a.learner.q.parameters(), b.learner.q.parameters(), strict=True):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(a.slot_node, b.slot_node)
    assert a.memory.graph.num_edges == b.memory.graph.num_edges


def test_without_the_memory_term_it_is_dqn_step_for_step():
    """memory_weight 0: the memory only watches (its own seed stream), so actions and weights equal DQN's."""
    shared = {"buffer_size": 500, "learning_starts": 100, "train_freq": 1, "hidden": (32,), "eps_fraction": 0.5}
    env = gym.make(CARTPOLE)
    torch.manual_seed(0)  # the runner seeds torch before building an agent: the networks start alike
    dqn = DQNAgent(DQNConfig(**shared), env.observation_space, env.action_space, 1, torch.device("cpu"), 3, 10_000)
    torch.manual_seed(0)
    hybrid = _agent(GBMRDQNConfig(**shared, memory_weight=0.0, memory={"dist_th": 0.05, "k": 5}), seed=3)
    assert _play(dqn, 400) == _play(hybrid, 400)
    for p, q in zip(dqn.learner.q.parameters(), hybrid.learner.q.parameters(), strict=True):
        assert torch.equal(p, q)
    assert hybrid.memory.graph.num_nodes > 100


@pytest.mark.parametrize(("config", "message"), [
    ({"n_step": 3}, "n_step=1"),
    ({"memory_weight": -1.0}, "memory_weight"),
    ({"memory_loss": "huber"}, "lower_bound"),
    ({"memory_act": "mean"}, "max"),
    ({"memory_act": "max", "memory": {"layout": "per_action"}}, "joint"),
    ({"memory": {"dist_threshold": 1.0}}, "dist_th"),  # names the closest valid key
    ({"memory": {"sweeps": "many"}}, "sweeps"),
])
def test_bad_config_is_refused(config, message):
    with pytest.raises(GbmrError, match=message):
        _agent(GBMRDQNConfig(**config))


def test_cli_bad_memory_key_exits_2(capsys, tmp_path):
    code = main(["train", "--algo", "gbmr-dqn", "--env", CARTPOLE, "--total-steps", "100", "--no-progress",
                 "--run-dir", str(tmp_path / "run"), "--set", "memory={dist_threshold: 1}"])
    assert code == 2
    assert "dist_th" in capsys.readouterr().err


def _maze_run(tmp_path, name, *overrides):
    run_dir = tmp_path / name
    assert main(["train", "--algo", "gbmr-dqn", "--env", "GridMaze-Paper-v0", "--seed", "1", "--total-steps", "10000",
                 "--no-progress", "--run-dir", str(run_dir), *(x for o in overrides for x in ("--set", o))]) == 0
    success = pd.read_csv(run_dir / "metrics.csv")["return"].to_numpy() > 100  # the goal pays +200
    return success, pd.read_csv(run_dir / "eval.csv")["mean_return"].to_numpy()


@pytest.mark.slow
def test_memory_term_makes_dqn_solve_the_paper_maze(tmp_path):
    """Maze preset, seed 1, 10k steps. With the memory term the goal is reached in nearly every episode from
    episode 40 on and by the greedy policy at the end (measured: every episode from 34 on; greedy 200 from 8k
    steps). Without it (memory_weight 0: DQN step for step, the memory draws from its own seed) the same network
    reaches it 7 times in 52 episodes, never after episode 33, and greedily never."""
    with_memory, eval_with = _maze_run(tmp_path, "memory")
    without, eval_without = _maze_run(tmp_path, "plain", "memory_weight=0")
    assert with_memory[40:].mean() >= 0.8 and eval_with[-1] >= 100, (with_memory.astype(int), eval_with)
    assert without[40:].mean() <= 0.2 and eval_without[-1] < 100, (without.astype(int), eval_without)
