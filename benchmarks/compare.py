"""Time `gbmr compare` over 200 synthetic run folders (2 algos x 5 envs x 20 seeds, 500 logged points each).

Goal: the whole command (imports, loading, statistics with 2000 bootstrap resamples, figures, HTML) under 30 s
on this machine. Usage: python benchmarks/compare.py [--seeds 20] [--points 500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gbmr.analysis.synthetic import write_suite

ALGOS = ["dqn", "gbmr"]
ENVS = ["CartPole-v1", "MinAtar/Breakout-v1", "MinAtar/Asterix-v1", "ALE/Pong-v5", "ALE/Breakout-v5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--keep", type=Path, help="write runs and report here instead of a temp dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        start = time.perf_counter()
        paths = write_suite(root / "runs", ALGOS, ENVS, args.seeds, args.points, 1_000_000,
                            np.random.default_rng(0))
        write_time = time.perf_counter() - start
        rows = []
        for label, extra in (("eval, final", []), ("eval, budget 800k", ["--budget", "800000"]),
                             ("train, budget 800k", ["--budget", "800000", "--metric", "train"])):
            out = root / f"report_{len(rows)}"
            start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "gbmr", "compare", str(root / "runs"), "--out", str(out),
                            *extra], check=True, capture_output=True)
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
            size = (out / "index.html").stat().st_size / 1e6
            rows.append((label, time.perf_counter() - start, cpu_s, size))
    print(f"{len(paths)} runs ({len(ALGOS)} algos x {len(ENVS)} envs x {args.seeds} seeds, {args.points} "
          f"logged points each); writing them took {write_time:.1f} s\n")
    print("| gbmr compare | wall time (s) | CPU time (s) | index.html (MB) | goal < 30 s |")
    print("|---|---:|---:|---:|---|")
    for label, seconds, cpu_s, size in rows:
        print(f"| {label} | {seconds:.1f} | {cpu_s:.1f} | {size:.2f} | {'yes' if seconds < 30 else 'NO'} |")


if __name__ == "__main__":
    main()
