"""The Transformer torso: acting step by step through the KV cache equals the windowed training path, which
equals the net run on each step's window alone (written out here with plain matrix products); an output
depends on exactly its window (its episode's last lookback steps); the cache is plain tensors in a checkpoint."""

import io
import math

import pytest
import torch

from gbmr.core.errors import GbmrError
from gbmr.nets.transformer import TransformerTorso, layer_windows, rotate, rotation

IN, LOOKBACK, STEPS = 5, 7, 150  # 150 steps: 3 attention blocks of 64, the last one partly padding


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    torch.manual_seed(0)


def make_net(num_layers: int = 2, lookback: int = LOOKBACK) -> TransformerTorso:
    return TransformerTorso(IN, d_model=16, num_heads=2, num_layers=num_layers, lookback=lookback, ff_mult=2)


def episodes() -> torch.Tensor:
    """starts [4, STEPS]: one episode longer than lookback throughout; resets mid-sequence, one a one-step
    episode; episodes starting at different times; env 3 begins mid-episode (an empty cache, the same)."""
    starts = torch.zeros(4, STEPS, dtype=torch.bool)
    starts[:3, 0] = True
    starts[1, [40, 41, 97]] = True
    starts[2, [3, 4, 63, 64, 65, 128]] = True
    starts[3, [9, 70]] = True
    return starts


def window_start(starts: torch.Tensor, i: int, lookback: int) -> int:
    """The first step of position i's window: lookback back at most, never before its episode's start."""
    j = i
    while j > 0 and i - j + 1 < lookback and not starts[j]:
        j -= 1
    return j


