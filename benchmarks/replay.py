"""Replay throughput: add, sample(32), and one add + sample(32) (+ update_priorities for PER) per step.

Buffers are measured full, as in a long run: they are filled through ``load_state_dict`` with random
contents (filling 1e6 slots one add at a time would take most of the time budget). Adds are single-env
3-step vector steps, with an episode ending every 200 steps so the flush path is included.

    python benchmarks/replay.py [--seconds 1.0] [--vector-capacities 1e5 1e6] [--image-capacities 1e4]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from gbmr.memory.replay import PrioritizedReplayBuffer, ReplayBuffer, SumTree

BATCH = 32
OBS = {"CartPole (4,) float32": ((4,), np.float32), "Atari 4x84x84 uint8": ((4, 84, 84), np.uint8)}


def full_buffer(
    cls: type[ReplayBuffer], capacity: int, obs_shape: tuple[int, ...], dtype: type
) -> ReplayBuffer:
    """A buffer whose every slot holds random data (and a random priority for PER)."""
    rng = np.random.default_rng(0)
    buf = cls(capacity, obs_shape, dtype, n_step=3)
    state = buf.state_dict()

    def random_obs() -> torch.Tensor:
        if dtype == np.uint8:
            return torch.from_numpy(rng.integers(0, 256, (capacity, *obs_shape), dtype=np.uint8))
        return torch.from_numpy(rng.normal(size=(capacity, *obs_shape)).astype(dtype))

    state.update(
        size=capacity,
        ptr=0,
        obs=random_obs(),
        next_obs=random_obs(),
        actions=torch.from_numpy(rng.integers(0, 4, capacity)),
        returns=torch.from_numpy(rng.normal(size=capacity).astype(np.float32)),
        discounts=torch.full((capacity,), 0.99**3),
    )
    if isinstance(buf, PrioritizedReplayBuffer):
        tree = SumTree(capacity)
        tree.update(np.arange(capacity), rng.random(capacity))
        state["tree"] = tree.state_dict()
    buf.load_state_dict(state)
    return buf


def rate(fn: Callable[[int], None], seconds: float) -> float:
    """Calls per second of fn(i), timed over about ``seconds`` after a short warm-up."""
    for i in range(20):
        fn(i)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn(calls)
            calls += 1
    return calls / elapsed


def measure(buf: ReplayBuffer, seconds: float) -> tuple[float, float, float]:
    rng = np.random.default_rng(1)
    obs = rng.integers(0, 256, (1, *buf.obs_shape)).astype(buf.obs.dtype)
    action, reward, no = np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, bool)

    def add(i: int) -> None:
        buf.add(obs, action, reward, obs, no, np.array([i % 200 == 199]))

    def sample(_: int) -> None:
        batch = buf.sample(BATCH)
        if isinstance(buf, PrioritizedReplayBuffer):
            buf.update_priorities(batch.indices, batch.returns)

    def step(i: int) -> None:
        add(i)
        sample(i)

    return rate(add, seconds), rate(lambda _: buf.sample(BATCH), seconds), rate(step, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per measurement")
    parser.add_argument("--vector-capacities", type=float, nargs="+", default=[1e5, 1e6])
    parser.add_argument("--image-capacities", type=float, nargs="+", default=[1e4])
    args = parser.parse_args()
    capacities = dict(zip(OBS, (args.vector_capacities, args.image_capacities), strict=True))

    print("| buffer | obs | capacity | add/s | sample(32)/s | add + sample(32) [+ update] /s |")
    print("|---|---|---:|---:|---:|---:|")
    for obs_name, (obs_shape, dtype) in OBS.items():
        for capacity in map(int, capacities[obs_name]):
            for cls in (ReplayBuffer, PrioritizedReplayBuffer):
                add, sample, step = measure(full_buffer(cls, capacity, obs_shape, dtype), args.seconds)
                name = "uniform" if cls is ReplayBuffer else "PER"
                print(f"| {name} | {obs_name} | {capacity:.0e} | {add:,.0f} | {sample:,.0f} | {step:,.0f} |")


if __name__ == "__main__":
    main()
