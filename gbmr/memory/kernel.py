"""The kernel-weighted lookup shared by NEC's DND and the memory-graph agents' encoder training.

For a query h and its k neighbours h_i with values v_i: w_i = 1 / (||h - h_i||^2 + delta), Q = sum_i w_i v_i /
sum_i w_i (GBMR.md "Kernel lookup"). Written once in torch so that the loss (R - Q)^2 back-propagates into
whatever requires grad: the query (the encoder), and for NEC also the neighbours' keys and values.
"""

from __future__ import annotations

import torch


def kernel_lookup(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                  delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q ``[B]``, normalised weights ``[B, k]``) from queries ``[B, d]``, neighbour keys ``[B, k, d]``, values
    ``[B, k]`` and a mask ``valid [B, k]`` of the neighbours that exist; a row without any reads 0.

    Leading dimensions broadcast: queries ``[B, 1, d]`` with keys ``[B, A, k, d]`` read A tables at once."""
    d2 = (queries.unsqueeze(-2) - keys).square().sum(-1)
    w = torch.where(valid, 1.0 / (d2 + delta), torch.zeros_like(d2))
    weights = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return (weights * values).sum(-1), weights
