"""Helpers for the tests that train through the command line: reading CSV logs, killing runs mid-way."""

import csv
import json
import os
import signal
import subprocess
import sys
import time


def read_rows(path):
    with open(path) as f:
        return list(csv.reader(f))


def kill_twice(train_args, run, total_steps):
    """Start ``gbmr train *train_args --run-dir run`` in a subprocess, SIGKILL it once a checkpoint exists,
    resume it with ``--resume`` and kill it again, at different moments; assert it had not finished."""
    cmd = [sys.executable, "-m", "gbmr", "train", *train_args, "--run-dir", str(run)]
    for delay in (0.4, 0.7):
        proc = subprocess.Popen(cmd if not (run / "config.yaml").exists() else
                                [sys.executable, "-m", "gbmr", "train", "--resume", str(run), "--no-progress"])
        deadline = time.time() + 60
        while not (run / "checkpoints" / "latest.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "running" and status["step"] < total_steps, "the run finished before it was killed"
