"""`gbmr list | train | eval | compare` — thin: parse, validate, call. Bad input exits with code 2."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gbmr.core.errors import GbmrError

if TYPE_CHECKING:
    from gbmr.config import RunConfig

EXAMPLES = """examples:
  gbmr train --algo dqn --env CartPole-v1 --total-steps 50000 --seed 1
  gbmr train --algo dqn --env MinAtar/Breakout-v1 --set lr=3e-4 --set prioritized=true
  gbmr train --resume runs/dqn_CartPole-v1_s1
  gbmr eval runs/dqn_CartPole-v1_s1 --episodes 10 --video
"""


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad usage already; keep its message to one clear line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gbmr", description=__doc__, epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("list", help="print the algorithms, presets and environment ids")

    train = sub.add_parser("train", help="train an agent (or --resume a run)")
    train.add_argument("--algo", help="algorithm (see `gbmr list`)")
    train.add_argument("--env", help="environment id (see `gbmr list`)")
    train.add_argument("--total-steps", type=int, help="environment steps to train for")
    train.add_argument("--seed", type=int)
    train.add_argument("--num-envs", type=int, help="environments stepped together (gymnasium vector env)")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    train.add_argument("--actors", type=int, help="Ray actors stepping the envs (0: one process)")
    train.add_argument("--mode", help="with --actors: sync (collect, then train) | async (actors run ahead)")
    train.add_argument("--ray", dest="ray_address", metavar="ADDRESS",
                       help="with --actors: the Ray cluster to join (default: local, start Ray here)")
    train.add_argument("--preset", help="named preset in configs/<algo>/ (default: the environment family's)")
    train.add_argument("--config", help="YAML file of config keys (run keys, agent:, env_options:)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set lr=1e-4 --set env_options.frame_skip=2")
    train.add_argument("--run-dir", help="where to write the run (default: runs/<algo>_<env>_s<seed>_<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    ev = sub.add_parser("eval", help="evaluate the saved policy of a run")
    ev.add_argument("run_dir")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    ev.add_argument("--video", action="store_true", help="record the episodes to RUN_DIR/videos/")

    try:
        from gbmr.analysis.cli import add_compare_parser
    except ImportError:  # the analysis extras are optional for training
        pass
    else:
        add_compare_parser(sub)
    from gbmr.sweep_cli import add_sweep_parser

    add_sweep_parser(sub)
    from gbmr.inspect_cli import add_inspect_parser

    add_inspect_parser(sub)
    from gbmr.pretrain_cli import add_pretrain_parsers

    add_pretrain_parsers(sub)
    return parser


def cmd_list() -> int:
    from gbmr.agents import ALGORITHMS
    from gbmr.config import preset_names
    from gbmr.envs import generic, list_env_ids
    from gbmr.envs.registry import GENERIC

    print("algorithms (presets):")
    for algo in sorted(ALGORITHMS):
        print(f"  {algo:12s} {', '.join(preset_names(algo))}")
    print("environments:")
    for family, ids in list_env_ids().items():
        print(f"  {family}:")
        summary = getattr(importlib.import_module(f"gbmr.envs.{family}"), "summary", None)
        for env_id in [summary()] if summary is not None else ids:
            print(f"    {env_id}")
    print(f"  {GENERIC}:\n    {generic.summary()}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from gbmr.experiment.train import resume_run, start_run

    if args.resume:
        given = [k for k in ("algo", "env", "total_steps", "seed", "num_envs", "preset", "config", "actors", "mode")
                 if getattr(args, k)]
        if given or args.set:
            raise GbmrError("--resume continues a run with its saved config; drop " + ", ".join(
                ["--" + k.replace("_", "-") for k in given] + (["--set"] if args.set else [])))
        run = resume_run(args.resume, progress=not args.no_progress)
        print(f"run complete: {run.path}")
        return 0
    if not args.algo or not args.env:
        raise GbmrError("train needs --algo and --env (or --resume RUN_DIR); see `gbmr list`")
    config = make_config(args)
    path = args.run_dir or default_run_dir(config.algo, config.env, config.seed)
    run = start_run(config, path, progress=not args.no_progress)
    print(f"run complete: {run.path}")
    return 0


def make_config(args: argparse.Namespace) -> RunConfig:
    from gbmr.agents import agent_class
    from gbmr.config import build_config
    from gbmr.envs import env_family

    cls = agent_class(args.algo)
    return build_config(
        args.algo, args.env, cls.Config, env_family(args.env), preset=args.preset, config_file=args.config,
        overrides=args.set, seed=args.seed, total_steps=args.total_steps, num_envs=args.num_envs,
        device=args.device, actors=args.actors, mode=args.mode, ray_address=args.ray_address,
    )


def default_run_dir(algo: str, env: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{algo}_{env.replace('/', '-')}_s{seed}_{stamp}")


def cmd_eval(args: argparse.Namespace) -> int:
    from gbmr.envs import make_env
    from gbmr.envs.registry import decision_metric_names, episode_metric_names
    from gbmr.experiment.train import load_trained_agent
    from gbmr.runners.sync import decision_percentiles, evaluate_episodes, mean_metrics

    if args.episodes < 1:
        raise GbmrError(f"--episodes must be at least 1, got {args.episodes}")
    config, agent = load_trained_agent(args.run_dir)
    env = make_env(config.env, args.seed, training=False, render_mode="rgb_array" if args.video else None,
                   **config.env_options)
    if args.video:
        from gymnasium.wrappers import RecordVideo

        if env.render_mode != "rgb_array":
            raise GbmrError(f"environment '{config.env}' cannot render frames, so --video is not available")
        env = RecordVideo(env, str(Path(args.run_dir) / "videos"), episode_trigger=lambda _: True,
                          disable_logger=True)
    result = evaluate_episodes(agent, env, args.episodes, args.seed, max_steps=config.eval_max_steps)
    returns = result.returns
    env.close()
    print(f"{config.algo} on {config.env}: {args.episodes} episodes")
    print(f"mean {returns.mean():.2f}  std {returns.std():.2f}  min {returns.min():.2f}  max {returns.max():.2f}")
    env_values = {**mean_metrics(result.metrics, episode_metric_names(env)),
                  **decision_percentiles(result.decisions, decision_metric_names(env))}
    if env_values:  # e.g. Mario's shaping terms, x position and flags (episode means), frames held (percentiles)
        print("  ".join(f"{name} {value:.3g}" for name, value in env_values.items()))
    if args.video:
        print(f"videos in {Path(args.run_dir) / 'videos'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "train":
            return cmd_train(args)
        if args.command == "eval":
            return cmd_eval(args)
        return args.func(args)
    except GbmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with `gbmr train --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
