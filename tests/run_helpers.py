"""Helpers for the tests that train through the command line: reading CSV logs, killing runs mid-way, what a
press-duration Mario run logs, the marker of tests that need the Mario emulator."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

needs_mario = pytest.mark.skipif(importlib.util.find_spec("gymnasium_mariobros") is None,
                                 reason="gymnasium-mariobros is not installed (pip install -e '.[mario]')")


def read_rows(path):
    with open(path) as f:
        return list(csv.reader(f))


def kill_twice(train_args, run, total_steps):
    """Start ``gbmr train *train_args --run-dir run`` in a subprocess, SIGKILL it once it has written a
    checkpoint, resume it with ``--resume`` and kill it again once the resumed process has written one of its own
    (so the second kill interrupts training, not start-up), at different moments; assert it had not finished."""
    cmd = [sys.executable, "-m", "gbmr", "train", *train_args, "--run-dir", str(run)]
    checkpoint = run / "checkpoints" / "latest.pt"
    for delay in (0.4, 0.0):  # the second right after the resumed process's first checkpoint, before it finishes
        before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        proc = subprocess.Popen(cmd if not (run / "config.yaml").exists() else
                                [sys.executable, "-m", "gbmr", "train", "--resume", str(run), "--no-progress"])
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline and (
                not checkpoint.exists() or checkpoint.stat().st_mtime_ns == before):
            time.sleep(0.05)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "running" and status["step"] < total_steps, "the run finished before it was killed"


def assert_resume_equals_uninterrupted(train_args, tmp_path, total_steps,
                                       logs=("metrics.csv", "eval.csv", "learner.csv")):
    """Train ``train_args`` once uninterrupted and once SIGKILLed twice and resumed (``kill_twice``): the named
    logs must be equal. Returns the (reference, resumed) run folders for further checks."""
    from gbmr.cli import main

    reference, run = tmp_path / "reference", tmp_path / "killed"
    assert main(["train", *train_args, "--run-dir", str(reference)]) == 0
    kill_twice(train_args, run, total_steps)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    for name in logs:
        assert read_rows(run / name) == read_rows(reference / name), name
    return reference, run


PRESS_BUTTONS = ("up", "down", "left", "right", "A", "B", "noop")


def assert_press_duration_eval_logs(run, max_frames=30):
    """A press-duration run's evaluation logged each button's mean frames held per decision (``held_<button>``),
    the median and 90th percentile of the frames held (and of the frames per decision) in eval.csv, and a
    TensorBoard histogram of them per button."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    header, row, *_ = read_rows(run / "eval.csv")
    values = dict(zip(header, map(float, row), strict=True))
    assert {f"held_{b}" for b in PRESS_BUTTONS} | {"decision_frames"} <= set(header)
    for name in ("decision_frames", *(f"held_{b}" for b in PRESS_BUTTONS)):
        assert 0 <= values[f"{name}_p50"] <= values[f"{name}_p90"] <= max_frames, name
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {f"eval/decisions/held_{b}" for b in PRESS_BUTTONS} <= set(events.Tags()["histograms"])
