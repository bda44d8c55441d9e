"""PPO training throughput: gbmr vs Stable-Baselines3, side by side in one run, same hyperparameters.

Both use CleanRL's PPO setting (gbmr's ``ppo/default`` preset): 4 envs x 128 steps per rollout, 4 epochs of 4
minibatches (SB3 batch_size 128), gamma 0.99, GAE 0.95, clip 0.2 for the surrogate and the value loss, entropy
0.01, value 0.5, grad-norm 0.5, Adam (eps 1e-5) at lr 2.5e-4 annealed linearly to 0, advantages normalised per
minibatch, orthogonal init. Nets: on CartPole-v1 separate tanh MLPs [64, 64] for actor and critic; on MinAtar
gbmr's minatar_cnn with hidden [128] shared by both heads (Conv2d(C, 16, 3), ReLU, Flatten, Linear(1024, 128),
ReLU; in SB3 a features extractor with net_arch=[]). SB3 steps a DummyVecEnv (Monitor on each env) of the same
number of envs made by gbmr's ``make_env``, so both see the same environments (MinAtar with sticky actions 0.1).
One torch thread each. The two alternate ``--repeats`` times and the best of each is kept, so load from other
processes hits both alike. Both clocks cover making the envs and the agent and training (ours also its final
checkpoint; no evaluation). ``--steps`` is rounded up to whole rollouts (SB3 always finishes its rollout), so
both sides collect and learn from the same number of rollouts.
Prints env-steps/s for both and the ratio.

    python benchmarks/ppo_throughput.py [--steps 20480] [--repeats 3] [--envs CartPole-v1 MinAtar/Breakout-v1]

``--breakdown`` prints instead, for each side, the time spent learning (gbmr's ``PPOLearner.learn``, SB3's
``PPO.train``) and the rest (collecting rollouts, setup), best of ``--repeats`` by the total.

``--conv`` prints instead the time of MinAtar's conv (Breakout's 4 planes) in inference by batch size, oneDNN's
(``nn.Conv2d``) against PyTorch's native one (what ``SmallBatchConv2d`` calls for small batches).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

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
from torch import nn

from gbmr.envs import make_env

NUM_ENVS = 4
PPO = dict(  # gbmr's PPOConfig names; SB3's are mapped in time_sb3
    lr=2.5e-4, anneal_lr=True, n_steps=128, update_epochs=4, num_minibatches=4, gamma=0.99, gae_lambda=0.95,
    clip_coef=0.2, clip_vloss=True, norm_adv=True, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, target_kl=0.0,
    optimizer="adam", adam_eps=1e-5, frame_difference=False,
)
NETS = {  # per environment family: gbmr's torso settings
    "mlp": dict(model="mlp", hidden=(64, 64), activation="tanh", shared_torso=False),
    "minatar": dict(model="minatar_cnn", hidden=(128,), activation="relu", shared_torso=True),
}


def net_kind(env_id: str) -> str:
    return "minatar" if env_id.startswith("MinAtar/") else "mlp"


def time_ours(env_id: str, steps: int) -> float:
    from gbmr.agents.ppo import PPOConfig

    return time_gbmr("ppo", PPOConfig, env_id, steps, as_overrides({**PPO, **NETS[net_kind(env_id)]}),
                     num_envs=NUM_ENVS)


def minatar_extractor():
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class MinAtarCNN(BaseFeaturesExtractor):
        """gbmr's minatar_cnn torso with hidden [128]."""

        def __init__(self, observation_space, features_dim: int = 128):
            super().__init__(observation_space, features_dim)
            channels, height, width = observation_space.shape
            self.net = nn.Sequential(
                nn.Conv2d(channels, 16, 3), nn.ReLU(), nn.Flatten(),
                nn.Linear(16 * (height - 2) * (width - 2), features_dim), nn.ReLU(),
            )  # fmt: skip

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(obs)

    return MinAtarCNN


def time_sb3(env_id: str, steps: int) -> float:
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    d = PPO
    if net_kind(env_id) == "minatar":
        policy_kwargs = dict(features_extractor_class=minatar_extractor(), features_extractor_kwargs=dict(
            features_dim=NETS["minatar"]["hidden"][-1]), net_arch=[], share_features_extractor=True)
    else:
        policy_kwargs = dict(net_arch=dict(pi=list(NETS["mlp"]["hidden"]), vf=list(NETS["mlp"]["hidden"])),
                             activation_fn=nn.Tanh, share_features_extractor=False)
    batch = NUM_ENVS * d["n_steps"]
    start = clock()  # like ours, the clock includes making the envs and the agent
    envs = make_vec_env(lambda: make_env(env_id), n_envs=NUM_ENVS, seed=0, vec_env_cls=DummyVecEnv)
    model = SB3PPO(
        "MlpPolicy", envs, learning_rate=lambda remaining: d["lr"] * remaining, n_steps=d["n_steps"],
        batch_size=batch // d["num_minibatches"], n_epochs=d["update_epochs"], gamma=d["gamma"],
        gae_lambda=d["gae_lambda"], clip_range=d["clip_coef"], clip_range_vf=d["clip_coef"],
        normalize_advantage=d["norm_adv"], ent_coef=d["ent_coef"], vf_coef=d["vf_coef"],
        max_grad_norm=d["max_grad_norm"], target_kl=None, policy_kwargs=policy_kwargs, seed=0, device="cpu",
        verbose=0,
    )  # SB3's Adam already uses eps 1e-5 and orthogonal init (gains sqrt 2, 0.01, 1), as ours
    model.learn(total_timesteps=steps)
    return model.num_timesteps / (clock() - start)


