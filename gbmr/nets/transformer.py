"""A causal Transformer torso for policies that remember: the features of a step depend on its episode's last
``lookback`` observations (itself included) and on nothing else, never on a step before its episode's start.

Why each layer sees less than ``lookback``: with a KV cache, the keys a layer caches for token j were computed
from j's own past, so if every layer attended ``lookback`` back the net's output at i would depend on up to
num_layers x (lookback - 1) steps back, more than the lookback - 1 steps of context a training window gives it,
and acting and training would differ. So the window is split across the layers (``layer_windows``): layer l
attends w_l back with sum(w_l - 1) = lookback - 1 (lookback 32, 2 layers: 16 then 17), and the whole net sees
exactly ``lookback`` steps, the same whether it runs on a long sequence, on each window alone, or step by step.
The price: a layer cannot look at the oldest step directly, a later layer reaches it through an earlier one.

Two paths give the same outputs (tests/test_transformer.py checks them against each other and against running
the net on each window alone, to 1e-5):
- ``step`` (acting): one new observation per env. Layer l keeps a ring buffer of the keys and values of the
  env's last w_l tokens, so a step computes Q, K, V for the new token only.
- ``forward_sequence`` (training): consecutive steps at once under band masks, so a minibatch of M steps with
  its ``lookback - 1`` steps of context costs M + lookback - 1 tokens, not M x lookback.

Positions are rotary (RoPE, Su et al. 2021): a query-key score depends only on the two tokens' distance, so a
key is rotated once, when it enters the cache, and stays right as the window slides; and the cache's clock and
the window's own indices (which start anywhere in an episode) give the same scores. The cache's clock counts
from the episode's start, so it stays as small as an episode is long, and it also tells which ring slots hold
the current episode; angles are computed in float64 so a long episode loses no precision. A learned absolute
embedding could not do this: a token's embedding would depend on where the window starts, and cached keys
would have to be recomputed as it slides.

Attention is PyTorch's ``scaled_dot_product_attention`` with boolean masks, blocked along the sequence
(``ATTENTION_BLOCK``): queries in a block of 64 attend only to the keys from w - 1 before the block to its
end, so attention costs ~S x (w + 64), not S^2. Measured here (1 thread, one sequence of 1255 tokens, a band
of 256, 4 heads of 16, forward + backward of attention alone): blocked 11 ms, one dense S x S band mask 24 ms,
the ``local-attention`` package 20 ms (einsum + softmax, no fused kernel); and ``local-attention`` cannot cut
at episode starts (its mask is a key padding mask shared by all queries), so it is not a dependency. The whole
torso's forward + backward on those 1255 steps: 25 ms blocked, 88 ms with one dense mask
(``benchmarks/transformer_attention.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gbmr.core.errors import GbmrError

ATTENTION_BLOCK = 64  # queries per attention block in forward_sequence (32-128 were within 20% of each other)


def rotation(positions: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., head_dim // 2] of RoPE's angles position x frequency, computed in float64."""
    half = head_dim // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angles = positions.to(torch.float64)[..., None] * freqs
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., m], x[..., m + half]) of ``x`` [..., T, head_dim] by the angles of cos, sin."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, episode: torch.Tensor, window: int,
                   block: int = ATTENTION_BLOCK) -> torch.Tensor:
    """q, k, v [B, H, S, hd], episode [B, S] (an id per episode) -> [B, H, S, hd], where position i attends to
    the j with i - window < j <= i in its own episode.

    The sequence is cut into blocks of ``block`` queries; each block sees the ``back`` blocks of keys before it
    and its own, with the band and episode mask inside that span. Padding keys before the start get episode -1
    (never a match); padding queries after the end attend to themselves (no all-masked row, so no NaN)."""
    length = q.shape[2]
    width = min(block, length)
    blocks = -(-length // width)
    back = min(-(-(window - 1) // width), blocks - 1)
    span, front, end = (back + 1) * width, back * width, blocks * width - length
    qb = F.pad(q, (0, 0, 0, end)).unflatten(2, (blocks, width))  # [B, H, blocks, width, hd]
    kb = F.pad(k, (0, 0, front, end)).unfold(2, span, width).transpose(-1, -2)  # [B, H, blocks, span, hd]
    vb = F.pad(v, (0, 0, front, end)).unfold(2, span, width).transpose(-1, -2)
    i = torch.arange(blocks * width, device=q.device).reshape(blocks, width)
    j = torch.arange(-front, blocks * width, device=q.device).unfold(0, span, width)  # [blocks, span]
    offset = i[:, :, None] - j[:, None, :]
    band = (offset >= 0) & (offset < window)
    ep = torch.cat((episode.new_full((len(episode), front), -1), episode, episode[:, -1:].expand(-1, end)), dim=1)
    same = ep[:, front:].unflatten(1, (blocks, width))[..., None] == ep.unfold(1, span, width)[:, :, None, :]
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=(band & same)[:, None])
    return out.flatten(2, 3)[:, :, :length]


class Block(nn.Module):
    """Pre-LayerNorm block: multi-head self-attention, then a GELU MLP, each with a residual connection."""

    def __init__(self, d_model: int, num_heads: int, ff_mult: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        hidden = ff_mult * d_model
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def qkv_heads(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [B, T, d] -> q, k, v [B, heads, T, head_dim], q and k rotated by cos, sin (broadcast to q's shape
        with head_dim // 2 last)."""
        batch, length, _ = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def finish(self, h: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The residual updates after attention; attended [B, heads, T, head_dim]."""
        batch, _, length, _ = attended.shape
        h = h + self.out(attended.transpose(1, 2).reshape(batch, length, -1))
        return h + self.mlp(self.norm2(h))


def layer_windows(lookback: int, num_layers: int) -> list[int]:
    """How far back each layer attends (itself included): sum(w - 1) = lookback - 1, split as evenly as can be,
    the earlier layers taking the remainder (they look at the observations themselves)."""
    share, extra = divmod(lookback - 1, num_layers)
    return [1 + share + (layer < extra) for layer in range(num_layers)]


class TransformerTorso(nn.Module):
    """Input projection to ``d_model``, ``num_layers`` pre-LayerNorm blocks, a final LayerNorm. No dropout: PPO's
    ratio compares the same net's outputs at acting and at training time."""

    def __init__(self, in_features: int, d_model: int = 64, num_heads: int = 4, num_layers: int = 2,
                 lookback: int = 32, ff_mult: int = 4) -> None:
        super().__init__()
        if lookback < 1 or num_layers < 1:
            raise GbmrError(f"lookback and num_layers must be at least 1, got {lookback} and {num_layers}")
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise GbmrError(f"d_model ({d_model}) must split into num_heads ({num_heads}) heads of even size (RoPE)")
        self.lookback, self.out_features = lookback, d_model
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.windows = layer_windows(lookback, num_layers)
        self.attention_block = ATTENTION_BLOCK  # the benchmark sets it past S for one dense mask
        self.input = nn.Linear(in_features, d_model)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, ff_mult) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward_sequence(self, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """x [B, S, in_features], starts [B, S] (True where an episode begins) -> features [B, S, d_model].

        The output at i depends on the j with i - lookback < j <= i and no episode start in (j, i]. The first
        positions of a sequence see only what it holds: give it the lookback - 1 steps before as context."""
        length = starts.shape[1]
        episode = starts.long().cumsum(dim=1)
        h = self.input(x)
        cos, sin = rotation(torch.arange(length, device=x.device), self.head_dim, h.dtype)
        for block, window in zip(self.blocks, self.windows, strict=True):
            q, k, v = block.qkv_heads(h, cos, sin)
            h = block.finish(h, band_attention(q, k, v, episode, window, self.attention_block))
        return self.norm(h)

    def initial_cache(self, n: int) -> dict[str, torch.Tensor]:
        """An empty cache for n envs: each env's clock (steps since its episode began, RoPE's position) and per
        layer l the rotated keys and the values of the env's last w_l tokens, a ring buffer (slot time % w_l)."""
        device = self.input.weight.device
        cache = {"time": torch.zeros(n, dtype=torch.long, device=device)}
        for layer, window in enumerate(self.windows):
            for name in ("keys", "values"):
                cache[f"{name}{layer}"] = torch.zeros((n, self.num_heads, window, self.head_dim), device=device)
        return cache

    def step(self, x: torch.Tensor, starts: torch.Tensor, cache: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x [N, in_features], one new observation per env; starts [N] (True: an episode begins, the env's cache
        is cleared first). Returns features [N, d_model] and the new cache; the given one is not modified.

        At each layer the new token's key and value replace those of the token w steps back (just out of the
        layer's window), then its query attends over the slots that hold its episode, itself included: slot s
        holds it when s <= time (the clock restarts at 0 with the episode, so older slots are stale)."""
        rows = torch.arange(len(x), device=x.device)
        time = torch.where(starts, 0, cache["time"])
        new = {"time": time + 1}
        h = self.input(x)[:, None]  # [N, 1, d]
        cos, sin = rotation(time[:, None, None], self.head_dim, h.dtype)  # [N, 1, 1, head_dim // 2]
        for layer, (block, window) in enumerate(zip(self.blocks, self.windows, strict=True)):
            q, k, v = block.qkv_heads(h, cos, sin)  # [N, heads, 1, head_dim]
            keys, values = cache[f"keys{layer}"].clone(), cache[f"values{layer}"].clone()
            slot = time % window
            keys[rows, :, slot], values[rows, :, slot] = k[:, :, 0], v[:, :, 0]
            held = torch.arange(window, device=x.device) <= time[:, None]  # [N, window]
            h = block.finish(h, F.scaled_dot_product_attention(q, keys, values, attn_mask=held[:, None, None]))
            new[f"keys{layer}"], new[f"values{layer}"] = keys, values
        return self.norm(h[:, 0]), new
