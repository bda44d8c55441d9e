"""`gbmr inspect`: a picture of a real GBMR run's memory graph, clear errors otherwise, and the drawing helpers."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from gbmr.analysis.inspect_graph import _positions, _select_nodes, draw_memory_graph
from gbmr.cli import main
from gbmr.experiment.train import load_trained_agent
from gbmr.memory.graph import MemoryGraph

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory):
    """GBMR on the paper maze, 1500 steps, reconstructing every 200 steps (~7 reconstructions) from the 6
    critical nodes of highest degree score (crossing nodes are few this early: often one, so no path)."""
    run_dir = tmp_path_factory.mktemp("inspect") / "gbmr-maze"
    assert main(["train", "--algo", "gbmr", "--env", "GridMaze-Paper-v0", "--total-steps", "1500", "--seed", "1",
                 "--no-progress", "--run-dir", str(run_dir), "--set", "reconstruct_every=200",
                 "--set", "critical=degree", "--set", "num_critical=6", "--set", "eval_episodes=0"]) == 0
    return run_dir


def test_inspect_maze_run_saves_picture_and_summary(maze_run, capsys):
    capsys.readouterr()
    assert main(["inspect", str(maze_run)]) == 0
    out = capsys.readouterr().out
    picture = maze_run / "memory_graph.png"
    assert f"memory graph picture: {picture}" in out
    assert picture.read_bytes()[:8] == PNG_MAGIC and picture.stat().st_size > 10_000
    _, agent = load_trained_agent(maze_run)
    graph = agent.graph
    assert agent.reconstructions >= 5 and graph.num_nodes > 20
    expected = (f"{graph.num_nodes} nodes, {graph.num_edges} edges, {agent.last_critical.size} critical nodes, "
                f"{len(agent.last_paths)} reconstructed paths")
    assert expected in out


def test_checkpoint_keeps_the_last_reconstruction(maze_run):
    """The restored critical nodes / paths are those the run logged at its last reconstruction, and they
    survive a weights_only round trip."""
    _, agent = load_trained_agent(maze_run)
    metrics = pd.read_csv(maze_run / "metrics.csv").dropna(subset=["critical"])
    assert agent.last_critical.size == metrics["critical"].iloc[-1] == 6
    assert len(agent.last_paths) == metrics["paths"].iloc[-1] >= 1
    path = agent.last_paths[0]
    assert agent.graph.edge_src[path[0]] in agent.last_critical  # a path starts at a critical node
    assert agent.graph.edge_dst[path[-1]] in agent.last_critical  # and ends at one
    agent.last_critical, agent.last_paths = np.array([3, 7]), [np.array([1, 2]), np.array([5])]
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    _, restored = load_trained_agent(maze_run)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    np.testing.assert_array_equal(restored.last_critical, [3, 7])
    assert [p.tolist() for p in restored.last_paths] == [[1, 2], [5]]


def test_inspect_out_option(maze_run, tmp_path, capsys):
    target = tmp_path / "graph.png"
    assert main(["inspect", str(maze_run), "--out", str(target)]) == 0
    assert target.read_bytes()[:8] == PNG_MAGIC
    assert main(["inspect", str(maze_run), "--out", str(tmp_path / "graph.jpg")]) == 2
    assert "--out must be a .png file" in capsys.readouterr().err


def test_inspect_dqn_run_exits_2_naming_graph_algorithms(tmp_path, capsys):
    run_dir = tmp_path / "dqn"
    assert main(["train", "--algo", "dqn", "--env", "CartPole-v1", "--total-steps", "200", "--no-progress",
                 "--run-dir", str(run_dir), "--set", "eval_episodes=0"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "is a dqn run, which has no memory graph" in err
    assert "gq, gbmr, gcmr, gbmr-sweep, gbmr-dqn" in err and "Traceback" not in err
    assert not (run_dir / "memory_graph.png").exists()


def test_inspect_gbmr_dqn_run_draws_its_memory(tmp_path, capsys):
    """gbmr-dqn holds its graph in a memory agent and acts by its network: inspect draws that graph (on the
    maze grid, the memory keys being the cells) and reads it along the network's greedy episodes."""
    run_dir = tmp_path / "gbmr-dqn"
    memory = "{encoder: identity, dist_th: 0.5, capacity: 2000, n_step: 1, k: 4, reconstruct_every: 200, sweeps: 5}"
    assert main(["train", "--algo", "gbmr-dqn", "--env", "GridMaze-Paper-v0", "--total-steps", "1500",
                 "--no-progress", "--run-dir", str(run_dir), "--set", "eval_episodes=0",
                 "--set", f"memory={memory}"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(run_dir), "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "memory_graph.png").read_bytes()[:8] == PNG_MAGIC
    _, agent = load_trained_agent(run_dir)
    graph = agent.memory.graph
    assert graph.num_nodes > 20 and f"{graph.num_nodes} nodes, {graph.num_edges} edges" in out
    assert "1 greedy episodes" in out


def test_inspect_non_run_folder_exits_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def _line_graph() -> tuple[MemoryGraph, np.ndarray]:
    """Five nodes on a line in 3-D, visited 1..5 times, chained 0 -> 1 -> ... -> 4; and their ids."""
    graph = MemoryGraph(3, capacity=8, num_actions=2)
    ids = graph.add_nodes(np.outer(np.arange(5), [1.0, 2.0, 2.0]))  # keys 0, (1,2,2), ... : 3 apart
    graph.node_visits[ids] = [1, 2, 3, 4, 5]
    graph.add_transitions(ids[:-1], ids[1:], [0, 1, 0, 1], [0.0, 0.0, 0.0, 1.0], [0.5, 0.6, 0.7, 1.0])
    return graph, ids


def test_select_nodes_keeps_critical_and_most_visited():
    graph, ids = _line_graph()
    np.testing.assert_array_equal(_select_nodes(graph, ids, ids[[0]], max_nodes=3), ids[[0, 3, 4]])
    np.testing.assert_array_equal(_select_nodes(graph, ids, ids[[0]], max_nodes=5), ids)


def test_positions_grid_and_pca():
    np.testing.assert_array_equal(_positions(np.array([[2.0, 5.0]]), on_grid=True), [[5.0, 2.0]])  # (col, row)
    xy = _positions(np.outer(np.arange(5), [1.0, 2.0, 2.0]), on_grid=False)
    np.testing.assert_allclose(np.abs(xy[:, 0]), [6, 3, 0, 3, 6], atol=1e-9)  # spacing 3 along the line
    np.testing.assert_allclose(xy[:, 1], 0, atol=1e-9)


def test_draw_caps_nodes_and_counts(tmp_path):
    graph, ids = _line_graph()
    out = tmp_path / "g.png"
    summary = draw_memory_graph(graph, ids[[0, 4]], [np.array([0, 1, 2, 3])], out, max_nodes=3)
    assert summary == (5, 4, 2, 1, 3)
    assert summary.line() == "5 nodes (drew the 3 most visited), 4 edges, 2 critical nodes, 1 reconstructed paths"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_greedy_read_stats_match_a_brute_force_oracle(maze_run, capsys):
    """The statistics of `inspect --episodes` against a plain loop that finds each read's nearest node among
    all alive nodes; both agents are restored from the same checkpoint, so they play the same episodes."""
    from gbmr.analysis.memory_reads import greedy_read_stats
    from gbmr.envs import make_env

    config, agent = load_trained_agent(maze_run)
    stats = greedy_read_stats(agent, make_env(config.env, config.seed, training=False), episodes=2, seed=50)
    _, oracle = load_trained_agent(maze_run)
    env, graph = make_env(config.env, config.seed, training=False), oracle.graph
    keys = graph.node_keys[graph.alive_nodes()].astype(np.float64)
    nearest, returns = [], []
    for episode in range(2):
        obs, _ = env.reset(seed=50 + episode)
        done, total = False, 0.0
        while not done:
            nearest.append(np.sqrt(((keys - oracle.embed(obs[None])) ** 2).sum(1)).min())
            obs, reward, terminated, truncated, _ = env.step(int(oracle.act(obs[None], explore=False)[0]))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    nearest = np.array(nearest)
    assert stats.steps == nearest.size and stats.mean_return == pytest.approx(np.mean(returns))
    assert stats.exact == pytest.approx(np.mean(nearest == 0)) and stats.median_nearest == pytest.approx(
        np.median(nearest))
    assert stats.within_threshold == pytest.approx(np.mean(nearest < config.agent.dist_th))
    assert stats.median_gap >= 0.0
    capsys.readouterr()
    assert main(["inspect", str(maze_run), "--episodes", "2", "--seed", "50"]) == 0
    assert stats.line() in capsys.readouterr().out
    assert main(["inspect", str(maze_run), "--episodes", "-1"]) == 2
