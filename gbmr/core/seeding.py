"""Seeds: the global generators nets start from, and independent streams derived from the run seed."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(base_seed: int, *keys: int) -> int:
    """A well-mixed seed for the stream named by ``keys``, independent of the other streams of ``base_seed``."""
    return int(np.random.SeedSequence([base_seed, *keys]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed the global generators nets are initialised from; agents keep their own numpy Generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
