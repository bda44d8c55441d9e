"""What the gbmr-vs-SB3 throughput benchmarks share (throughput.py for DQN, ppo_throughput.py for PPO).

``time_gbmr`` trains one gbmr run in-process (making the env and the agent and the final checkpoint included),
``compare`` alternates the two sides ``repeats`` times and keeps the best of each, and the table helpers print
the Markdown table, one row per environment as it finishes. ``--clock cpu`` (``add_clock_argument``) times both
sides by this process's CPU time instead of the wall clock: with one torch thread a side, that is what a free
core would do, and it does not swing with other jobs' load on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gbmr.config import build_config
from gbmr.envs import env_family, make_env
from gbmr.experiment.train import start_run

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def add_clock_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock, or this process's CPU time (steady on a shared machine)")


def use_clock(name: str) -> None:
    global _clock
    _clock = CLOCKS[name]


def clock() -> float:
    """Seconds on the clock both sides are timed by (``use_clock``)."""
    return _clock()


def as_overrides(hyperparameters: Mapping[str, Any]) -> list[str]:
    """``key=value`` strings for ``build_config`` (tuples written as lists)."""
    return [f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in hyperparameters.items()]


def time_gbmr(algo: str, config_cls: type, env_id: str, steps: int, overrides: list[str], **flags: Any) -> float:
    """Env steps per second of one gbmr run: no evaluation, a checkpoint only at the end, seed 0."""
    config = build_config(algo, env_id, config_cls, env_family(env_id), overrides=overrides, seed=0,
                          total_steps=steps, eval_every=0, eval_episodes=0, checkpoint_every=0, **flags)
    with tempfile.TemporaryDirectory() as tmp:
        start = clock()
        start_run(config, f"{tmp}/run", progress=False)
        return steps / (clock() - start)


def warm_up(env_id: str) -> None:
    """First imports (minatar, ale_py) and torch's lazy optimiser setup happen outside both clocks."""
    make_env(env_id).close()
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())


def compare(ours: Callable[[], float], theirs: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Best steps/s of each side over ``repeats`` alternating rounds (so load from elsewhere hits both alike)."""
    best_ours, best_theirs = 0.0, 0.0
    for _ in range(repeats):
        best_ours = max(best_ours, ours())
        best_theirs = max(best_theirs, theirs())
    return best_ours, best_theirs


def print_table_header() -> None:
    print("| environment | gbmr steps/s | SB3 steps/s | ratio |")
    print("|---|---:|---:|---:|")


def print_row(env_id: str, ours: float, theirs: float) -> None:
    print(f"| {env_id} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |", flush=True)
