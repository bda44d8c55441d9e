"""The policy-gradient family end to end: learning on CartPole, continuous actions, exact resume after SIGKILL,
and the errors for what an algorithm cannot take."""

import numpy as np
import pytest
import torch
from run_helpers import assert_resume_equals_uninterrupted, read_rows

from gbmr.agents import agent_class
from gbmr.cli import main
from gbmr.config import build_config
from gbmr.core.run_dir import RunDir
from gbmr.experiment.train import _runner

PPO_SMALL = ["--algo", "ppo", "--env", "CartPole-v1", "--seed", "2", "--total-steps", "6000", "--num-envs", "2",
             "--no-progress", "--set", "n_steps=64", "--set", "hidden=[16]", "--set", "eval_every=2000",
             "--set", "eval_episodes=2", "--set", "checkpoint_every=250"]


def train(*args):
    assert main(["train", *args]) == 0


def episode_returns(run):
    return np.array([float(row[2]) for row in read_rows(run / "metrics.csv")[1:]])


def evaluations(run):
    return [float(row[1]) for row in read_rows(run / "eval.csv")[1:]]


@pytest.mark.slow
def test_ppo_solves_cartpole(tmp_path):
    """The classic preset (rl-zoo's tuned PPO) reaches a greedy return of 475+ within 60k steps
    (seed 1: 500 from 25k steps on)."""
    run = tmp_path / "run"
    train("--algo", "ppo", "--env", "CartPole-v1", "--seed", "1", "--total-steps", "60000", "--no-progress",
          "--run-dir", str(run))
    assert max(evaluations(run)) >= 475, evaluations(run)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["reinforce", "a2c"])
def test_reinforce_and_a2c_improve_on_cartpole(tmp_path, algo):
    """Their default presets: the last 20 training episodes of 30k steps average 4x the first 20's (seed 1:
    ~20 -> 150+), and a greedy evaluation passes 150."""
    run = tmp_path / "run"
    train("--algo", algo, "--env", "CartPole-v1", "--seed", "1", "--total-steps", "30000", "--no-progress",
          "--set", "eval_every=10000", "--run-dir", str(run))
    returns = episode_returns(run)
    assert returns[-20:].mean() > 4 * returns[:20].mean(), (returns[:20].mean(), returns[-20:].mean())
    assert max(evaluations(run)) >= 150, evaluations(run)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "reinforce", "actor-critic"])
def test_continuous_actions_run_on_pendulum(tmp_path, algo):
    """The Gaussian head on a Box action space: a short run trains, evaluates and writes its metrics."""
    run = tmp_path / "run"
    train("--algo", algo, "--env", "Pendulum-v1", "--total-steps", "600", "--no-progress", "--num-envs", "2",
          "--set", "eval_episodes=1", "--set", "eval_every=600", "--set", "hidden=[16]", "--run-dir", str(run))
    header = read_rows(run / "metrics.csv")[0]
    assert "policy_loss" in header and len(read_rows(run / "eval.csv")) == 2


def test_ppo_same_seed_same_run(tmp_path):
    train(*PPO_SMALL, "--set", "checkpoint_every=6000", "--run-dir", str(tmp_path / "a"))
    train(*PPO_SMALL, "--set", "checkpoint_every=6000", "--run-dir", str(tmp_path / "b"))
    assert read_rows(tmp_path / "a" / "metrics.csv") == read_rows(tmp_path / "b" / "metrics.csv")


