"""`gbmr compare`: the argparse wiring the main CLI mounts, and the command itself."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gbmr.core.errors import GbmrError

# What a run is scored by (gbmr.analysis.runs.score_at_budget); kept here so parsing imports no pandas.
METRICS = ("eval", "eval-mean", "train")


def add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `compare` on the main CLI's subparsers (its handler is set as `func`)."""
    parser = subparsers.add_parser(
        "compare",
        help="compare runs: score table, learning curves, rliable statistics, HTML report",
        description="Compare run folders written by `gbmr train`: score table at a step budget (Markdown, "
        "CSV, LaTeX), learning curves, rliable aggregates (IQM, median, mean, optimality gap, performance "
        "profiles, probability of improvement), hyperparameter plots, and REPORT_DIR/index.html.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIRS_OR_GLOBS",
                        help="run folders, globs (quote them; ** recurses), or folders holding runs at any "
                        "depth")
    parser.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR", help="folder to write into")
    parser.add_argument("--budget", type=int, metavar="STEPS",
                        help="score each run at this many env steps (default: each run's end)")
    parser.add_argument("--metric", choices=METRICS, default="eval",
                        help="eval: the last greedy evaluation (eval.csv); eval-mean: the mean of all of "
                        "them (the area under the curve, steadier than one evaluation of a few episodes); train: "
                        "the training episodes' returns over the last 10%% of steps (metrics.csv)")
    parser.add_argument("--column", default="return", metavar="NAME",
                        help="what to score and plot: return (default; eval.csv's mean_return, metrics.csv's "
                        "return) or an env episode metric both files log, e.g. won (SMAX's win rate)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples for every CI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    """Load the runs, build the report, print where it is; user errors raise GbmrError."""
    from gbmr.analysis.report import build_report  # heavy imports (matplotlib, rliable) only when used
    from gbmr.analysis.runs import load_runs

    if args.reps < 100:
        raise GbmrError(f"--reps must be at least 100 for a 95% CI, got {args.reps}")
    start = time.perf_counter()
    runs = load_runs(args.runs, args.column)
    report = build_report(runs, args.out, budget=args.budget, metric=args.metric, reps=args.reps,
                          seed=args.seed)
    running = sum(r.in_progress for r in runs)
    print(f"compared {len(runs)} runs ({running} in progress) over {report.scores.env.nunique()} envs "
          f"in {time.perf_counter() - start:.1f} s")
    print(f"report: {report.index}")
    print((args.out / "scores.md").read_text())
    return 0
