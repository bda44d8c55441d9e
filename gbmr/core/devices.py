"""The torch device a run asked for: ``auto`` is CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from gbmr.core.errors import GbmrError, unknown_choice


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise unknown_choice("device", name, ("auto", "cpu", "cuda", "cuda:N"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GbmrError(f"device '{name}' was asked for but CUDA is not available here; use --set device=cpu")
    return torch.device(name)
