"""The Transformer torso's two fast paths against recomputing every window, on CPU.

    python benchmarks/transformer_attention.py               # ~1 min on 1 thread
    python benchmarks/transformer_attention.py --threads 2

d_model 64, 4 heads, 2 layers, lookback 256, 64 input features (an encoder's output).
- Acting, N envs: ``step`` with the KV cache against ``forward_sequence`` over each env's last lookback
  observations every step (its last output), on episodes of random length (some longer than lookback, some
  resets mid-run); both must pick the same greedy actions of a random linear head.
- Training, a minibatch of M = 1000 consecutive steps: windowed = ``forward_sequence`` over the M + lookback - 1
  steps (blocked band masks, and one dense S x S mask), full = the M windows of lookback steps each through the
  net, its last output; forward + backward of the same loss, whose gradients must agree.
- Attention alone (forward + backward, one sequence): the blocked band, one dense mask, and the
  ``local-attention`` package when it is installed (it is not a dependency: it cannot cut at episode starts).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.nn import functional as F

from gbmr.nets.transformer import TransformerTorso, band_attention

IN_FEATURES, ACTIONS = 64, 6
T = TypeVar("T")


def per_call(fn: Callable[[], T], reps: int, warm_up: bool = True) -> tuple[float, T]:
    """Mean seconds per call over ``reps`` calls (after one warm-up unless told not to) and the last result."""
    if warm_up:
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        result = fn()
    return (time.perf_counter() - start) / reps, result


def episode_starts(generator: torch.Generator, n: int, steps: int, mean_length: float) -> torch.Tensor:
    """[steps, n] bool, True at each episode's first step (step 0 for every env)."""
    starts = torch.rand(steps, n, generator=generator) < 1.0 / mean_length
    starts[0] = True
    return starts


def acting(net: TransformerTorso, n: int, steps: int) -> list[tuple[str, float, str]]:
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(steps, n, IN_FEATURES, generator=generator)
    starts = episode_starts(generator, n, steps, mean_length=200.0)
    head = torch.randn(net.out_features, ACTIONS, generator=generator)
    lookback = net.lookback

    def cached() -> list[torch.Tensor]:
        cache, actions = net.initial_cache(n), []
        for t in range(steps):
            features, cache = net.step(obs[t], starts[t], cache)
            actions.append((features @ head).argmax(-1))
        return actions

    def recomputed() -> list[torch.Tensor]:
        # Each env's last lookback observations, oldest first; the padding before step 0 is one-step episodes.
        window = torch.zeros(n, lookback, IN_FEATURES)
        window_starts = torch.ones(n, lookback, dtype=torch.bool)
        actions = []
        for t in range(steps):
            window = torch.cat((window[:, 1:], obs[t][:, None]), dim=1)
            window_starts = torch.cat((window_starts[:, 1:], starts[t][:, None]), dim=1)
            features = net.forward_sequence(window, window_starts)[:, -1]
            actions.append((features @ head).argmax(-1))
        return actions

    with torch.inference_mode():
        cached_time, cached_actions = per_call(cached, 2)
        recomputed_time, recomputed_actions = per_call(recomputed, 1, warm_up=False)
        cached_time, recomputed_time = cached_time / steps, recomputed_time / steps
        same = all(torch.equal(a, b) for a, b in zip(cached_actions, recomputed_actions, strict=True))
    episodes = int(starts.sum())
    check = f"same greedy actions on all {steps} x {n} steps: {same} ({episodes} episodes)"
    return [(f"acting, {n} envs: step with the KV cache", cached_time, check),
            (f"acting, {n} envs: forward_sequence over the window each step", recomputed_time,
             f"{recomputed_time / cached_time:.0f}x the cached step")]