def reference(net: TransformerTorso, x: torch.Tensor) -> torch.Tensor:
    """The net on one window x [T, IN] (a single episode), written out: its output at the window's last step.
    RoPE as complex multiplication, attention as softmax(q k^T / sqrt(d)) under each layer's causal band."""
    length = len(x)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * 10000.0 ** (
        -torch.arange(net.head_dim // 2, dtype=torch.float64) / (net.head_dim // 2))
    phase = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)  # [T, head_dim / 2]

    def rope(t: torch.Tensor) -> torch.Tensor:  # [heads, T, head_dim], pairs (m, m + half)
        half = t.shape[-1] // 2
        z = torch.complex(t[..., :half], t[..., half:]) * phase
        return torch.cat((z.real, z.imag), dim=-1)

    offset = torch.arange(length)[:, None] - torch.arange(length)
    h = net.input(x)
    for block, window in zip(net.blocks, net.windows, strict=True):
        q, k, v = block.qkv(block.norm1(h)).reshape(length, 3, net.num_heads, -1).permute(1, 2, 0, 3)
        scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(net.head_dim)
        scores = scores.masked_fill((offset < 0) | (offset >= window), -math.inf)
        h = h + block.out((scores.softmax(-1) @ v).transpose(0, 1).reshape(length, -1))
        h = h + block.mlp(block.norm2(h))
    return net.norm(h)[-1]


def act(net: TransformerTorso, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Features [N, S, d] from stepping all N envs through the cache, one step at a time."""
    cache, features = net.initial_cache(len(x)), []
    for t in range(x.shape[1]):
        out, cache = net.step(x[:, t], starts[:, t], cache)
        features.append(out)
    return torch.stack(features, dim=1)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_cached_acting_equals_forward_sequence(num_layers):
    net = make_net(num_layers)
    x, starts = torch.randn(4, STEPS, IN), episodes()
    with torch.no_grad():
        assert torch.allclose(act(net, x, starts), net.forward_sequence(x, starts), atol=1e-5)


@pytest.mark.parametrize(("num_layers", "block"), [(2, 64), (2, 4), (3, 2)])
def test_forward_sequence_equals_each_window_alone(num_layers, block):
    """Blocks of 4 and 2 queries: the band spans several blocks back, as lookback 256 does with 64."""
    net = make_net(num_layers)
    net.attention_block = block
    x, starts = torch.randn(4, STEPS, IN), episodes()
    with torch.no_grad():
        features = net.forward_sequence(x, starts)
        for env in range(len(x)):
            for i in range(STEPS):
                j = window_start(starts[env], i, LOOKBACK)
                assert torch.allclose(features[env, i], reference(net, x[env, j:i + 1]), atol=1e-5), (env, i)


def test_an_output_depends_on_exactly_its_window():
    """Changing the input at p changes the output at i if and only if p is in i's window: not lookback or more
    steps back, not before i's episode start, and every step inside it (the oldest through the layers' relay)."""
    net = make_net(num_layers=2)
    x, starts = torch.randn(2, STEPS, IN), episodes()[:2]
    with torch.no_grad():
        base = net.forward_sequence(x, starts)
        for env in range(2):
            for p in (0, 30, 39, 40, 41, 60, 96, 97, 140):
                moved = x.clone()
                moved[env, p] += 1.0
                change = (net.forward_sequence(moved, starts) - base).abs().amax(-1)
                expected = torch.tensor([window_start(starts[env], i, LOOKBACK) <= p <= i for i in range(STEPS)])
                assert torch.equal(change[1 - env], torch.zeros(STEPS))  # other sequences untouched
                assert (change[env, ~expected] == 0).all(), (env, p)
                assert (change[env, expected] > 1e-4).all(), (env, p)


def test_cache_is_plain_tensors_through_a_checkpoint():
    net = make_net()
    x, starts = torch.randn(4, 30, IN), episodes()[:, :30]
    with torch.no_grad():
        cache = net.initial_cache(4)
        for t in range(20):
            _, cache = net.step(x[:, t], starts[:, t], cache)
        assert all(isinstance(value, torch.Tensor) for value in cache.values())
        buffer = io.BytesIO()
        torch.save({"cache": cache}, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)["cache"]
        for t in range(20, 30):
            out, cache = net.step(x[:, t], starts[:, t], cache)
            out_loaded, loaded = net.step(x[:, t], starts[:, t], loaded)
            assert torch.equal(out, out_loaded)


def test_step_leaves_the_given_cache_unchanged():
    """The agent evaluates V of the next observation on the cache without advancing it."""
    net = make_net()
    with torch.no_grad():
        _, cache = net.step(torch.randn(3, IN), torch.ones(3, dtype=torch.bool), net.initial_cache(3))
        kept = {name: value.clone() for name, value in cache.items()}
        net.step(torch.randn(3, IN), torch.tensor([True, False, False]), cache)
    assert all(torch.equal(kept[name], value) for name, value in cache.items())


def test_rope_scores_depend_only_on_distance_even_late_in_long_episodes():
    """The cache's clock can reach an episode's length (10^7 steps here): scores must match the window's
    small indices to 1e-5, which float32 angles would not (their rounding at 10^7 is ~0.5 rad)."""
    q, k = torch.randn(2, 8, 16)
    near = torch.arange(8)
    far = near + 10_000_000
    scores = [rotate(q, *rotation(t, 16, q.dtype)) @ rotate(k, *rotation(t, 16, k.dtype)).T for t in (near, far)]
    assert torch.allclose(scores[0], scores[1], atol=1e-5)


def test_layer_windows_add_up_to_lookback():
    for lookback in (1, 2, 7, 32, 256):
        for layers in (1, 2, 3, 4):
            windows = layer_windows(lookback, layers)
            assert len(windows) == layers and min(windows) >= 1
            assert sum(w - 1 for w in windows) == lookback - 1
            assert max(windows) - min(windows) <= 1
    assert TransformerTorso(3, lookback=32).windows == [17, 16]


def test_lookback_one_sees_only_the_current_step():
    net = make_net(lookback=1)
    x, starts = torch.randn(4, 20, IN), episodes()[:, :20]
    with torch.no_grad():
        features = net.forward_sequence(x, starts)
        assert torch.allclose(act(net, x, starts), features, atol=1e-5)
        alone = net.forward_sequence(x.reshape(80, 1, IN), torch.ones(80, 1, dtype=torch.bool))
        assert torch.allclose(features.reshape(80, -1), alone[:, 0], atol=1e-5)


def test_bad_shapes_are_user_errors():
    with pytest.raises(GbmrError, match="lookback"):
        TransformerTorso(3, lookback=0)
    with pytest.raises(GbmrError, match="heads of even size"):
        TransformerTorso(3, d_model=12, num_heads=4)
