"""Sample efficiency of the memory agents: the paper maze, MinAtar at a frame budget, NEC's Atari table.

    python benchmarks/sample_efficiency.py                       # (a) maze, 10 seeds x 3 agents: ~5 min, 1 core
    python benchmarks/sample_efficiency.py --seeds 3 --workers 2
    python benchmarks/sample_efficiency.py --minatar             # (b) 6 agents x 5 games x 3 seeds x 500k steps: DAYS
    python benchmarks/sample_efficiency.py --minatar --steps 2000 --seeds 1 --games Breakout   # (b), smoke size
    python benchmarks/sample_efficiency.py --minatar --games Breakout --algos dqn gbmr          # (b), a subset
    python benchmarks/sample_efficiency.py --nec-atari           # (c) print the 10M-frame Atari command

(a) **Paper maze** (``GridMaze-Paper-v0``, each agent's ``maze`` preset: 20000 steps = at least 100 episodes of
at most 200 steps). An episode reaches the goal when its return is >= 100 (the goal pays +200, a hell cell -1).
"Reliably" = three consecutive goal-reaching episodes; the score is the number of the third of the first such
three (1-based; lower is better). A seed that never gets there counts as the number of episodes it ran
(a lower bound, marked ">"). GBMR vs GQ vs tabular Q-learning, ``--seeds`` seeds (1..N).

(b) **MinAtar** (Breakout, Asterix, Freeway, SpaceInvaders, Seaquest) at ``--steps`` agent steps (MinAtar has no
frame skip: steps = frames), ``--seeds`` seeds: GBMR, GBMR-sweep, GBMR-DQN, GQ, NEC, MFEC, DQN, PPO, A2C, REINFORCE and
PPO-Transformer, each with its ``minatar`` preset
(GBMR / GQ: 5e4 nodes, dist_th 0.5). A sweep file is written to ``OUT/sweep.yaml`` and run by
``gbmr.experiment.sweep`` (complete runs are skipped and interrupted ones resumed on a second call), then
``gbmr compare`` writes the report (mean greedy-evaluation return with bootstrap CIs, rliable aggregates) to
``OUT/report``. Evaluation every steps/20 steps, 10 episodes.

(c) **NEC's 10M-frame Atari table**: prints the ``gbmr sweep`` file and commands that reproduce it on a GPU
machine (10M frames = 2.5M agent steps at frame skip 4).

Runs are written under ``--out`` (default ``runs/sample_efficiency``); ``--workers`` runs several at once (default
1: the machine is shared).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from gbmr.experiment.sweep import execute, folder_name, load_sweep

MAZE = "GridMaze-Paper-v0"
MAZE_ALGOS = ("gbmr", "gq", "qlearning")
GOAL_RETURN = 100.0
RELIABLE = 3  # consecutive goal-reaching episodes
MINATAR_GAMES = ("Breakout", "Asterix", "Freeway", "SpaceInvaders", "Seaquest")
MINATAR_ALGOS = ("gbmr", "gbmr-sweep", "gbmr-dqn", "gq", "nec", "mfec", "dqn", "ppo", "a2c", "reinforce",
                 "ppo-transformer")
NEC_GAMES = ("Alien", "Frostbite", "Hero", "MsPacman", "Pong")


def write_sweep(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_sweep(spec_path: Path, workers: int) -> None:
    """Run (or finish) a sweep; a failed run is an error here, since its numbers would be missing."""
    outcomes = execute(load_sweep(spec_path), workers=workers, progress=False)
    failed = [o.name for o in outcomes if o.error]
    if failed:
        sys.exit(f"{len(failed)} runs failed ({', '.join(failed)}); run the same command again to retry them")


# ---------------------------------------------------------------------------------------------- (a) maze
def episodes_to_reliable(returns: np.ndarray) -> tuple[int, int | None, bool]:
    """(episodes until the goal is reached RELIABLE times in a row, first goal episode, whether reached);
    when never reached, the first value is the number of episodes run."""
    goal = np.asarray(returns) >= GOAL_RETURN
    first = int(np.argmax(goal)) + 1 if goal.any() else None
    streak = np.convolve(goal.astype(int), np.ones(RELIABLE, dtype=int), mode="valid") == RELIABLE
    if streak.any():
        return int(np.argmax(streak)) + RELIABLE, first, True
    return len(goal), first, False


def read_returns(run_dir: Path) -> np.ndarray:
    with open(run_dir / "metrics.csv", newline="") as f:
        return np.array([float(row["return"]) for row in csv.DictReader(f)])


def maze(args: argparse.Namespace) -> None:
    out = args.out / "maze"
    seeds = list(range(1, args.seeds + 1))
    spec = {"name": "maze", "out": str(out.absolute()), "algos": list(MAZE_ALGOS), "envs": [MAZE], "seeds": seeds,
            "preset": "maze", "set": {"eval_episodes": 0, "device": "cpu"}}
    path = write_sweep(out / "sweep.yaml", spec)
    start = time.perf_counter()
    run_sweep(path, args.workers)
    minutes = (time.perf_counter() - start) / 60
    results = {algo: [episodes_to_reliable(read_returns(out / folder_name(algo, MAZE, {}, s))) for s in seeds]
               for algo in MAZE_ALGOS}
    print(f"\n**Paper maze ({MAZE}, maze presets): episodes until the goal is reached {RELIABLE} times in a row "
          f"(return >= {GOAL_RETURN:g}), {len(seeds)} seeds; lower is better**\n")
    print("| agent | episodes to reliable (mean ± std) | median | seeds reaching it | first goal episode (mean) |")
    print("|---|---:|---:|---:|---:|")
    for algo, rows in results.items():
        n = np.array([r[0] for r in rows], dtype=float)
        reached = sum(r[2] for r in rows)
        firsts = [r[1] for r in rows if r[1] is not None]
        bound = "" if reached == len(rows) else " (lower bound)"
        first = f"{np.mean(firsts):.1f} ({len(firsts)} seeds)" if firsts else "never"
        print(f"| {algo} | {n.mean():.1f} ± {n.std(ddof=1) if len(n) > 1 else 0:.1f}{bound} | {np.median(n):.0f} | "
              f"{reached}/{len(rows)} | {first} |")
    print("\nPer seed (episodes to reliable; '>' = not reached, the number of episodes run):\n")
    print("| seed | " + " | ".join(MAZE_ALGOS) + " |")
    print("|---:|" + "---:|" * len(MAZE_ALGOS))
    for i, seed in enumerate(seeds):
        cells = [f"{'' if results[a][i][2] else '>'}{results[a][i][0]}" for a in MAZE_ALGOS]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    print(f"\nruns in {out} ({minutes:.1f} min this call; complete runs are reused). Same runs by hand:\n"
          f"  gbmr sweep {path} --workers {args.workers}")


# ---------------------------------------------------------------------------------------------- (b) MinAtar
def minatar(args: argparse.Namespace) -> None:
    out = args.out / f"minatar_{args.steps}"
    every = max(args.steps // 20, 1)
    spec = {"name": f"minatar-{args.steps}", "out": str(out.absolute()), "algos": list(args.algos),
            "envs": [f"MinAtar/{g}-v1" for g in args.games], "seeds": list(range(1, args.seeds + 1)),
            "total_steps": args.steps,
            "set": {"eval_every": every, "checkpoint_every": every, "eval_episodes": 10}}
    path = write_sweep(out / "sweep.yaml", spec)
    print(f"sweep: {path} ({len(args.algos) * len(args.games) * args.seeds} runs of {args.steps:,} steps)")
    start = time.perf_counter()
    run_sweep(path, args.workers)
    print(f"sweep finished in {(time.perf_counter() - start) / 60:.1f} min")
    report = out / "report"
    command = [sys.executable, "-m", "gbmr", "compare", str(out), "--out", str(report)]
    print("$ gbmr compare " + " ".join(command[4:]), flush=True)
    subprocess.run(command, check=True)


# ---------------------------------------------------------------------------------------------- (c) NEC Atari
def nec_atari() -> None:
    spec = {"name": "nec-atari-10m", "out": "runs/sweeps/nec-atari-10m", "algos": ["nec"],
            "envs": [f"ALE/{g}-v5" for g in NEC_GAMES], "seeds": [1, 2, 3], "total_steps": 2_500_000,
            "set": {"device": "cuda", "eval_every": 250_000, "checkpoint_every": 100_000,
                    "agent": {"capacity": 500_000, "index": "hnsw", "index_tolerance": 1.0e-4}}}
    print("NEC's 10M-frame Atari table (Pritzel et al. 2017) on a GPU machine: 10M frames = 2.5M agent steps at "
          "frame skip 4, NEC's default preset (the paper's hyperparameters) with the paper's 5e5 DND entries per "
          "action (HNSW index). Save as nec-atari-10m.yaml:\n")
    print(yaml.safe_dump(spec, sort_keys=False))
    print("  gbmr sweep nec-atari-10m.yaml --workers 5      # one run per game and seed; rerun to resume")
    print("  gbmr compare runs/sweeps/nec-atari-10m --out reports/nec-atari-10m --budget 2500000\n")
    print("| game | this repo (NEC, 10M frames) | NEC paper, 10M frames |")
    print("|---|---|---|")
    for game in NEC_GAMES:
        print(f"| {game} | scores.md of the report | see paper |")
    print("\nThe published per-game scores are not copied here: they could not be checked against the paper when "
          "this script was written, and a wrong number is worse than none. Take them from the paper's per-game "
          "score table at 10M frames (Pritzel et al., ICML 2017, arXiv:1703.01988).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--minatar", action="store_true", help="(b) MinAtar sweep + gbmr compare")
    mode.add_argument("--nec-atari", action="store_true", help="(c) print the NEC 10M-frame Atari command")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 1..N (maze: 10, MinAtar: 3)")
    parser.add_argument("--steps", type=int, default=500_000, help="MinAtar agent steps per run")
    parser.add_argument("--games", nargs="+", default=list(MINATAR_GAMES), choices=MINATAR_GAMES,
                        help="MinAtar games")
    parser.add_argument("--algos", nargs="+", default=list(MINATAR_ALGOS), choices=MINATAR_ALGOS,
                        help="MinAtar agents (a later call with more agents skips the complete runs)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--out", type=Path, default=Path("runs/sample_efficiency"), help="root of the run folders")
    args = parser.parse_args()
    if args.nec_atari:
        nec_atari()
        return
    args.seeds = args.seeds or (3 if args.minatar else 10)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.minatar:
        minatar(args)
    else:
        maze(args)


if __name__ == "__main__":
    main()
