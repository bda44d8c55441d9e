"""Distributed PPO throughput: env steps/s of the single-process runner against 1, 2, 4, ... Ray actors.

Two environments: CartPole-v1 (CPU-bound and cheap: shows the overhead of moving rollouts through Ray) and a
simulated slow environment (CartPole sleeping ``--delay`` s a step, ``gbmr.envs.slow``), where actors overlap the
waiting and scaling shows beyond this machine's 2 cores. Same PPO config for both (the classic preset with 8 envs
x 32 steps per rollout, hidden [64, 64]); an image env given with ``--envs`` (ALE/..., SuperMarioBros-...) uses its
family's preset (CNN) with 32-step rollouts. The clock runs from the end of the first batch (one vector step for
the single process) to the end of the run, so it measures the steady state of both sides, not the actors'
start-up (a few seconds of process start and imports, also printed). Ray is started once, with as many CPUs as
the most actors.

    python benchmarks/distributed.py [--steps 16384] [--delay 0.002] [--actors 1 2 4 8] [--modes sync async]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from gbmr.agents import agent_class
from gbmr.config import build_config, default_preset
from gbmr.envs import env_family
from gbmr.experiment.train import start_run
from gbmr.runners.distributed import connect_ray
from gbmr.runners.sync import SyncRunner

SLOW = "gbmr.envs.slow:GbmrSlowCartPole-v0"


def steps_per_second(env_id: str, steps: int, actors: int, delay: float, mode: str = "sync"
                     ) -> tuple[float, float]:
    """(steady-state env steps/s, seconds before the first batch was in)."""
    options = {"env_options": {"delay": delay}} if env_id == SLOW else {}
    family = env_family(env_id)
    preset, overrides = ("classic", ["n_steps=32", "hidden=[64,64]"]) if family in ("classic", "gym") else (
        default_preset("ppo", family), ["n_steps=32"])  # image envs: the family's preset (its CNN)
    config = build_config("ppo", env_id, agent_class("ppo").Config, family, preset=preset,
                          overrides=overrides, seed=0, total_steps=steps, num_envs=8,
                          eval_every=0, eval_episodes=0, checkpoint_every=0, actors=actors, mode=mode,
                          **options)
    marks: list[tuple[float, int]] = []
    bookkeeping = SyncRunner._bookkeeping

    def timed(runner: SyncRunner) -> None:
        if not marks:
            marks.append((time.perf_counter(), runner.step))
        bookkeeping(runner)

    SyncRunner._bookkeeping = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            start_run(config, f"{tmp}/run", progress=False)
            end = time.perf_counter()
    finally:
        SyncRunner._bookkeeping = bookkeeping
    (first_time, first_step), = marks
    return (steps - first_step) / (end - first_time), first_time - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16384)
    parser.add_argument("--delay", type=float, default=0.002)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", SLOW])
    parser.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    args = parser.parse_args()
    connect_ray("local", max(args.actors))
    print(f"PPO, {args.steps} env steps, 8 envs, slow env delay {args.delay * 1e3:.1f} ms a step\n")
    print("| environment | runner | steps/s | vs one process | start-up (s) |")
    print("|---|---|---:|---:|---:|")
    for env_id in args.envs:
        name = "slow CartPole" if env_id == SLOW else env_id
        single, setup = steps_per_second(env_id, args.steps, 0, args.delay)
        print(f"| {name} | one process | {single:,.0f} | 1.00x | {setup:.1f} |", flush=True)
        for mode in args.modes:
            for actors in args.actors:
                rate, setup = steps_per_second(env_id, args.steps, actors, args.delay, mode)
                print(f"| {name} | {actors} actor{'s' if actors > 1 else ''}, {mode} | {rate:,.0f} | "
                      f"{rate / single:.2f}x | {setup:.1f} |", flush=True)


if __name__ == "__main__":
    main()
