"""Training speed of the multi-agent algorithms: env steps/s and episodes/s of training (acting + env + learning),
and the share of that time spent inside the environment. Prints a Markdown table.

``--num-envs 1 8`` also times PyMARL's parallel runner (8 envs, one gradient step per 8 finished episodes)
beside the episode runner. The buffer is first filled with ``batch_size`` episodes (not timed) so that every
finished episode of the timed part trains, as in a run past its first episodes. ``--vector both`` times a
family's own batched vector env (SMAX: one vmapped JAX call for all envs) beside gymnasium's SyncVectorEnv of
single envs (one call per env), which is what a family without one gets.
Run with ``nice``: ``python benchmarks/multiagent.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any

import numpy as np
import torch

from gbmr.agents import agent_class
from gbmr.envs import make_vector_env
from gbmr.envs.registry import make_sync_vector_env
from gbmr.runners.collector import Collector


def measure(algo: str, env_id: str, steps: int, agent_net: str, num_envs: int = 1, seed: int = 0,
            sync: bool = False) -> dict[str, Any]:
    """Speeds over ``steps`` env steps (summed over the ``num_envs`` envs) and the vector env's class name;
    ``sync``: gymnasium's SyncVectorEnv of single envs instead of the family's own vector env."""
    envs = (make_sync_vector_env if sync else make_vector_env)(env_id, num_envs)
    cls = agent_class(algo)
    config = cls.Config(agent_net=agent_net)
    agent = cls(config, envs.single_observation_space, envs.single_action_space, num_envs, torch.device("cpu"),
                seed, total_steps=1_000_000)
    collector = Collector(envs, seed)
    collector.start()
    while agent.buffer.size < config.batch_size:  # warm-up, untimed
        step = collector.step(agent.act(collector.obs))
        agent.observe(*step[:6])
    agent.update()
    env_time = 0.0
    episodes = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps // num_envs):
        actions = agent.act(collector.obs)
        t0 = time.perf_counter()
        step = collector.step(actions)
        env_time += time.perf_counter() - t0
        agent.observe(*step[:6])
        agent.update()
        episodes += len(step.finished)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"vector": type(envs).__name__ if num_envs > 1 else "-",
            "steps_per_s": steps / total, "episodes_per_s": episodes / total, "env_share": env_time / total,
            "cpu_steps_per_s": steps / cpu, "cpu_episodes_per_s": episodes / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    smax = ("SMAX/2s3z",) if importlib.util.find_spec("jaxmarl") else ()  # the smax extra is optional
    parser.add_argument("--envs", nargs="+", default=["LBF/Foraging-8x8-2p-1f-coop-v3", "MPE/simple_spread-v3", *smax])
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1],
                        help="1: the episode runner; K > 1: the parallel runner over K envs")
    parser.add_argument("--vector", choices=("family", "sync", "both"), default="family",
                        help="for K > 1: the family's own vector env, gymnasium's SyncVectorEnv, or both")
    args = parser.parse_args()
    kinds = {"family": (False,), "sync": (True,), "both": (False, True)}[args.vector]
    torch.set_num_threads(1)
    rows = []
    for env_id in args.envs:
        for algo, net in (("qmix", "rnn"), ("differ", "rnn"), ("differ", "transformer")):
            for num_envs in args.num_envs:
                for sync in kinds if num_envs > 1 else (False,):
                    result = measure(algo, env_id, args.steps, net, num_envs, sync=sync)
                    rows.append((env_id, f"{algo} ({net})", num_envs, result))
                    print(f"{env_id} {algo} {net} x{num_envs}: {result}", flush=True)
    print(f"\n| env | algo (agent net) | envs | vector env | env steps/s | episodes/s | per CPU second: steps, "
          f"episodes | env share |  ({args.steps} steps, 1 thread)")
    print("|---|---|---|---|---|---|---|---|")
    for env_id, name, num_envs, r in rows:
        print(f"| {env_id} | {name} | {num_envs} | {r['vector']} | {r['steps_per_s']:.0f} | {r['episodes_per_s']:.1f} "
              f"| {r['cpu_steps_per_s']:.0f}, {r['cpu_episodes_per_s']:.1f} | {100 * r['env_share']:.0f}% |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
