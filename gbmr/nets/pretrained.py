"""Files of the encoders trained before the agent (``gbmr pretrain-vae``, ``gbmr pretrain-inverse``).

A file is a plain dict of tensors, strings and numbers, so it loads with ``torch.load(weights_only=True)``:
its format (which net), the net's description (sizes), the observation shape, scale and dtype it was trained
on, ``info`` (environment id, steps, final losses) and the state dict. ``load_pretrained`` refuses a file of
another kind or trained on other observations, with an error that says what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from gbmr.core.errors import GbmrError
from gbmr.core.run_dir import atomic_torch_save
from gbmr.nets.inverse_dynamics import InverseDynamics
from gbmr.nets.torsos import input_scale
from gbmr.nets.vae import VAE

KINDS: dict[str, type[VAE] | type[InverseDynamics]] = {"vae": VAE, "inverse": InverseDynamics}
COMMANDS = {"vae": "gbmr pretrain-vae", "inverse": "gbmr pretrain-inverse"}


def _observations(space: gym.spaces.Box) -> list[Any]:
    return [list(space.shape), input_scale(space), space.dtype == np.uint8]


def save_pretrained(model: VAE | InverseDynamics, observation_space: gym.spaces.Box, path: str | Path,
                    **info: Any) -> None:
    """Write ``model`` atomically (temp file + fsync + rename) with what ``load_pretrained`` checks."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": model.format, **model.describe(), "observations": _observations(observation_space),
                       "info": info, "state_dict": state}, Path(path))


def load_pretrained(path: str | Path, observation_space: gym.Space, kind: str) -> nn.Module:
    """The ``kind`` net ("vae" | "inverse") saved at ``path``, checked against ``observation_space``."""
    path, cls = Path(path), KINDS[kind]
    hint = f"train one with `{COMMANDS[kind]} --env ENV --out FILE`"
    if not path.is_file():
        raise GbmrError(f"{kind} encoder file '{path}' does not exist; {hint}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise GbmrError(f"'{path}' is not a readable encoder file ({type(exc).__name__}); {hint}") from None
    formats = {c.format: name for name, c in KINDS.items()}
    found = data.get("format") if isinstance(data, dict) else None
    if found not in formats:
        raise GbmrError(f"'{path}' is not a gbmr encoder file (expected format {cls.format}); {hint}")
    if found != cls.format:
        raise GbmrError(f"'{path}' holds a '{formats[found]}' encoder, not '{kind}'; use encoder={formats[found]}")
    if not isinstance(observation_space, gym.spaces.Box):
        raise GbmrError(f"encoder '{kind}' needs a Box (array) observation space, got {observation_space}")
    if data["observations"] != _observations(observation_space):
        raise GbmrError(f"{kind} encoder '{path}' was trained on observations (shape, scale, uint8) = "
                        f"{tuple(data['observations'])}, this environment has "
                        f"{tuple(_observations(observation_space))}; train one on this environment")
    model = cls.from_description(observation_space, data)
    try:
        model.load_state_dict(data["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise GbmrError(f"encoder file '{path}' does not match its own description: {exc}") from None
    return model.eval()
