"""The batch learners take: named tensors that share leading dims [T, N] (time, environment).

A rollout is one (obs, actions, log_probs, values, rewards, dones, ...); a learner flattens its fields
time-major to draw minibatches.
``context`` holds the steps before the batch for policies that attend to the past (a Transformer's lookback:
[C, N] of the same envs), so a window can start before the batch does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch


class Batch(Mapping[str, torch.Tensor]):
    """Read-only mapping name -> tensor [T, N, ...]; every field has the same T and N."""

    def __init__(self, fields: Mapping[str, torch.Tensor], context: Batch | None = None) -> None:
        shapes = {name: tuple(value.shape[:2]) for name, value in fields.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"batch fields must share leading dims [T, N], got {shapes}")
        if any(value.dim() < 2 for value in fields.values()):
            raise ValueError(f"batch fields need leading dims [T, N], got {shapes}")
        if context is not None and fields and context.num_envs != next(iter(shapes.values()))[1]:
            raise ValueError(f"the context holds {context.num_envs} envs, the batch {next(iter(shapes.values()))[1]}")
        self.fields = dict(fields)
        self.context = context

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    @property
    def steps(self) -> int:
        """T, the batch's length in time."""
        return next(iter(self.fields.values())).shape[0] if self.fields else 0

    @property
    def num_envs(self) -> int:
        """N, the environments side by side."""
        return next(iter(self.fields.values())).shape[1] if self.fields else 0

    def flat(self, name: str) -> torch.Tensor:
        """Field ``name`` as [T * N, ...], time-major (index t * N + n), the order minibatches index."""
        value = self.fields[name]
        return value.reshape(-1, *value.shape[2:])
