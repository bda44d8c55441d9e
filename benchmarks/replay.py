"""Replay memory and speed: bytes per transition, add, sample(32), one add + sample(32) (+ update_priorities).

Buffers are measured full, as in a long run. Whole-observation buffers are filled through ``load_state_dict``
with random contents (filling 1e6 slots one add at a time would take most of the time budget); frame-sharing
buffers (``frame_stack=4``) by adding a frame-stack stream, since how many frames they hold depends on it. Adds
are single-env 3-step vector steps, with an episode ending every 200 steps so the flush path is included;
image observations are a frame stack (each step shifts in one new frame; a reset repeats its frame 4 times).
Bytes per transition are ``nbytes / capacity`` (the frames in use for a frame-sharing buffer).

    python benchmarks/replay.py [--seconds 1.0] [--vector-capacities 1e5 1e6] [--image-capacities 1e4]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

import numpy as np
import torch

from gbmr.memory.replay import PrioritizedReplayBuffer, ReplayBuffer, SumTree

BATCH = 32
EPISODE = 200
OBS = {"CartPole (4,) float32": ((4,), np.float32), "Atari 4x84x84 uint8": ((4, 84, 84), np.uint8)}


def episode(obs_shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """The EPISODE + 1 observations of one episode: random vectors, or a stack of random frames shifting by one
    frame a step from a reset observation that repeats its frame."""
    rng = np.random.default_rng(1)
    if dtype != np.uint8:
        return rng.normal(size=(EPISODE + 1, *obs_shape)).astype(dtype)
    frames = rng.integers(0, 256, (EPISODE + 1, *obs_shape[1:]), dtype=np.uint8)
    stack = obs_shape[0]
    index = np.maximum(np.arange(EPISODE + 1)[:, None] + np.arange(1 - stack, 1), 0)  # frame t-3..t, 0 before 0
    return frames[index]


ADD = {"action": np.zeros(1, np.int64), "reward": np.ones(1, np.float32), "no": np.zeros(1, bool)}


def add_step(buf: ReplayBuffer, observations: np.ndarray, i: int) -> None:
    """Step i of a stream of EPISODE-step episodes that all show the same observations."""
    t = i % EPISODE
    buf.add(observations[t : t + 1], ADD["action"], ADD["reward"], observations[t + 1 : t + 2], ADD["no"],
            np.array([t == EPISODE - 1]))


def filled_by_adds(buf: ReplayBuffer) -> int:
    """How many adds fill a frame-sharing buffer (whole-observation buffers are loaded, not added to)."""
    return buf.capacity + EPISODE if buf.store.frame_stack else 0


def full_buffer(
    cls: type[ReplayBuffer], capacity: int, obs_shape: tuple[int, ...], dtype: type, frame_stack: int
) -> ReplayBuffer:
    """A buffer whose every slot holds data (and a random priority for PER)."""
    rng = np.random.default_rng(0)
    buf = cls(capacity, obs_shape, dtype, n_step=3, frame_stack=frame_stack)
    if frame_stack:
        observations = episode(obs_shape, dtype)
        for i in range(filled_by_adds(buf)):
            add_step(buf, observations, i)
        if isinstance(buf, PrioritizedReplayBuffer):
            buf.update_priorities(np.arange(capacity), rng.random(capacity))
        return buf
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


def per_call_us(fn: Callable[[int], None], seconds: float) -> float:
    """Microseconds per call of fn(i), timed over about ``seconds`` after a short warm-up."""
    for i in range(20):
        fn(i)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn(calls)
            calls += 1
    return elapsed / calls * 1e6


def measure(buf: ReplayBuffer, dtype: type, seconds: float) -> tuple[float, float, float]:
    observations = episode(buf.obs_shape, dtype)
    steps = itertools.count(filled_by_adds(buf))  # one stream, continuing the one that filled the buffer

    def add(_: int) -> None:
        add_step(buf, observations, next(steps))

    def sample(_: int) -> None:
        batch = buf.sample(BATCH)
        if isinstance(buf, PrioritizedReplayBuffer):
            buf.update_priorities(batch.indices, batch.returns)

    def step(i: int) -> None:
        add(i)
        sample(i)

    return per_call_us(add, seconds), per_call_us(lambda _: buf.sample(BATCH), seconds), per_call_us(step, seconds)


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per measurement")
    parser.add_argument("--vector-capacities", type=float, nargs="+", default=[1e5, 1e6])
    parser.add_argument("--image-capacities", type=float, nargs="+", default=[1e4])
    args = parser.parse_args()
    capacities = dict(zip(OBS, (args.vector_capacities, args.image_capacities), strict=True))

    print("| buffer | obs | store | capacity | bytes/transition | add us | sample(32) us "
          "| add + sample(32) [+ update] us |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for obs_name, (obs_shape, dtype) in OBS.items():
        stores = {"whole": 0, "frames": obs_shape[0]} if dtype == np.uint8 else {"whole": 0}
        for capacity in map(int, capacities[obs_name]):
            for cls in (ReplayBuffer, PrioritizedReplayBuffer):
                for store, frame_stack in stores.items():
                    buf = full_buffer(cls, capacity, obs_shape, dtype, frame_stack)
                    add, sample, step = measure(buf, dtype, args.seconds)
                    name = "uniform" if cls is ReplayBuffer else "PER"
                    print(f"| {name} | {obs_name} | {store} | {capacity:.0e} | {buf.nbytes / capacity:,.0f} "
                          f"| {add:.1f} | {sample:.1f} | {step:.1f} |", flush=True)
                    del buf


if __name__ == "__main__":
    main()
