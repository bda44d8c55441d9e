"""`gbmr sweep`: the argparse wiring the main CLI mounts, and the command itself (logic in experiment/sweep.py)."""

from __future__ import annotations

import argparse
import sys


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `sweep` on the main CLI's subparsers (its handler is set as `func`)."""
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of runs (algorithms x envs x hyperparameters x seeds); skips finished, resumes interrupted",
        description="Run every run of a sweep file: algorithms x environments x grid values x seeds, each in "
        "OUT/<algo>_<env>[_<key>=<value>...]_s<seed>. Running it again skips complete runs and resumes "
        "interrupted ones. The file format is described in gbmr/experiment/sweep.py; examples ship in "
        "configs/sweeps/.",
    )
    parser.add_argument("sweep_file", metavar="SWEEP",
                        help="a sweep YAML file, or the name of one in configs/sweeps/ (e.g. tiny, minatar-dqn)")
    parser.add_argument("--out", help="root folder of the run folders (default: the sweep file's `out`)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs in parallel: processes on this machine, or the CPUs of `--ray local`")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="one Ray task per run on the cluster at ADDRESS (`local`: start Ray here); `out` "
                        "must then be a path every node shares")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (with --workers 1)")
    parser.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    """0 when every run finished, 1 when some failed; user errors raise GbmrError (exit 2)."""
    from gbmr.experiment.sweep import describe, execute, load_sweep  # torch & co. only when used

    sweep = load_sweep(args.sweep_file, args.out)
    if args.dry_run:
        print(describe(sweep))
        return 0
    try:
        outcomes = execute(sweep, workers=args.workers, ray_address=args.ray, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; run `gbmr sweep {args.sweep_file}` again to resume", file=sys.stderr)
        return 130
    return 1 if any(o.error for o in outcomes) else 0
