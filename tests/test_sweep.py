"""`gbmr sweep`: a grid of tiny runs completes in worker processes, is re-run without redoing finished runs,
resumes an interrupted run, feeds `gbmr compare`, runs on Ray, and rejects bad sweep files with exit code 2."""

import contextlib
import io
import json
import tempfile

import pytest
import yaml

from gbmr.agents import agent_class
from gbmr.cli import main
from gbmr.core.errors import GbmrError
from gbmr.core.run_dir import RunDir
from gbmr.experiment.sweep import SWEEPS_DIR, folder_name, load_sweep

TINY = yaml.safe_load((SWEEPS_DIR / "tiny.yaml").read_text())  # DQN, CartPole, lr 1e-3 / 3e-3, seeds 1, 2, 300 steps
TINY_RUNS = {f"dqn_CartPole-v1_lr={lr}_s{seed}": (float(lr), seed) for lr in ("0.001", "0.003") for seed in (1, 2)}


def write_sweep(folder, **changes):
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def sweep(*argv):
    """(exit code, stdout, stderr) of `gbmr sweep ARGV...`, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["sweep", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def status(path):
    return json.loads(RunDir(path).status.read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny sweep run once with two worker processes: (out folder, exit code, stdout)."""
    out = tmp_path_factory.mktemp("sweep") / "runs"
    code, stdout, _ = sweep(SWEEPS_DIR / "tiny.yaml", "--out", out, "--workers", 2)
    return out, code, stdout


def test_every_grid_point_runs_to_completion_in_workers(finished):
    out, code, stdout = finished
    assert code == 0, stdout
    assert {p.name for p in out.iterdir()} == set(TINY_RUNS)
    for name, (lr, seed) in TINY_RUNS.items():
        run = RunDir(out / name)
        assert status(run.path) == {"status": "complete", "step": 300, "total_steps": 300}
        config = run.read_config()
        assert (config["agent"]["lr"], config["seed"]) == (lr, seed)
        assert config["agent"]["hidden"] == [32] and config["eval_every"] == 100
        assert [line.split(",")[0] for line in run.eval.read_text().splitlines()[1:]] == ["100", "200", "300"]
        assert f"started {name} (" in stdout
    assert "4 started and 0 resumed runs finished, 0 skipped (complete), 0 failed" in stdout


