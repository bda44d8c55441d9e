"""Every bad input exits with code 2 and a message naming the problem, never a traceback."""

import subprocess
import sys

import pytest

from gbmr.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--algo", "dqm", "--env", "CartPole-v1"], "unknown algorithm 'dqm'. Did you mean 'dqn'?"),
        (["train", "--algo", "dqn", "--env", "CartPol-v1"],
         "unknown environment id 'CartPol-v1'. Did you mean 'CartPole-v1'?"),
        (["train", "--algo", "dqn", "--env", "CartPole-v1", "--set", "lrr=3"], "unknown config key for dqn 'lrr'"),
        (["train", "--algo", "dqn", "--env", "CartPole-v1", "--set", "lr=fast"], "config key 'lr' expects float"),
        (["train", "--algo", "dqn", "--env", "CartPole-v1", "--set", "loss=l1"], "unknown loss 'l1'"),
        (["train", "--algo", "dqn", "--env", "Pendulum-v1"], "dqn needs a Discrete action space"),
        (["train", "--algo", "gbmr-sweep", "--env", "GridMaze-Paper-v0", "--set", "backup_eta=2"],
         "backup_eta must lie in [0, 1] (0: use eta), got 2.0"),
        (["train", "--algo", "gbmr-dqn", "--env", "CartPole-v1", "--set", "memory.sweep_min_visits=0"],
         "sweep_min_visits must be >= 1, got 0"),
        (["train", "--algo", "dqn", "--env", "CartPole-v1", "--config", "/no/such.yaml"], "does not exist"),
        (["train", "--resume", "/no/such/run"], "run folder '/no/such/run' does not exist"),
        (["eval", "/no/such/run"], "does not exist"),
        (["train", "--env", "CartPole-v1"], "needs --algo and --env"),
    ],
)
def test_bad_input_exits_2_with_message(capsys, tmp_path, argv, message):
    code, err = run_cli(capsys, *[a.replace("/no/such", str(tmp_path / "no/such")) for a in argv])
    assert code == 2
    assert message.replace("/no/such", str(tmp_path / "no/such")) in err
    assert "Traceback" not in err


def test_folder_that_is_not_a_run(capsys, tmp_path):
    code, err = run_cli(capsys, "eval", str(tmp_path))
    assert code == 2 and "is not a run folder" in err


def test_existing_run_dir_is_not_overwritten(capsys, tmp_path):
    (tmp_path / "config.yaml").write_text("algo: dqn\nenv: CartPole-v1\n")
    code, err = run_cli(capsys, "train", "--algo", "dqn", "--env", "CartPole-v1", "--run-dir", str(tmp_path))
    assert code == 2 and "--resume" in err


def test_argparse_errors_exit_2():
    proc = subprocess.run([sys.executable, "-m", "gbmr", "train", "--total-steps", "many"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid int value" in proc.stderr


def test_list_shows_algorithms_and_envs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("dqn", "CartPole-v1", "MinAtar/Breakout-v1", "ALE/MsPacman-v5", "GridMaze-Paper-v0"):
        assert name in out
