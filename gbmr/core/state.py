"""Turning agent state into what ``torch.load(weights_only=True)`` accepts, and back.

numpy arrays become tensors (zero-copy), numpy scalars become Python scalars; dicts, lists and tuples are
walked. ``from_saveable`` turns tensors back into numpy arrays where the caller wants numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_saveable(obj: Any) -> Any:
    """Recursively convert numpy values inside ``obj`` to tensors / Python scalars."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_saveable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_saveable(v) for v in obj)
    return obj


def to_numpy(obj: Any) -> Any:
    """Recursively convert tensors inside ``obj`` back to numpy arrays."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The state of a numpy Generator as plain Python values."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state
