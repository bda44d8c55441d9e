"""Distributed PPO throughput: gbmr's Ray actors against RLlib's PPO, same env, same sizes, one local Ray.

Both: ``--actors`` remote samplers (gbmr actors / RLlib env runners) holding 8 envs between them, rollouts of
32 steps per env (a batch of 256), 20 epochs over it as one minibatch, MLP [64, 64] tanh for policy and value,
the learner in this process on the CPU. RLlib runs its default (new) API stack. Each side's clock starts after
its first batch has been learnt from and stops at the end, so actor start-up is left out of both; steps/s are
env steps sampled. CartPole-v1 shows the per-batch overhead; the slow CartPole (``--delay`` s a step) a
simulator-bound env. RLlib is not a gbmr dependency: it pins gymnasium 1.2, so run this in its own venv
(``pip install torch==2.13.0 && pip install -e . 'ray[rllib]==2.60.0'``).

    python benchmarks/rllib_ppo.py [--steps 16384] [--actors 2] [--delay 0.002]
"""

from __future__ import annotations

import argparse
import time

from distributed import SLOW, steps_per_second

from gbmr.runners.distributed import connect_ray

NUM_ENVS, ROLLOUT, EPOCHS = 8, 32, 20


def rllib_steps_per_second(env_id: str, steps: int, actors: int, delay: float) -> float:
    """Steady-state env steps/s of RLlib's PPO with the sizes above."""
    import gymnasium as gym
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    name = "gbmr_bench_env"
    options = {"delay": delay} if env_id == SLOW else {}
    register_env(name, lambda _: gym.make(env_id, **options))
    config = (
        PPOConfig()
        .environment(name)
        .env_runners(num_env_runners=actors, num_envs_per_env_runner=NUM_ENVS // actors,
                     rollout_fragment_length=ROLLOUT)
        .training(train_batch_size_per_learner=NUM_ENVS * ROLLOUT, minibatch_size=NUM_ENVS * ROLLOUT,
                  num_epochs=EPOCHS, lr=1e-3, gamma=0.98, lambda_=0.8, clip_param=0.2, entropy_coeff=0.0,
                  vf_loss_coeff=0.5, grad_clip=0.5)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh",
                                                   vf_share_layers=False))
    )
    algo = config.build_algo()
    try:
        def sampled(result: dict) -> int:
            return int(result["env_runners"]["num_env_steps_sampled_lifetime"])

        first = sampled(algo.train())
        start, done = time.perf_counter(), first
        while done < steps:
            done = sampled(algo.train())
        return (done - first) / (time.perf_counter() - start)
    finally:
        algo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16384)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.002)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", SLOW])
    args = parser.parse_args()
    connect_ray("local", args.actors + 1)
    print(f"PPO, {args.steps} env steps, {NUM_ENVS} envs on {args.actors} actors, slow env delay "
          f"{args.delay * 1e3:.1f} ms a step\n")
    print("| environment | gbmr steps/s | RLlib steps/s | gbmr / RLlib |")
    print("|---|---:|---:|---:|")
    for env_id in args.envs:
        ours, _ = steps_per_second(env_id, args.steps, args.actors, args.delay)
        theirs = rllib_steps_per_second(env_id, args.steps, args.actors, args.delay)
        name = "slow CartPole" if env_id == SLOW else env_id
        print(f"| {name} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
