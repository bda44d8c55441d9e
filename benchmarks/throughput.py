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
import tempfile
import time

import gymnasium as gym
import torch

from gbmr.config import build_config
from gbmr.envs import env_family, make_env
from gbmr.experiment.train import start_run

SB3_DQN_DEFAULTS = dict(
    lr=1e-4, buffer_size=1_000_000, learning_starts=100, batch_size=32, tau=1.0, gamma=0.99, train_freq=4,
    gradient_steps=1, target_update_interval=10_000, eps_fraction=0.1, eps_start=1.0, eps_end=0.05,
    max_grad_norm=10.0, hidden=(64, 64), double=False, loss="huber", torso="mlp",
    n_step=1, prioritized=False, dueling=False,  # SB3's DQN has none of them; our presets may set them
)


def time_gbmr(env_id: str, steps: int) -> float:
    from gbmr.agents.dqn import DQNConfig

    overrides = [f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in SB3_DQN_DEFAULTS.items()]
    config = build_config("dqn", env_id, DQNConfig, env_family(env_id), overrides=overrides, seed=0,
                          total_steps=steps, eval_every=0, eval_episodes=0, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        start_run(config, f"{tmp}/run", progress=False)
        return steps / (time.perf_counter() - start)


def time_sb3(env_id: str, steps: int) -> float:
    from stable_baselines3 import DQN

    d = SB3_DQN_DEFAULTS
    start = time.perf_counter()  # like ours, the clock includes making the env and the agent
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
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "MinAtar/Breakout-v1"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"DQN, {args.steps} env steps, SB3 default hyperparameters, 1 torch thread, best of {args.repeats}\n")
    print("| environment | gbmr steps/s | SB3 steps/s | ratio |")
    print("|---|---:|---:|---:|")
    for env_id in args.envs:
        make_env(env_id).close()  # first imports (minatar, ale_py) happen outside both clocks
        torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
        ours, theirs = 0.0, 0.0
        for _ in range(args.repeats):
            ours = max(ours, time_gbmr(env_id, args.steps))
            theirs = max(theirs, time_sb3(env_id, args.steps))
        print(f"| {env_id} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
