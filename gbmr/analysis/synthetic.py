"""Write run folders in `gbmr train`'s format from given numbers: for tests, benchmarks and compare demos."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def write_run(
    path: Path, algo: str, env: str, seed: int, steps: Sequence[int], returns: Sequence[float],
    eval_steps: Sequence[int] = (), eval_returns: Sequence[float] = (), status: str = "complete",
    total_steps: int | None = None, agent: dict | None = None,
    episode_metrics: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Path:
    """One run folder: config.yaml, metrics.csv (training episodes), eval.csv and status.json.

    `episode_metrics` maps an env episode metric (e.g. SMAX's `won`) to its (per training episode, per
    evaluation) values, written as a column of both files as the runner does."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    last = int(max([*steps, *eval_steps, 0]))
    total = total_steps if total_steps is not None else last
    config = {"algo": algo, "env": env, "seed": seed, "total_steps": total, "num_envs": 1, "device": "cpu",
              "eval_every": 0, "eval_episodes": 10, "checkpoint_every": 0, "preset": "default",
              "env_options": {}, "agent": agent or {"lr": 0.0001, "gamma": 0.99}}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    n = len(steps)
    extra = episode_metrics or {}
    pd.DataFrame({"step": np.asarray(steps, np.int64), "episode": np.arange(1, n + 1), "return": returns,
                  "length": np.diff(np.asarray(steps), prepend=0),
                  **{name: train for name, (train, _) in extra.items()}, "loss": np.nan}).to_csv(
        path / "metrics.csv", index=False)
    ev = np.asarray(eval_returns, float)
    pd.DataFrame({"step": np.asarray(eval_steps, np.int64), "mean_return": ev, "std_return": 0.0,
                  "min_return": ev, "max_return": ev, "episodes": 10,
                  **{name: evals for name, (_, evals) in extra.items()}}).to_csv(path / "eval.csv", index=False)
    (path / "status.json").write_text(json.dumps({"status": status, "step": last, "total_steps": total}))
    return path


def write_suite(
    root: Path, algos: Sequence[str], envs: Sequence[str], seeds: int, points: int, total_steps: int,
    rng: np.random.Generator,
) -> list[Path]:
    """A grid of runs with noisy rising curves; each run logs `points` episodes and evaluations at its own
    (jittered) steps, so compare has to align them. Algorithm i learns faster than algorithm i-1."""
    paths = []
    for a, algo in enumerate(algos):
        for env in envs:
            for seed in range(seeds):
                steps = np.sort(rng.choice(np.arange(1, total_steps + 1), points, replace=False))
                steps[-1] = total_steps
                progress = 1 - np.exp(-(2 + a) * steps / total_steps)
                returns = 100 * progress + rng.normal(0, 10, points)
                eval_steps = steps[:: max(1, points // 50)]
                eval_returns = 100 * (1 - np.exp(-(2 + a) * eval_steps / total_steps)) + rng.normal(0, 5,
                                                                                                      len(eval_steps))
                name = f"{algo}_{env.replace('/', '-')}_s{seed}"
                paths.append(write_run(root / name, algo, env, seed, steps, returns, eval_steps, eval_returns,
                                       total_steps=total_steps))
    return paths