def training(net: TransformerTorso, m: int, reps: int, full_reps: int) -> list[tuple[str, float, str]]:
    generator = torch.Generator().manual_seed(1)
    lookback = net.lookback
    length = m + lookback - 1
    x = torch.randn(1, length, IN_FEATURES, generator=generator)
    starts = episode_starts(generator, 1, length, mean_length=300.0).T.contiguous()
    weights = torch.randn(m, net.out_features, generator=generator)  # a loss that uses every output

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        net.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    def windowed() -> torch.Tensor:
        return gradient((net.forward_sequence(x, starts)[0, lookback - 1:] * weights).sum())

    positions = torch.arange(m)[:, None] + torch.arange(lookback)  # [M, lookback]: window k ends at step k + L - 1

    def full() -> torch.Tensor:
        return gradient((net.forward_sequence(x[0, positions], starts[0, positions])[:, -1] * weights).sum())

    blocked_time, grad_windowed = per_call(windowed, reps)
    block, net.attention_block = net.attention_block, length  # one block: a dense S x S band mask
    dense_time, _ = per_call(windowed, reps)
    net.attention_block = block
    full_time, grad_full = per_call(full, full_reps)
    error = (grad_windowed - grad_full).abs().max().item() / grad_full.abs().max().item()
    return [(f"training, M = {m}: windowed, blocked band masks ({length} tokens)", blocked_time,
             f"gradients agree with full's to {error:.1e} (relative)"),
            (f"training, M = {m}: windowed, one dense mask ({length} tokens)", dense_time,
             f"{dense_time / blocked_time:.2f}x blocked"),
            (f"training, M = {m}: full, M windows ({m * lookback} tokens)", full_time,
             f"{full_time / blocked_time:.0f}x windowed (blocked)")]


def attention_alone(length: int, band: int, reps: int) -> list[tuple[str, float, str]]:
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 4, length, 16, generator=generator) for _ in range(3))
    episode = torch.zeros(1, length, dtype=torch.long)

    def run(attend: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def call() -> None:
            inputs = [t.clone().requires_grad_() for t in (q, k, v)]
            attend(*inputs).sum().backward()
        return call

    rows = [(f"attention alone, S = {length}, band {band}: blocked", per_call(run(
        lambda q, k, v: band_attention(q, k, v, episode, band)), reps)[0], "")]
    offset = torch.arange(length)[:, None] - torch.arange(length)
    mask = (offset >= 0) & (offset < band)
    rows.append((f"attention alone, S = {length}, band {band}: one dense mask", per_call(run(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), reps)[0], ""))
    try:
        from local_attention import LocalAttention
    except ImportError:
        rows.append(("attention alone: local-attention", float("nan"), "not installed"))
        return rows
    local = LocalAttention(window_size=band - 1, causal=True, look_backward=1, exact_windowsize=True,
                           autopad=True, use_rotary_pos_emb=False)
    with torch.no_grad():
        error = (local(q, k, v) - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max().item()
    rows.append((f"attention alone, S = {length}, band {band}: local-attention", per_call(run(local), reps)[0],
                 f"no episode cuts; equals the dense mask to {error:.0e}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as runs use)")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--lookback", type=int, default=256)
    parser.add_argument("--act-steps", type=int, default=300, help="acting steps per measurement")
    parser.add_argument("--minibatch", type=int, default=1000)
    parser.add_argument("--update-reps", type=int, default=10, help="windowed updates timed")
    parser.add_argument("--full-reps", type=int, default=1, help="full updates timed, after a warm-up (~16 s each)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = TransformerTorso(IN_FEATURES, d_model=64, num_heads=4, num_layers=2, lookback=args.lookback)
    rows = acting(net, args.envs, args.act_steps)
    rows += training(net, args.minibatch, args.update_reps, args.full_reps)
    rows += attention_alone(args.minibatch + args.lookback - 1, args.lookback, 10)
    print(f"torch {torch.__version__}, {args.threads} thread(s), d_model 64, 4 heads, 2 layers "
          f"(windows {net.windows}), lookback {args.lookback}\n")
    print("| what | ms per step / update / call | note |")
    print("| --- | ---: | --- |")
    for what, seconds, note in rows:
        print(f"| {what} | {seconds * 1e3:.2f} | {note} |")


if __name__ == "__main__":
    main()
