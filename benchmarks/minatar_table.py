"""The README's MinAtar table, from the run folders in results/minatar/: one row per game, one column per agent
(and preset, when not its ``minatar`` one), each cell the mean over seeds [95% bootstrap CI] of the score
``gbmr compare --metric`` names. Nothing is run; runs still in progress are marked †, or left out with
``--complete-only``.

    python benchmarks/minatar_table.py                      # the final greedy evaluation at 500k steps
    python benchmarks/minatar_table.py --metric eval-mean   # the mean over a run's 20 evaluations
    python benchmarks/minatar_table.py --metric train       # training returns over the last 10% of steps
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gbmr.analysis.cli import METRICS
from gbmr.analysis.report import score_definition, score_grid, score_runs, score_table
from gbmr.analysis.runs import load_runs

GAMES = ("Breakout", "Asterix", "Freeway", "SpaceInvaders", "Seaquest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("results/minatar"), help="one folder per game below it")
    parser.add_argument("--steps", type=int, default=500_000, help="the budget the runs were made at")
    parser.add_argument("--metric", choices=METRICS, default="eval")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples per CI")
    parser.add_argument("--complete-only", action="store_true", help="leave out the runs still in progress")
    args = parser.parse_args()

    folders = [args.root / game / f"minatar_{args.steps}" for game in GAMES]
    runs = load_runs([str(f) for f in folders if f.is_dir()])
    if args.complete_only:
        runs = [run for run in runs if not run.in_progress]
    for run in runs:  # a column per preset: the per-game encoder paths are not what tells the agents apart
        preset = run.config.get("preset", "minatar")
        run.variant = "" if preset == "minatar" else preset
    scored = score_runs(runs, args.steps, args.metric)
    table = score_table(scored[scored.score.notna()], args.reps, np.random.default_rng(0))
    seeds = table.n.max()
    grid = score_grid(table, ("**", "**")).T
    for (method, env), n in table.set_index(["method", "env"]).n.items():
        if n < seeds:
            grid.loc[env, method] += f" ({n} seed{'s' if n > 1 else ''})"
    grid.index = [env.removeprefix("MinAtar/").removesuffix("-v1") for env in grid.index]
    print(f"{score_definition(args.steps, args.metric, args.reps)} {seeds} seeds a cell unless marked.")
    print("\n| game | " + " | ".join(grid.columns) + " |\n|---|" + "---:|" * len(grid.columns))
    for game in [g for g in GAMES if g in grid.index]:
        print(f"| {game} | " + " | ".join(grid.loc[game]) + " |")


if __name__ == "__main__":
    main()
