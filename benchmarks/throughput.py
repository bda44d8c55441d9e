"""DQN training throughput: gbmr vs Stable-Baselines3, side by side in one run, same hyperparameters.

Both use SB3's DQN defaults (lr 1e-4, buffer 1M, learning_starts 100, batch 32, train_freq 4, one gradient
step, target update every 10k steps, epsilon 1 -> 0.05 over 10% of the run, Huber loss, grad-norm 10,
MLP [64, 64], vanilla (not Double) one-step targets, uniform replay) on the same environment, one torch thread
each. The two alternate ``--repeats`` times and the best of each is kept, so load from other processes hits both
alike.
Both clocks cover making the env and the agent and training (ours also its final checkpoint).
Prints env-steps/s for both and the ratio.

    python benchmarks/throughput.py [--steps 20000] [--repeats 3] [--envs CartPole-v1 MinAtar/Breakout-v1]
"""

from __future__ import annotations

import argparse
from functools import partial

import gymnasium as gym
import torch
from throughput_common import (
    add_clock_argument,
    as_overrides,
    clock,
    compare,
    print_row,
    print_table_header,
    time_gbmr,
    use_clock,
    warm_up,
)

from gbmr.envs import make_env

SB3_DQN_DEFAULTS = dict(
    lr=1e-4, buffer_size=1_000_000, learning_starts=100, batch_size=32, tau=1.0, gamma=0.99, train_freq=4,
    gradient_steps=1, target_update_interval=10_000, eps_fraction=0.1, eps_start=1.0, eps_end=0.05,
    max_grad_norm=10.0, hidden=(64, 64), double=False, loss="huber", torso="mlp",
    n_step=1, prioritized=False, dueling=False,  # SB3's DQN has none of them; our presets may set them
)


def time_ours(env_id: str, steps: int) -> float:
    from gbmr.agents.dqn import DQNConfig

    return time_gbmr("dqn", DQNConfig, env_id, steps, as_overrides(SB3_DQN_DEFAULTS))


def time_sb3(env_id: str, steps: int) -> float:
    from stable_baselines3 import DQN

    d = SB3_DQN_DEFAULTS
    start = clock()  # like ours, the clock includes making the env and the agent
    env = gym.wrappers.FlattenObservation(make_env(env_id, seed=0))
    model = DQN(
        "MlpPolicy", env, learning_rate=d["lr"], buffer_size=d["buffer_size"], learning_starts=d["learning_starts"],
        batch_size=d["batch_size"], tau=d["tau"], gamma=d["gamma"], train_freq=d["train_freq"],
        gradient_steps=d["gradient_steps"], target_update_interval=d["target_update_interval"],
        exploration_fraction=d["eps_fraction"], exploration_initial_eps=d["eps_start"],
        exploration_final_eps=d["eps_end"], max_grad_norm=d["max_grad_norm"],
        policy_kwargs=dict(net_arch=list(d["hidden"])), seed=0, device="cpu", verbose=0,
    )
    model.learn(total_timesteps=steps)
    return steps / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "MinAtar/Breakout-v1"])
    add_clock_argument(parser)
    args = parser.parse_args()
    use_clock(args.clock)
    torch.set_num_threads(1)
    print(f"DQN, {args.steps} env steps, SB3 default hyperparameters, 1 torch thread, best of {args.repeats}\n")
    print_table_header()
    for env_id in args.envs:
        warm_up(env_id)
        ours, theirs = compare(partial(time_ours, env_id, args.steps), partial(time_sb3, env_id, args.steps),
                               args.repeats)
        print_row(env_id, ours, theirs)


if __name__ == "__main__":
    main()
