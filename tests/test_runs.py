"""Runs: the folder format, reproducibility, exact resume after SIGKILL, evaluation, and DQN learning."""

import json

import pytest
import torch
import yaml
from run_helpers import assert_resume_equals_uninterrupted, read_rows

from gbmr.cli import main
from gbmr.core.errors import GbmrError
from gbmr.core.run_dir import CsvLog

SMALL = ["--algo", "dqn", "--env", "CartPole-v1", "--seed", "3", "--total-steps", "3000", "--no-progress",
         "--set", "learning_starts=300", "--set", "train_freq=4", "--set", "gradient_steps=1",
         "--set", "eval_every=1000", "--set", "eval_episodes=2", "--set", "checkpoint_every=250",
         "--set", "batch_size=32", "--set", "hidden=[32]", "--set", "target_update_interval=200",
         "--set", "n_step=3", "--set", "prioritized=true"]


def train(run_dir, *extra):
    assert main(["train", *SMALL, "--run-dir", str(run_dir), *extra]) == 0


@pytest.mark.parametrize("env_id", ["MinAtar/Breakout-v1", "ALE/Pong-v5", "GridMaze-S7-v0", "GridMaze-Paper-v0"])
def test_dqn_runs_on_every_family(tmp_path, env_id):
    """The CNN and MLP torsos fit each family's observations; a short run trains and evaluates."""
    run = tmp_path / "run"
    assert main(["train", "--algo", "dqn", "--env", env_id, "--total-steps", "300", "--no-progress",
                 "--set", "learning_starts=100", "--set", "buffer_size=1000", "--set", "eval_episodes=1",
                 "--set", "eval_every=300",
                 "--run-dir", str(run)]) == 0
    rows = read_rows(run / "metrics.csv")
    assert rows[0][:4] == ["step", "episode", "return", "length"]
    assert len(read_rows(run / "eval.csv")) == 2


def test_run_folder_format(tmp_path):
    run = tmp_path / "run"
    train(run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["algo"] == "dqn" and config["env"] == "CartPole-v1" and config["agent"]["n_step"] == 3
    metrics = read_rows(run / "metrics.csv")
    assert metrics[0][:4] == ["step", "episode", "return", "length"] and "loss" in metrics[0]
    assert int(metrics[-1][0]) <= 3000 and len(metrics) > 10
    evals = read_rows(run / "eval.csv")
    assert [int(r[0]) for r in evals[1:]] == [1000, 2000, 3000]
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["runner"]["step"] == 3000


def test_same_seed_same_metrics(tmp_path):
    train(tmp_path / "a")
    train(tmp_path / "b")
    assert read_rows(tmp_path / "a" / "metrics.csv") == read_rows(tmp_path / "b" / "metrics.csv")
    assert read_rows(tmp_path / "a" / "eval.csv") == read_rows(tmp_path / "b" / "eval.csv")


def test_csv_log_resumes_by_truncating_and_refuses_other_columns(tmp_path):
    """Resuming keeps the checkpoint's rows; a log with another header (a gbmr version that added a column)
    is refused untouched rather than appended to under the wrong names."""
    path = tmp_path / "eval.csv"
    log = CsvLog(path, ("step", "mean_return"))
    for step in (1, 2, 3):
        log.write({"step": step, "mean_return": step / 2})
    log.close()
    resumed = CsvLog(path, ("step", "mean_return"), resume_rows=2)
    resumed.write({"step": 9, "mean_return": 0.25})
    resumed.close()
    assert path.read_text().splitlines() == ["step,mean_return", "1,0.5", "2,1", "9,0.25"]
    before = path.read_text()
    with pytest.raises(GbmrError, match=r"new: \['x_pos_p50'\], gone: none"):
        CsvLog(path, ("step", "mean_return", "x_pos_p50"), resume_rows=2)
    assert path.read_text() == before


def test_resume_without_its_checkpoint_refuses_and_keeps_the_logs(tmp_path, capsys):
    """A folder copied without checkpoints/ must not restart from step 0 over its logs; its config restarts it."""
    run = tmp_path / "run"
    train(run)
    logs = {name: (run / name).read_text() for name in ("metrics.csv", "eval.csv", "learner.csv")}
    (run / "checkpoints" / "latest.pt").unlink()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "logged 3000 steps but has no checkpoint" in err and "--algo dqn --env CartPole-v1 --config" in err
    assert {name: (run / name).read_text() for name in logs} == logs
    again = tmp_path / "again"
    assert main(["train", "--algo", "dqn", "--env", "CartPole-v1", "--config", str(run / "config.yaml"),
                 "--run-dir", str(again), "--no-progress"]) == 0
    assert read_rows(again / "eval.csv") == read_rows(run / "eval.csv")


@pytest.mark.parametrize("num_envs", ["1", "2"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, num_envs):
    assert_resume_equals_uninterrupted([*SMALL, "--num-envs", num_envs], tmp_path, 3000,
                                       logs=("metrics.csv", "eval.csv"))


def test_eval_reports_statistics(tmp_path, capsys):
    run = tmp_path / "run"
    train(run)
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 episodes" in out and "mean" in out and "max" in out


def test_eval_video(tmp_path):
    run = tmp_path / "run"
    train(run)
    assert main(["eval", str(run), "--episodes", "1", "--video"]) == 0
    assert list((run / "videos").glob("*.mp4"))


@pytest.mark.slow
def test_dqn_learns_cartpole(tmp_path):
    """The classic preset reaches a greedy evaluation return >= 195 within 10k steps (seed 1)."""
    run = tmp_path / "run"
    assert main(["train", "--algo", "dqn", "--env", "CartPole-v1", "--seed", "1", "--total-steps", "10000",
                 "--set", "eps_fraction=0.75", "--no-progress", "--run-dir", str(run)]) == 0
    evals = [float(r[1]) for r in read_rows(run / "eval.csv")[1:]]
    assert max(evals) >= 195, evals
