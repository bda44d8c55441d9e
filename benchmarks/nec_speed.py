"""NEC's speed on MinAtar Breakout (minatar preset: 3 actions, 5e4 entries per DND, HNSW index, k = 50, MinAtar
CNN encoder, a learner step of 32 every 4 steps), this tree against an older one or the exact index against
HNSW, measured side by side.

    python benchmarks/nec_speed.py                               # this tree only
    python benchmarks/nec_speed.py --indexes exact,hnsw          # the preset with each index (exact = before)
    git worktree add /tmp/gbmr_old <commit>                       # (or copy an older gbmr/ package somewhere)
    python benchmarks/nec_speed.py --baseline /tmp/gbmr_old       # before/after table, ~3-4 min on 2 busy cores

Two regimes, each run in a fresh subprocess per variant (``PYTHONPATH`` = the variant's tree), variants
alternating, ``--repeats`` times; the table shows the best repeat (the least disturbed by other load):

1. **Run**: ``start_run`` of the preset for ``--steps`` steps with evaluation off, as
   ``gbmr train --algo nec --env MinAtar/Breakout-v1 --total-steps 5000 --set eval_episodes=0`` does. The DNDs
   hold at most ``--steps`` entries in all, so this is the start of a run: encoder and per-call costs.
2. **Full memory**: the agent of the same preset with every DND filled to capacity (embeddings of random-policy
   observations plus Gaussian jitter), past ``learning_starts`` with epsilon at its floor, plays ``--full-steps``
   steps of Breakout: the steady state of a 500k-step run, where the k-NN scans over 3 x 5e4 keys dominate.

Per component: mean ms per env step spent in ``act``, ``observe`` (bootstrap read + write) and ``update`` (the
learner step every 4 steps), timed by wrapping the agent's methods; steps/s of the run includes the env and
the runner. One torch thread. With ``--indexes`` the first index listed is the "before" of the speed-up column.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "MinAtar/Breakout-v1"
COMPONENTS = ("act", "observe", "update")


def timed_methods(cls: type, totals: dict[str, float]) -> None:
    """Wrap ``cls``'s act/observe/update to add their seconds to ``totals``."""
    for name in COMPONENTS:
        method = getattr(cls, name)

        def wrapper(self, *args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            out = _method(self, *args, **kwargs)
            totals[_name] += time.perf_counter() - start
            return out

        setattr(cls, name, wrapper)


def config(steps: int, overrides: list[str]):
    from gbmr.agents.nec import NECConfig
    from gbmr.config import build_config
    from gbmr.envs import env_family

    return build_config("nec", ENV, NECConfig, env_family(ENV), seed=1, total_steps=steps,
                        overrides=["device=cpu", "eval_episodes=0", *overrides])


def run_regime(steps: int, overrides: list[str]) -> dict[str, float]:
    from gbmr.agents.nec import NECAgent
    from gbmr.experiment.train import start_run

    totals = dict.fromkeys(COMPONENTS, 0.0)
    timed_methods(NECAgent, totals)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        start_run(config(steps, overrides), f"{tmp}/nec", progress=False)
        wall = time.perf_counter() - start
    return {"steps_per_s": steps / wall, **{k: 1e3 * v / steps for k, v in totals.items()}}


def full_regime(steps: int, overrides: list[str], seed: int = 0) -> dict[str, float]:
    import numpy as np
    import torch

    from gbmr.agents import build_agent
    from gbmr.envs import make_env

    torch.set_num_threads(1)
    cfg = config(10 * steps, overrides)
    env = make_env(ENV, seed, training=True)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    seen = []
    for _ in range(2000):  # random-policy observations: the states the memory is built from
        seen.append(obs)
        obs, _, terminated, truncated, _ = env.step(rng.integers(env.action_space.n))
        if terminated or truncated:
            obs, _ = env.reset()
    with torch.no_grad():
        real = agent.embed(np.stack(seen)).cpu().numpy()
    spread = real.std(0).mean()
    capacity = agent.config.capacity
    for dnd in agent.dnds:
        keys = real[rng.integers(len(real), size=capacity)]
        keys = keys + rng.normal(scale=0.1 * spread, size=keys.shape).astype(np.float32)
        dnd.write(keys, rng.normal(size=capacity).astype(np.float32))
    agent.steps = agent.learner.last_learn = 10 * steps  # past learning_starts, epsilon at its floor
    agent.epsilon = cfg.agent.eps_end

    totals = dict.fromkeys(COMPONENTS, 0.0)
    timed_methods(type(agent), totals)
    obs, _ = env.reset(seed=seed + 1)
    start = time.perf_counter()
    for _ in range(steps):
        action = agent.act(obs[None])
        next_obs, reward, terminated, truncated, _ = env.step(action[0])
        agent.observe(obs[None], action, np.array([reward]), next_obs[None], np.array([terminated]),
                      np.array([truncated]))
        agent.update()
        obs = env.reset()[0] if terminated or truncated else next_obs
    wall = time.perf_counter() - start
    return {"steps_per_s": steps / wall, **{k: 1e3 * v / steps for k, v in totals.items()}}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    result = run_regime(args.steps, args.set) if args.worker == "run" else full_regime(args.full_steps, args.set)
    print(json.dumps(result))


def measure(tree: Path, overrides: list[str], regime: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--worker", regime, "--steps", str(args.steps),
           "--full-steps", str(args.full_steps), *(f"--set={o}" for o in overrides)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="a tree holding an older gbmr/ package (before)")
    parser.add_argument("--steps", type=int, default=5000, help="steps of the run regime")
    parser.add_argument("--full-steps", type=int, default=1000, help="steps of the full-memory regime")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--regimes", default="run,full")
    parser.add_argument("--indexes", help="comma-separated index kinds to compare on this tree (exact,hnsw)")
    parser.add_argument("--worker", choices=("run", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    here = Path(__file__).resolve().parents[1]
    variants: dict[str, tuple[Path, list[str]]] = {"after": (here, [])}
    if args.indexes:
        variants = {f"index {kind}": (here, [f"agent.index={kind}"]) for kind in args.indexes.split(",")}
    if args.baseline is not None:
        variants = {"before": (args.baseline.resolve(), []), **variants}
    before = next(iter(variants))
    best: dict[tuple[str, str], dict[str, float]] = {}
    for regime in args.regimes.split(","):
        for _ in range(args.repeats):
            for name, (tree, overrides) in variants.items():
                result = measure(tree, overrides, regime, args)
                key = (regime, name)
                if key not in best or result["steps_per_s"] > best[key]["steps_per_s"]:
                    best[key] = result
    print("| regime | variant | steps/s | act ms/step | observe ms/step | update ms/step | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (regime, name), r in best.items():
        base = best[(regime, before)]["steps_per_s"]
        label = f"run {args.steps} steps" if regime == "run" else f"full memory, {args.full_steps} steps"
        print(f"| {label} | {name} | {r['steps_per_s']:.0f} | {r['act']:.2f} | {r['observe']:.2f} "
              f"| {r['update']:.2f} | {r['steps_per_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
