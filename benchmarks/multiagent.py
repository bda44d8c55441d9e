"""Training speed of the multi-agent algorithms: env steps/s and episodes/s of training (acting + env + learning),
and the share of that time spent inside the environment. Prints a Markdown table.

The buffer is first filled with ``batch_size`` episodes (not timed) so that every finished episode of the timed
part trains, as in a run past its first episodes. Run with ``nice``: ``python benchmarks/multiagent.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch

from gbmr.agents import agent_class
from gbmr.envs import make_vector_env
from gbmr.runners.collector import Collector


def measure(algo: str, env_id: str, steps: int, agent_net: str, seed: int = 0) -> dict[str, float]:
    envs = make_vector_env(env_id, 1)
    cls = agent_class(algo)
    config = cls.Config(agent_net=agent_net)
    agent = cls(config, envs.single_observation_space, envs.single_action_space, 1, torch.device("cpu"), seed,
                total_steps=1_000_000)
    collector = Collector(envs, seed)
    collector.start()
    while agent.buffer.size < config.batch_size:  # warm-up, untimed
        step = collector.step(agent.act(collector.obs))
        agent.observe(*step[:6])
    agent.update()
    env_time = 0.0
    episodes = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        actions = agent.act(collector.obs)
        t0 = time.perf_counter()
        step = collector.step(actions)
        env_time += time.perf_counter() - t0
        agent.observe(*step[:6])
        agent.update()
        episodes += len(step.finished)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"steps_per_s": steps / total, "episodes_per_s": episodes / total, "env_share": env_time / total,
            "cpu_steps_per_s": steps / cpu, "cpu_episodes_per_s": episodes / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    smax = ("SMAX/2s3z",) if importlib.util.find_spec("jaxmarl") else ()  # the smax extra is optional
    parser.add_argument("--envs", nargs="+", default=["LBF/Foraging-8x8-2p-1f-coop-v3", "MPE/simple_spread-v3", *smax])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for env_id in args.envs:
        for algo, net in (("qmix", "rnn"), ("differ", "rnn"), ("differ", "transformer")):
            result = measure(algo, env_id, args.steps, net)
            rows.append((env_id, f"{algo} ({net})", result))
            print(f"{env_id} {algo} {net}: {result}", flush=True)
    print(f"\n| env | algo (agent net) | env steps/s | episodes/s | per CPU second: steps, episodes | env share |"
          f"  ({args.steps} steps, 1 thread)")
    print("|---|---|---|---|---|---|")
    for env_id, name, r in rows:
        print(f"| {env_id} | {name} | {r['steps_per_s']:.0f} | {r['episodes_per_s']:.1f} "
              f"| {r['cpu_steps_per_s']:.0f}, {r['cpu_episodes_per_s']:.1f} | {100 * r['env_share']:.0f}% |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