def test_rerun_skips_finished_runs(finished):
    out, _, _ = finished
    mtimes = {p.name: (p / "metrics.csv").stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, _ = sweep(SWEEPS_DIR / "tiny.yaml", "--out", out, "--workers", 2)
    assert code == 0
    assert "0 started and 0 resumed runs finished, 4 skipped (complete), 0 failed" in stdout
    assert {p.name: (p / "metrics.csv").stat().st_mtime_ns for p in out.iterdir()} == mtimes
    code, stdout, _ = sweep(SWEEPS_DIR / "tiny.yaml", "--out", out, "--dry-run")
    assert code == 0 and stdout.count("complete  dqn_CartPole-v1_") == 4 and "300/300 steps" in stdout


def test_compare_builds_a_report_over_the_sweep(finished, tmp_path, capsys):
    out, _, _ = finished
    assert main(["compare", str(out), "--out", str(tmp_path / "report"), "--reps", "200"]) == 0
    scores = (tmp_path / "report" / "scores.md").read_text()
    assert "dqn (lr=0.001)" in scores and "dqn (lr=0.003)" in scores
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_changed_sweep_does_not_reuse_a_folder_with_another_config(finished):
    out, _, _ = finished
    code, _, err = sweep(write_sweep(out.parent, set={**TINY["set"], "eval_every": 50}), "--out", out)
    assert code == 2
    assert "holds a run with another config (eval_every: 100 there, 50 in the sweep)" in err


def test_failed_run_is_reported_and_resumed_on_the_next_sweep(tmp_path, monkeypatch):
    """Seed 1 crashes right after its first checkpoint (step 100); seed 2 still finishes. The next sweep resumes
    seed 1 from that checkpoint and skips seed 2."""
    path = write_sweep(tmp_path, seeds=[1, 2], grid={"lr": [1e-3]})
    out = tmp_path / "runs"
    crashed, seed2 = out / "dqn_CartPole-v1_lr=0.001_s1", out / "dqn_CartPole-v1_lr=0.001_s2"
    save = RunDir.save_checkpoint

    def crash_seed_1(self, state):
        save(self, state)
        if self.path == crashed:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(RunDir, "save_checkpoint", crash_seed_1)
    code, stdout, stderr = sweep(path, "--out", out, "--no-progress")
    assert code == 1 and "Traceback" in stderr and "in crash_seed_1" in stderr
    assert f"FAILED {crashed.name} (started" in stdout and "RuntimeError: simulated crash" in stdout
    assert "1 started and 0 resumed runs finished, 0 skipped (complete), 1 failed" in stdout
    assert status(crashed)["status"] == "running" and RunDir(crashed).latest.is_file()
    assert status(seed2)["status"] == "complete"
    code, stdout, _ = sweep(path, "--out", out, "--dry-run")
    assert f"partial   {crashed.name}" in stdout and f"complete  {seed2.name}" in stdout

    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    seed2_mtime = (seed2 / "metrics.csv").stat().st_mtime_ns
    code, stdout, _ = sweep(path, "--out", out, "--no-progress")
    assert code == 0
    assert f"[1/1] resumed {crashed.name}" in stdout
    assert "0 started and 1 resumed runs finished, 1 skipped (complete), 0 failed" in stdout
    assert status(crashed) == {"status": "complete", "step": 300, "total_steps": 300}
    assert [line.split(",")[0] for line in RunDir(crashed).eval.read_text().splitlines()[1:]] == ["100", "200", "300"]
    assert (seed2 / "metrics.csv").stat().st_mtime_ns == seed2_mtime


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": [1]}, "unknown sweep key 'seed'. Did you mean 'seeds'?"),
        ({"algos": ["dqm"]}, "unknown algorithm 'dqm'. Did you mean 'dqn'?"),
        ({"envs": ["CartPol-v1"]}, "unknown environment id 'CartPol-v1'. Did you mean 'CartPole-v1'?"),
        ({"grid": {"lrr": [1e-3]}}, "unknown config key for dqn 'lrr'"),
        ({"grid": {"lr": ["fast"]}}, "config key 'lr' expects float, got 'fast'"),
        ({"grid": {"lr": 1e-3}}, "grid values of 'lr' must be a non-empty list, got 0.001"),
        ({"set": {"seed": 3}}, "'seed' in 'set': give it with the sweep's 'seeds' key instead"),
        ({"seeds": []}, "'seeds' must be a non-empty list of int"),
        ({"seeds": [1, 1]}, "several runs map to the folder 'dqn_CartPole-v1_lr=0.001_s1'"),
    ],
)
def test_bad_sweep_file_exits_2_before_anything_runs(tmp_path, changes, message):
    path = write_sweep(tmp_path, **changes)
    code, _, err = sweep(path, "--out", tmp_path / "runs")
    assert code == 2
    assert f"error: sweep '{path}': {message}" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_every_algorithm_env_pair_is_checked_on_a_real_env_up_front(tmp_path, monkeypatch):
    def refuse_acrobot(cls, observation_space, action_space):
        if observation_space.shape == (6,):
            raise GbmrError("dqn cannot do Acrobot today")

    monkeypatch.setattr(agent_class("dqn"), "check_spaces", classmethod(refuse_acrobot))
    code, _, err = sweep(write_sweep(tmp_path, envs=["CartPole-v1", "Acrobot-v1"]), "--out", tmp_path / "runs")
    assert code == 2 and "dqn cannot do Acrobot today" in err
    assert not (tmp_path / "runs").exists()


