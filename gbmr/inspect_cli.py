"""`gbmr inspect`: the argparse wiring the main CLI mounts, and the command (drawing in analysis/inspect_graph.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_inspect_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `inspect` on the main CLI's subparsers (its handler is set as `func`)."""
    parser = subparsers.add_parser(
        "inspect",
        help="save a picture of the memory graph of a run (gq, gbmr, gcmr, gbmr-sweep, gbmr-dqn)",
        description="Draw the memory graph of a graph agent's run from its latest checkpoint: nodes coloured "
        "by value, edges, and the critical nodes and paths of the last reconstruction. On the paper maze the "
        "graph is drawn on the grid; otherwise nodes are placed by a PCA of their keys (the most visited "
        "few thousand).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `gbmr train`")
    parser.add_argument("--out", metavar="FILE.png",
                        help="where to save the picture (default: RUN_DIR/memory_graph.png)")
    parser.add_argument("--episodes", type=int, default=0, metavar="N",
                        help="also play N greedy episodes and report how the agent's reads went: how often the "
                        "nearest node is an exact match or within dist_th, and how decisive the Q values are")
    parser.add_argument("--seed", type=int, default=10_000, help="reset seed of the first greedy episode")
    parser.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    """Checks the run holds a graph agent before loading its checkpoint; user errors raise GbmrError (exit 2)."""
    from gbmr.agents import ALGORITHMS, agent_class  # torch & co. only when used
    from gbmr.analysis.inspect_graph import GridLayout, draw_memory_graph
    from gbmr.analysis.memory_reads import greedy_read_stats
    from gbmr.core.errors import GbmrError
    from gbmr.core.run_dir import RunDir
    from gbmr.envs import make_env
    from gbmr.experiment.train import load_trained_agent

    run = RunDir.existing(args.run_dir)
    algo = run.read_config()["algo"]
    if not hasattr(agent_class(algo), "graph_agent"):
        graph_algos = [name for name in ALGORITHMS if hasattr(agent_class(name), "graph_agent")]
        raise GbmrError(f"'{run.path}' is a {algo} run, which has no memory graph to draw; inspect works on runs "
                        f"of {', '.join(graph_algos)}")
    out = Path(args.out) if args.out else run.path / "memory_graph.png"
    if out.suffix.lower() != ".png":
        raise GbmrError(f"--out must be a .png file, got '{out}'")
    if not out.parent.is_dir():
        raise GbmrError(f"folder '{out.parent}' of --out does not exist")
    if args.episodes < 0:
        raise GbmrError(f"--episodes must be >= 0, got {args.episodes}")
    config, agent = load_trained_agent(run.path)
    memory = agent.graph_agent  # gbmr-dqn's graph is its memory's; its network acts
    env = make_env(config.env, config.seed, training=False, **config.env_options)
    grid = GridLayout.from_env(env) if memory.config.encoder == "identity" else None
    reads = greedy_read_stats(memory, env, args.episodes, args.seed, player=agent) if args.episodes else None
    env.close()
    # GQ never reconstructs: no critical nodes, no paths
    summary = draw_memory_graph(memory.graph, getattr(memory, "last_critical", []),
                                getattr(memory, "last_paths", []), out,
                                title=f"{algo} on {config.env}, step {agent.steps:,}", grid=grid)
    print(f"memory graph picture: {out}")
    print(summary.line())
    if reads is not None:
        print(reads.line())
    return 0