def test_ppo_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Checkpoints fall mid-rollout (every 250 steps, rollouts of 128): the storage and the sampling generator
    come back with the run."""
    assert_resume_equals_uninterrupted(PPO_SMALL, tmp_path, 6000)


def test_learner_metrics_have_rows_of_their_own(tmp_path):
    """One learner.csv row per logging window with the mean over its updates: 2 envs x 64 steps a rollout,
    so 7 or 8 updates per 1000 steps (46 in 6000), whatever the episodes did."""
    run = tmp_path / "run"
    train(*PPO_SMALL, "--set", "checkpoint_every=6000", "--run-dir", str(run))
    rows = read_rows(run / "learner.csv")
    assert rows[0][:3] == ["step", "updates", "policy_loss"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1000, 6001, 1000))
    assert sum(int(r[1]) for r in rows[1:]) == 6000 // 128


@pytest.mark.parametrize("args, message", [
    (["--algo", "ppo", "--set", "model=nature_cnn"], "does not fit"),
    (["--algo", "ppo", "--set", "activation=sigmoid"], "unknown activation"),
    (["--algo", "reinforce", "--set", "loss_per=batch"], "unknown loss_per"),
    (["--algo", "a2c", "--set", "optimizer=sgd"], "unknown optimizer"),
    (["--algo", "ppo", "--set", "num_minibatches=0"], "num_minibatches"),
])
def test_bad_policy_gradient_config_is_a_clear_error(tmp_path, capsys, args, message):
    code = main(["train", *args, "--env", "CartPole-v1", "--total-steps", "100", "--no-progress",
                 "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert message in capsys.readouterr().err


MEMORY = ["--env", "popgym-RepeatPreviousEasy-v0", "--seed", "1", "--no-progress"]


@pytest.mark.slow
def test_ppo_transformer_solves_the_memory_task_that_ppo_mlp_cannot(tmp_path):
    """Naming the suit dealt 3 steps ago: the memory presets, 30k steps (seed 1). The Transformer over the last
    4 observations reaches the oracle's +1 (from 10k steps on); the MLP stays at chance (-0.5)."""
    train("--algo", "ppo-transformer", *MEMORY, "--run-dir", str(tmp_path / "transformer"))
    train("--algo", "ppo", *MEMORY, "--run-dir", str(tmp_path / "mlp"))
    assert evaluations(tmp_path / "transformer")[-1] >= 0.9, evaluations(tmp_path / "transformer")
    assert max(evaluations(tmp_path / "mlp")) < -0.3, evaluations(tmp_path / "mlp")


TRANSFORMER_SMALL = ["--algo", "ppo-transformer", "--env", "CartPole-v1", "--seed", "2", "--total-steps", "4000",
                     "--num-envs", "2", "--no-progress", "--set", "n_steps=32", "--set", "sequence_chunk=8",
                     "--set", "lookback=6", "--set", "d_model=16", "--set", "num_heads=2", "--set", "hidden=[16]",
                     "--set", "eval_every=2000", "--set", "eval_episodes=2", "--set", "checkpoint_every=150"]


def test_ppo_transformer_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """The KV cache and the context before the rollout are in the checkpoint (mid-rollout: every 150 steps)."""
    assert_resume_equals_uninterrupted(TRANSFORMER_SMALL, tmp_path, 4000)


def test_ppo_transformer_trains_on_what_it_acted_on(tmp_path):
    """Before the first gradient step of an update, the training path (windows of sequence_chunk steps after
    lookback - 1 of context) gives the log-probabilities acting recorded with the KV cache, on every rollout:
    the cache is rebuilt with the new weights after each update."""
    config = build_config("ppo-transformer", "CartPole-v1", agent_class("ppo-transformer").Config, "classic",
                          overrides=["n_steps=32", "sequence_chunk=8", "lookback=6", "d_model=16", "num_heads=2",
                                     "hidden=[16]", "eval_episodes=0"], total_steps=256, num_envs=2, seed=3)
    runner = _runner(config, RunDir(tmp_path / "run"), progress=False)
    learner = runner.agent.learner
    gaps = []
    original = learner.learn

    def checked_learn(batch):
        units = torch.arange(learner.training_units(batch.steps))
        with torch.no_grad():
            log_probs, _, _, flat = learner.evaluate_units(batch, units)
        recorded = batch.flat("log_probs")[flat]
        gaps.append((log_probs - recorded).abs().max().item())
        return original(batch)

    learner.learn = checked_learn
    (tmp_path / "run").mkdir()
    runner.train()
    assert len(gaps) == 4 and max(gaps) < 1e-5, gaps