@contextmanager
def timed_method(cls: type, name: str, totals: dict[str, float]) -> Iterator[None]:
    """Adds the time spent in ``cls.name`` to ``totals[name]`` while the context lasts (on the benchmark's clock)."""
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        start = clock()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + clock() - start

    setattr(cls, name, wrapper)
    try:
        yield
    finally:
        setattr(cls, name, original)


def learning_share(run: Callable[[], float], cls: type, name: str, steps: int) -> tuple[float, float]:
    """(total seconds, seconds inside ``cls.name``) of one run."""
    totals: dict[str, float] = {}
    with timed_method(cls, name, totals):
        total = steps / run()
    return total, totals.get(name, 0.0)


def breakdown_table(env_ids: list[str], steps: int, repeats: int) -> None:
    from stable_baselines3 import PPO as SB3PPO

    from gbmr.agents.ppo import PPOLearner

    print("| environment | side | total (s) | learning (s) | collecting and setup (s) |\n|---|---|---:|---:|---:|")
    for env_id in env_ids:
        warm_up(env_id)
        sides = {"gbmr": (partial(time_ours, env_id, steps), PPOLearner, "learn"),
                 "SB3": (partial(time_sb3, env_id, steps), SB3PPO, "train")}
        best: dict[str, tuple[float, float]] = {}
        for _ in range(repeats):  # alternating, as ``compare``
            for side, (run, cls, name) in sides.items():
                result = learning_share(run, cls, name, steps)
                best[side] = min(best.get(side, result), result)
        for side, (total, learning) in best.items():
            print(f"| {env_id} | {side} | {total:.2f} | {learning:.2f} | {total - learning:.2f} |", flush=True)


def conv_table(repeats: int) -> None:
    from gbmr.nets.torsos import SmallBatchConv2d

    conv = nn.Conv2d(4, 16, 3)

    def best_us(fn, x: torch.Tensor, calls: int = 500) -> float:
        times = []
        for _ in range(repeats + 1):  # the first round warms up
            start = time.perf_counter()
            for _ in range(calls):
                fn(x)
            times.append((time.perf_counter() - start) / calls * 1e6)
        return min(times[1:])

    def native(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._slow_conv2d_forward(x, conv.weight, conv.kernel_size, conv.bias, conv.stride,
                                                   conv.padding)

    print(f"MinAtar conv (4 -> 16 channels, 3x3, 10x10), inference, 1 torch thread, best of {repeats}; "
          f"SmallBatchConv2d takes the native path up to {SmallBatchConv2d.SMALL_BATCH} rows\n")
    print("| batch | oneDNN (us) | native (us) | ratio |\n|---:|---:|---:|---:|")
    with torch.inference_mode():
        for batch in (1, 4, 16, 64, 128):
            x = torch.rand(batch, 4, 10, 10)
            ours, theirs = best_us(native, x), best_us(conv, x)
            print(f"| {batch} | {theirs:.1f} | {ours:.1f} | {theirs / ours:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_480)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "MinAtar/Breakout-v1"])
    parser.add_argument("--conv", action="store_true", help="time MinAtar's conv by batch size instead")
    parser.add_argument("--breakdown", action="store_true", help="time learning vs the rest on each side instead")
    add_clock_argument(parser)
    args = parser.parse_args()
    use_clock(args.clock)
    if args.conv:
        torch.set_num_threads(1)
        return conv_table(args.repeats)
    rollout = NUM_ENVS * PPO["n_steps"]
    steps = -(-args.steps // rollout) * rollout
    torch.set_num_threads(1)
    print(f"PPO, {steps} env steps ({steps // rollout} rollouts of {NUM_ENVS} envs x {PPO['n_steps']} steps, "
          f"{PPO['update_epochs']} epochs x {PPO['num_minibatches']} minibatches), same hyperparameters, "
          f"1 torch thread, best of {args.repeats}\n")
    if args.breakdown:
        return breakdown_table(args.envs, steps, args.repeats)
    print_table_header()
    for env_id in args.envs:
        warm_up(env_id)
        ours, theirs = compare(partial(time_ours, env_id, steps), partial(time_sb3, env_id, steps), args.repeats)
        print_row(env_id, ours, theirs)


if __name__ == "__main__":
    main()
