"""SAC and TD3 training throughput: gbmr vs Stable-Baselines3, side by side in one run, same hyperparameters.

Both sides use SB3's update scheme with MLPs [w, w] for actor and critics (w = 256, the default preset, and 64,
the classic preset, with batches of 256 and 64), buffer 1M, gamma 0.99, tau 0.005, lr 3e-4 for every optimiser,
one gradient step per env step after ``--learning-starts`` random steps:
- SAC: the actor and the temperature (start 1, target entropy -dim(A)) updated at every critic update, targets
  at every update;
- TD3: actor and targets every 2 critic updates, target smoothing 0.2 clipped at 0.5, Gaussian acting noise 0.1.
One torch thread each; the two alternate ``--repeats`` times and the best of each is kept, so load from other
processes hits both alike. Both clocks cover making the env and the agent and training (ours also its final
checkpoint). Prints env-steps/s for both and the ratio.

    python benchmarks/continuous_throughput.py [--steps 5000] [--learning-starts 1000] [--repeats 3]
                                               [--sizes 256x256 64x64]
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch
from throughput_common import add_clock_argument, as_overrides, clock, compare, time_gbmr, use_clock, warm_up

from gbmr.envs import make_env

COMMON = dict(gamma=0.99, tau=0.005, buffer_size=1_000_000, batch_size=256, train_freq=1, gradient_steps=1,
              policy_lr=3e-4, q_lr=3e-4, hidden=(256, 256))
OURS = {
    "sac": dict(COMMON, policy_frequency=1, target_network_frequency=1, autotune=True, alpha_init=1.0),
    "td3": dict(COMMON, policy_frequency=2, policy_noise=0.2, noise_clip=0.5, exploration_noise=0.1,
                noise_type="gaussian"),
}


def time_ours(algo: str, env_id: str, steps: int, learning_starts: int, width: int, batch: int) -> float:
    from gbmr.agents import agent_class

    overrides = as_overrides({**OURS[algo], "learning_starts": learning_starts, "hidden": (width, width),
                              "batch_size": batch})
    return time_gbmr(algo, agent_class(algo).Config, env_id, steps, overrides)


def time_sb3(algo: str, env_id: str, steps: int, learning_starts: int, width: int, batch: int) -> float:
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    start = clock()  # like ours, the clock includes making the env and the agent
    env = make_env(env_id, seed=0)
    common = dict(learning_rate=3e-4, buffer_size=COMMON["buffer_size"], learning_starts=learning_starts,
                  batch_size=batch, tau=COMMON["tau"], gamma=COMMON["gamma"], train_freq=1,
                  gradient_steps=1, policy_kwargs=dict(net_arch=[width, width]), seed=0, device="cpu",
                  verbose=0)
    if algo == "sac":
        model = SAC("MlpPolicy", env, ent_coef="auto_1.0", target_update_interval=1, **common)
    else:
        dim = env.action_space.shape[0]
        model = TD3("MlpPolicy", env, policy_delay=2, target_policy_noise=0.2, target_noise_clip=0.5,
                    action_noise=NormalActionNoise(np.zeros(dim), 0.1 * np.ones(dim)), **common)
    model.learn(total_timesteps=steps)
    return steps / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--learning-starts", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--algos", nargs="+", default=["sac", "td3"])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--sizes", nargs="+", default=["256x256", "64x64"],
                        help="MLP width x batch size pairs (the default preset's, the classic preset's)")
    add_clock_argument(parser)
    args = parser.parse_args()
    use_clock(args.clock)
    torch.set_num_threads(1)
    print(f"{args.env}, {args.steps} env steps ({args.learning_starts} random first), SB3's update scheme, "
          f"1 torch thread, best of {args.repeats}\n")
    print("| algorithm | MLP | batch | gbmr steps/s | SB3 steps/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    warm_up(args.env)
    for size in args.sizes:
        width, batch = (int(x) for x in size.split("x"))
        for algo in args.algos:
            run = (algo, args.env, args.steps, args.learning_starts, width, batch)
            ours, theirs = compare(partial(time_ours, *run), partial(time_sb3, *run), args.repeats)
            print(f"| {algo} | [{width}, {width}] | {batch} | {ours:,.1f} | {theirs:,.1f} | {ours / theirs:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