def test_missing_sweep_file_names_the_shipped_ones(tmp_path):
    code, _, err = sweep(tmp_path / "nope.yaml")
    shipped = ("cartpole-dqn-lr, cartpole-ppo-cleanrl, lunarlander-continuous, minatar-dqn, "
               "minatar-inverse-freeway, minatar-pg, pendulum-continuous, tiny")
    assert code == 2 and f"does not exist (shipped sweeps: {shipped})" in err


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` now raises ImportError
    code, _, err = sweep(SWEEPS_DIR / "tiny.yaml", "--out", tmp_path / "runs", "--ray", "local")
    assert code == 2 and "pip install 'gbmr[ray]'" in err
    assert not (tmp_path / "runs").exists()


def test_folder_names_and_override_precedence(tmp_path):
    name = folder_name("dqn", "MinAtar/Breakout-v1", {"lr": 1e-4, "hidden": [64, 64], "double": False}, 3)
    assert name == "dqn_MinAtar-Breakout-v1_lr=0.0001_hidden=64-64_double=false_s3"
    # preset (classic: batch_size 64, lr 2.3e-3) < set < per-algorithm overrides < grid < seeds / total_steps
    path = write_sweep(tmp_path, algos={"dqn": {"lr": 0.2, "agent": {"gamma": 0.9}}}, seeds=[7], total_steps=123,
                       set={"lr": 0.1, "gamma": 0.5, "eval_every": 11, "total_steps": 50}, grid={"lr": [0.3]})
    (run,) = load_sweep(path, tmp_path / "runs").runs
    cfg = run.config
    assert (cfg.agent.lr, cfg.agent.gamma, cfg.agent.batch_size) == (0.3, 0.9, 64)
    assert (cfg.eval_every, cfg.total_steps, cfg.seed, cfg.preset) == (11, 123, 7, "classic")
    assert (run.name, run.state) == ("dqn_CartPole-v1_lr=0.3_s7", "new")


@pytest.mark.slow
def test_ray_local_runs_one_task_per_run(tmp_path_factory, monkeypatch):
    pytest.importorskip("ray")
    # Ray's sockets and logs go to a short folder of their own: AF_UNIX socket paths are capped at 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    tmp_path = tmp_path_factory.mktemp("raysweep")
    out = tmp_path / "runs"
    code, stdout, _ = sweep(write_sweep(tmp_path, grid={"lr": [1e-3]}), "--out", out, "--ray", "local",
                            "--workers", 2)
    assert code == 0, stdout
    assert "in Ray (local)" in stdout and "2 started and 0 resumed runs finished" in stdout
    for seed in (1, 2):
        assert status(out / f"dqn_CartPole-v1_lr=0.001_s{seed}")["status"] == "complete"


def test_a_folder_lacking_a_later_added_key_matches_only_its_default(finished, tmp_path):
    """A run written before a config key existed ran with that key's default: the sweep reuses it when it wants
    the default, and refuses it when it sets another value, or an entry of a mapping (whose default is unknown)."""
    out, _, _ = finished
    name = "dqn_CartPole-v1_lr=0.001_s1"
    old = tmp_path / "runs" / name
    old.mkdir(parents=True)
    config = yaml.safe_load((out / name / "config.yaml").read_text())
    del config["agent"]["loss"]  # as if `loss` had been added to DQN's config since
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    (old / "status.json").write_text((out / name / "status.json").read_text())
    states = {r.name: r.state for r in load_sweep(write_sweep(tmp_path), out=old.parent).runs}
    assert states[name] == "complete"
    other_loss = {**TINY["set"], "agent": {**TINY["set"]["agent"], "loss": "mse"}}
    env_option = {**TINY["set"], "env_options": {"sutton_barto_reward": True}}
    for changed, shown in [(other_loss, "agent.loss: 'not set' there, 'mse' in the sweep"),
                           (env_option, "env_options.sutton_barto_reward: 'not set' there, True in the sweep")]:
        with pytest.raises(GbmrError, match=shown):
            load_sweep(write_sweep(tmp_path, set=changed), out=old.parent)
