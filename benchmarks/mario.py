"""Super Mario Bros env throughput, random actions, one process: where the time of a Mario step goes.

Rows (``SuperMarioBros-1-1-v0``; an episode that ends is reset inside the clock):
- the bare cynes emulator (``NES.step``: one frame, nothing read);
- gymnasium-mariobros' own env (one frame per step; it copies the 2 KB of RAM into numpy byte by byte each frame);
- gbmr's frame-level game (the same env reading RAM on demand: ``mario.make_game``);
- ``make_env`` with the discrete ``simple`` set: frame skip 4, shaping, grey, 84x84, stack 4 (agent decisions/s
  and the frames/s they make);
- ``make_env`` with ``actions=press_duration`` (min 4 frames, max 0.5 s; uniform values in [-1, 1]).

Rows take turns ``--repeats`` times and the best of each is kept, so load from other processes hits them alike;
the last two columns divide by this process's CPU time instead of the wall clock.

    python benchmarks/mario.py [--seconds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from gbmr.envs import make_env
from gbmr.envs.mario import make_game

ENV_ID = "SuperMarioBros-1-1-v0"


def timed(step: Callable[[], int], seconds: float) -> tuple[float, float, float, float]:
    """Calls/s and frames/s of ``step`` (which returns the frames it ran) over about ``seconds`` of wall time,
    then the same per second of this process's CPU time (steadier on a shared machine: what one free core does)."""
    calls, frames = 0, 0
    start, cpu = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        frames += step()
        calls += 1
    used = time.process_time() - cpu
    return calls / elapsed, frames / elapsed, calls / used, frames / used


def frame_stepper(env, rng: np.random.Generator) -> Callable[[], int]:
    env.reset(seed=0)

    def step() -> int:
        _, _, terminated, truncated, _ = env.step(int(rng.choice([0, 1, 2, 0x80, 0x81, 0x41, 0xC1])))
        if terminated or truncated:
            env.reset()
        return 1

    return step


def agent_stepper(env, rng: np.random.Generator, frames_of: Callable[[dict], int]) -> Callable[[], int]:
    env.reset(seed=0)
    env.action_space.seed(int(rng.integers(1 << 31)))

    def step() -> int:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
        return frames_of(info)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per row and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (best of each row kept)")
    args = parser.parse_args()
    from cynes import NES
    from gymnasium_mariobros.smb_env import SuperMarioBrosEnv

    rng = np.random.default_rng(0)
    package = SuperMarioBrosEnv(target=(1, 1))
    nes = NES(package._rom_path)

    def bare() -> int:
        nes.controller = 1
        nes.step()
        return 1

    rows = [
        ("cynes emulator, bare", "frames/s", bare),
        ("gymnasium-mariobros env", "frames/s", frame_stepper(package, rng)),
        ("gbmr frame-level game (RAM on demand)", "frames/s", frame_stepper(make_game(ENV_ID), rng)),
        ("simple set: skip 4 + shaping + grey 84x84 + stack 4", "decisions/s",
         agent_stepper(make_env(ENV_ID), rng, lambda info: 4)),
        ("press_duration (min 4 frames, max 0.5 s) + the same", "decisions/s",
         agent_stepper(make_env(ENV_ID, actions="press_duration"), rng, lambda info: info["frames"])),
    ]
    best = [(0.0, 0.0, 0.0, 0.0)] * len(rows)
    for _ in range(args.repeats):
        for k, (_, _, step) in enumerate(rows):
            best[k] = max(best[k], timed(step, args.seconds))
    print(f"Mario throughput, {ENV_ID}, random actions, best of {args.repeats} x {args.seconds:.0f} s a row")
    print("| what | steps/s | frames/s | steps per CPU s | frames per CPU s |")
    print("|---|---:|---:|---:|---:|")
    for (name, unit, _), (calls, frames, cpu_calls, cpu_frames) in zip(rows, best, strict=True):
        print(f"| {name} | {calls:,.0f} {unit} | {frames:,.0f} | {cpu_calls:,.0f} | {cpu_frames:,.0f} |")


if __name__ == "__main__":
    main()
