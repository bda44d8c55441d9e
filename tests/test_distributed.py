"""Distributed runs (Ray actors + one learner): sync equals one process, async versions and lag, an actor killed
mid-run, off-policy agents, and the one-line errors."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from run_helpers import assert_resume_equals_uninterrupted, read_rows

from gbmr.cli import main
from gbmr.core.run_dir import RunDir


@pytest.fixture(scope="module", autouse=True)
def shared_ray():
    """One local Ray for the module's in-process runs (the runner uses a running Ray and leaves it up): starting
    one per run cost ~5 s each. Runs in subprocesses start their own."""
    from gbmr.runners.distributed import connect_ray

    ray = connect_ray("local", 2)
    yield
    ray.shutdown()


PPO = ["--algo", "ppo", "--env", "CartPole-v1", "--seed", "3", "--num-envs", "4", "--no-progress",
       "--set", "n_steps=32", "--set", "hidden=[16]", "--set", "eval_every=1024", "--set", "eval_episodes=2",
       "--set", "checkpoint_every=1024"]


def train(*args):
    assert main(["train", *args]) == 0


def episodes(run):
    """(step, episode, return, length) of every metrics.csv row."""
    return [tuple(float(x) for x in row[:4]) for row in read_rows(run / "metrics.csv")[1:]]


def final_weights(run):
    return RunDir(run).load_checkpoint()["agent"]["policy"]["net"]


def distributed_rows(run):
    header, *rows = read_rows(run / "distributed.csv")
    return [dict(zip(header, map(int, row), strict=True)) for row in rows]


def test_sync_with_two_actors_is_the_single_process_run(tmp_path):
    """Env i samples from its own stream wherever it lives, so 2 actors x 2 envs act as 1 process x 4 envs:
    the same episodes, and after 3 updates the same weights up to the rounding of differently batched matmuls."""
    single, split = tmp_path / "single", tmp_path / "split"
    train(*PPO, "--total-steps", "384", "--run-dir", str(single))
    train(*PPO, "--total-steps", "384", "--actors", "2", "--run-dir", str(split))
    assert episodes(single) == episodes(split) and len(episodes(single)) > 5
    for name, tensor in final_weights(single).items():
        torch.testing.assert_close(final_weights(split)[name], tensor, atol=1e-5, rtol=1e-4)
    rows = distributed_rows(split)
    assert [r["version"] for r in rows] == [0, 0, 1, 1, 2, 2]  # every batch collected with the latest weights
    assert all(r["lag"] == 0 for r in rows)


@pytest.mark.parametrize("correction", ["clip", "vtrace"])
def test_async_tags_versions_measures_lag_and_drops_stale_batches(tmp_path, correction):
    run = tmp_path / "run"
    train(*PPO, "--total-steps", "2048", "--actors", "2", "--mode", "async", "--set", "max_lag=0",
          "--set", f"correction={correction}", "--run-dir", str(run))
    assert np.isfinite([float(row[2]) for row in read_rows(run / "learner.csv")[1:]]).all()
    rows = distributed_rows(run)
    for actor in (0, 1):
        versions = [r["version"] for r in rows if r["actor"] == actor]
        assert versions == sorted(versions)  # monotone per actor
    assert all(r["lag"] == r["learner_version"] - r["version"] >= 0 for r in rows)
    assert any(r["lag"] > 0 for r in rows)  # the actors ran ahead of the learner at least once
    assert all(r["dropped"] == (r["lag"] > 0) for r in rows)  # max_lag 0: only fresh batches are learnt from
    accepted = sum(1 for r in rows if not r["dropped"])
    assert accepted // 2 - rows[-1]["learner_version"] in (0, 1)  # an update per 2 accepted slices
    assert [int(r[1]) for r in read_rows(run / "metrics.csv")[1:]] == list(range(1, len(episodes(run)) + 1))


def test_a_killed_actor_is_replaced_and_the_run_is_unchanged(tmp_path, monkeypatch):
    """SIGKILL actor 0 after the second batch: its replacement starts from its state after the last batch
    the learner took, so the run equals an uninterrupted one: same steps, same episodes, none twice."""
    from gbmr.runners.distributed import DistributedRunner

    calm, hit = tmp_path / "calm", tmp_path / "hit"
    train(*PPO, "--total-steps", "768", "--actors", "2", "--run-dir", str(calm))
    original = DistributedRunner._advance
    calls = {"n": 0, "restarts": 0}

    def advance_then_kill(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(self.ray.get(self.actors[0].pid.remote()), signal.SIGKILL)
        calls["restarts"] = self.restarts

    monkeypatch.setattr(DistributedRunner, "_advance", advance_then_kill)
    train(*PPO, "--total-steps", "768", "--actors", "2", "--run-dir", str(hit))
    assert calls["restarts"] == 1
    assert episodes(hit) == episodes(calm)
    assert RunDir(hit).load_checkpoint()["runner"]["step"] == 768


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_dqn_runs_distributed(tmp_path, mode):
    """Async, the learner observes one actor's slice of the envs at a time. The budget, 1010, is no multiple of
    a batch (50 vector steps): the last batch taken counts and observes only its first 10 steps (async) or is
    asked for 5 (sync: 2 envs a step), so the run stops at 1010 steps exactly."""
    run = tmp_path / "run"
    train("--algo", "dqn", "--env", "CartPole-v1", "--total-steps", "1010", "--num-envs", "2", "--actors", "2",
          "--mode", mode, "--no-progress", "--set", "learning_starts=200", "--set", "actor_steps=50",
          "--set", "n_step=1", "--set", "eval_every=500", "--set", "eval_episodes=2", "--run-dir", str(run))
    learner = read_rows(run / "learner.csv")
    checkpoint = RunDir(run).load_checkpoint()
    assert len(learner) > 1 and checkpoint["runner"]["step"] == 1010
    assert np.isfinite(float(learner[-1][2]))
    rows = distributed_rows(run)
    if mode == "sync":
        observed = 1010
    else:  # each batch: 50 vector steps of one env, the last one cut to 10
        observed = sum(50 for r in rows if not r["dropped"]) - (0 if rows[-1]["dropped"] else 40)
    assert checkpoint["agent"]["counters"]["steps"] == observed and len(rows) == 2 * 10 + (2 if mode == "sync" else 1)
    metrics = read_rows(run / "metrics.csv")[1:]
    assert [int(r[1]) for r in metrics] == list(range(1, len(metrics) + 1))
    assert max(int(r[0]) for r in metrics) <= 1010


def test_sac_runs_async_on_slices(tmp_path):
    """SAC's learner observes one actor's slice at a time (its replay adds slices, frames per env): every step
    sent is observed once, learning starts, and the run stops at the budget."""
    run = tmp_path / "run"
    train("--algo", "sac", "--env", "Pendulum-v1", "--total-steps", "600", "--num-envs", "2", "--actors", "2",
          "--mode", "async", "--no-progress", "--set", "learning_starts=200", "--set", "actor_steps=50",
          "--set", "batch_size=32", "--set", "eval_every=0", "--run-dir", str(run))
    checkpoint = RunDir(run).load_checkpoint()
    assert checkpoint["runner"]["step"] == 600
    observed = sum(50 for r in distributed_rows(run) if not r["dropped"])
    assert checkpoint["agent"]["counters"]["steps"] == observed >= 500
    assert checkpoint["agent"]["learner"]["updates"] > 0


def test_dqn_async_with_n_step_returns_and_frame_stacks(tmp_path):
    """Async slices arrive in any interleaving; the replay keeps each env's n-step window and frames, so every
    step each actor sent is observed once and, no Pong episode ending within 400 steps, every env's window still
    holds its last n-1 = 2 steps: all the others are stored (tests/test_replay*.py check the stored values)."""
    run = tmp_path / "run"
    train("--algo", "dqn", "--env", "ALE/Pong-v5", "--total-steps", "400", "--num-envs", "2", "--actors", "2",
          "--mode", "async", "--no-progress", "--set", "learning_starts=100", "--set", "actor_steps=20",
          "--set", "n_step=3", "--set", "frame_stack=4", "--set", "buffer_size=1000", "--set", "torso=mlp",
          "--set", "hidden=[32]", "--set", "env_options.screen_size=16", "--set", "eval_episodes=0",
          "--run-dir", str(run))
    checkpoint = RunDir(run).load_checkpoint()
    rows = distributed_rows(run)
    per_env = [sum(20 for r in rows if r["actor"] == k and not r["dropped"]) for k in (0, 1)]  # 1 env an actor
    agent, pending = checkpoint["agent"], [min(2, steps) for steps in per_env]
    assert checkpoint["runner"]["step"] == 400 and len(rows) == 400 // 20
    assert agent["counters"]["steps"] == sum(per_env)
    assert agent["buffer"]["win_count"].tolist() == pending
    assert int(agent["buffer"]["size"]) == sum(per_env) - sum(pending)
    assert len(agent["buffer"]["store"]["frames"]) < 2 * sum(per_env)  # frames shared: ~1 per step, not 8
    assert np.isfinite(float(read_rows(run / "learner.csv")[-1][2]))


@pytest.mark.parametrize(("algo", "options"), [("nec", []), ("gq", ["--set", "learning_starts=100"]),
                                               ("mfec", []), ("gbmr", [])])
def test_memory_agents_act_centrally_as_one_process(tmp_path, algo, options):
    """Central inference: the learner's agent acts for both actors' envs each vector step, so 2 actors x 2 envs
    are 1 process x 4 envs: the same episodes, learner metrics and evaluations (at the same steps)."""
    args = ["--algo", algo, "--env", "CartPole-v1", "--seed", "3", "--num-envs", "4", "--total-steps", "600",
            "--no-progress", "--set", "eval_every=400", "--set", "eval_episodes=2", *options]
    single, split = tmp_path / "single", tmp_path / "split"
    train(*args, "--run-dir", str(single))
    train(*args, "--actors", "2", "--run-dir", str(split))
    assert episodes(single) == episodes(split) and len(episodes(single)) > 5
    for name in ("learner.csv", "eval.csv"):
        assert read_rows(split / name) == read_rows(single / name) and len(read_rows(single / name)) > 1, name
    assert RunDir(split).load_checkpoint()["runner"]["step"] == 600


def test_a_killed_actor_is_rebuilt_in_place_for_central_inference(tmp_path, monkeypatch):
    """NEC: SIGKILL actor 0 before the first checkpoint (its replacement replays every action from the start)
    and actor 1 after it (replays from the checkpoint's state): the run goes on and equals one process."""
    from gbmr.runners.distributed import DistributedRunner

    args = ["--algo", "nec", "--env", "CartPole-v1", "--seed", "3", "--num-envs", "4", "--total-steps", "600",
            "--no-progress", "--set", "eval_every=400", "--set", "eval_episodes=2", "--set", "checkpoint_every=200"]
    single, hit = tmp_path / "single", tmp_path / "hit"
    train(*args, "--run-dir", str(single))
    original = DistributedRunner._act_centrally
    calls = {"n": 0, "restarts": 0}

    def step_then_kill(self):
        original(self)
        calls["n"] += 1
        if calls["n"] in (30, 80):  # steps 120 and 320
            os.kill(self.ray.get(self.actors[calls["n"] // 80].pid.remote()), signal.SIGKILL)
        calls["restarts"] = self.restarts

    monkeypatch.setattr(DistributedRunner, "_act_centrally", step_then_kill)
    train(*args, "--actors", "2", "--run-dir", str(hit))
    assert calls["restarts"] == 2
    assert episodes(hit) == episodes(single) and len(episodes(single)) > 5
    for name in ("learner.csv", "eval.csv"):
        assert read_rows(hit / name) == read_rows(single / name), name
    assert RunDir(hit).load_checkpoint()["runner"]["step"] == 600


@pytest.mark.slow
def test_a_killed_memory_agent_run_resumes_to_the_uninterrupted_run(tmp_path):
    """NEC with central inference, its learner (and local Ray) SIGKILLed twice and resumed: the memory comes
    back from the checkpoint, the actors' envs from their states in it, and the run writes what an
    uninterrupted one writes (~33 s here, most of it two subprocesses starting torch and Ray)."""
    args = ["--algo", "nec", "--env", "CartPole-v1", "--seed", "5", "--num-envs", "4", "--total-steps", "2000",
            "--actors", "2", "--no-progress", "--set", "checkpoint_every=128", "--set", "eval_every=1000",
            "--set", "eval_episodes=2"]
    assert_resume_equals_uninterrupted(args, tmp_path, 2000)


@pytest.mark.parametrize(("args", "message"), [
    (["--algo", "ppo-transformer", "--num-envs", "2", "--actors", "2"], "does not run with --actors"),
    (["--algo", "ppo", "--num-envs", "3", "--actors", "2"], "must be a multiple of --actors"),
    (["--algo", "gbmr-dqn", "--num-envs", "2", "--actors", "2", "--mode", "async"], "replay-slot to graph-node"),
    (["--algo", "ppo", "--num-envs", "2", "--actors", "2", "--mode", "fast"], "mode"),
    (["--algo", "nec", "--num-envs", "2", "--actors", "2", "--mode", "async"], "memory is learner-side"),
])
def test_bad_distributed_configs_get_one_line_errors(tmp_path, capsys, args, message):
    assert main(["train", *args, "--env", "CartPole-v1", "--total-steps", "100", "--no-progress",
                 "--run-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ppo_with_two_actors_solves_cartpole(tmp_path):
    """The classic preset (8 envs) split over 2 actors reaches a greedy 475+ within 60k steps, as one process."""
    run = tmp_path / "run"
    train("--algo", "ppo", "--env", "CartPole-v1", "--seed", "1", "--total-steps", "60000", "--actors", "2",
          "--no-progress", "--run-dir", str(run))
    returns = [float(row[1]) for row in read_rows(run / "eval.csv")[1:]]
    assert max(returns) >= 475, returns


@pytest.mark.slow
def test_a_killed_learner_resumes_to_the_uninterrupted_run(tmp_path):
    """SIGKILL the whole sync run twice (learner and, with it, its local Ray) and resume it: the actors restart
    from the states in the checkpoint, and the run writes what an uninterrupted one writes."""
    args = [*PPO, "--total-steps", "30720", "--actors", "2", "--set", "checkpoint_every=512",
            "--set", "eval_every=10240"]
    assert_resume_equals_uninterrupted(args, tmp_path, 30720,
                                       logs=("metrics.csv", "eval.csv", "learner.csv", "distributed.csv"))


@pytest.mark.slow
def test_dqn_async_improves_on_cartpole(tmp_path):
    """Two actors collect with whatever weights they last got, the learner replays it all: from a first greedy
    evaluation under 50 to 150+ within 10k steps (timing-dependent: three runs here peaked at 197, 235, 212)."""
    run = tmp_path / "run"
    train("--algo", "dqn", "--env", "CartPole-v1", "--seed", "1", "--total-steps", "10000", "--num-envs", "2",
          "--actors", "2", "--mode", "async", "--set", "n_step=1", "--set", "actor_steps=32",
          "--set", "eps_fraction=0.75", "--set", "eval_every=1000", "--no-progress", "--run-dir", str(run))
    returns = [float(row[1]) for row in read_rows(run / "eval.csv")[1:]]
    assert returns[0] < 50 and max(returns) >= 150, returns
    assert max(r["lag"] for r in distributed_rows(run)) > 0
