"""The VAE encoder of seed note 001: a variational auto-encoder with a small latent (32) that also decodes the
state's value, trained separately from the agent (``gbmr pretrain-vae``); ``encoder=vae`` then keys the episodic
memories with the posterior mean.

- Encoder: a torso from ``gbmr.nets.torsos`` (picked from the observation shape as the agents' encoders are),
  then linear heads to the posterior mean and log-variance.
- Decoder: the torso mirrored layer by layer (Linear -> Linear back, Conv2d -> ConvTranspose2d with the output
  padding that restores each input size), ending in reconstruction logits (uint8 observations, scaled to
  [0, 1]: Bernoulli likelihood, right for MinAtar's 0/1 planes and usual for pixels) or means (float
  observations: Gaussian likelihood, squared error).
- Value decoder: linear from the latent, so the value is a direction of the space the kernel lookup measures.

Loss per sample: reconstruction (summed over the observation) + ``beta`` x KL(q(z|s) || N(0, I)) +
``value_weight`` x (V(z) - R)^2, R the Monte-Carlo return of the state.

Files: ``gbmr.nets.pretrained`` (shared with the inverse-dynamics encoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gbmr.nets.torsos import Scale, input_scale, make_torso, pick_torso


def mirror(torso: nn.Sequential, in_shape: tuple[int, ...], latent_dim: int, features: int) -> nn.Sequential:
    """The decoder: latent -> ``features``, then ``torso``'s layers reversed and transposed (Linear -> Linear,
    Conv2d -> ConvTranspose2d, Flatten -> Unflatten), ReLU between weight layers and none at the output."""
    layers: list[tuple[nn.Module, tuple[int, ...]]] = []  # each torso layer with the shape that went into it
    x = torch.zeros(1, *in_shape)
    with torch.no_grad():
        for layer in torso:
            if isinstance(layer, (nn.Linear, nn.Conv2d, nn.Flatten)):
                layers.append((layer, tuple(x.shape[1:])))
            x = layer(x)
    out: list[nn.Module] = [nn.Linear(latent_dim, features)]
    for layer, shape in reversed(layers):
        if isinstance(layer, nn.Flatten):
            out.append(nn.Unflatten(1, shape))
            continue
        if isinstance(layer, nn.Linear):
            back: nn.Module = nn.Linear(layer.out_features, layer.in_features)
        else:
            k, s = layer.kernel_size, layer.stride
            sizes = layer(torch.zeros(1, *shape)).shape[2:]
            padding = tuple(want - ((i - 1) * st + kk) for want, i, st, kk in zip(shape[1:], sizes, s, k, strict=True))
            back = nn.ConvTranspose2d(layer.out_channels, layer.in_channels, k, s, output_padding=padding)
        out += [nn.ReLU(), back]
    return nn.Sequential(*out)


class VAE(nn.Module):
    """``forward(obs) -> (reconstruction logits or means, value, mu, logvar)``; the keys are the posterior mean."""

    format = "gbmr-vae/2"

    def __init__(self, observation_space: gym.spaces.Box, latent_dim: int = 32, hidden: Sequence[int] = (256,),
                 torso: str = "auto") -> None:
        super().__init__()
        self.obs_shape = tuple(observation_space.shape)
        self.latent_dim = int(latent_dim)
        self.hidden, self.torso_kind = tuple(hidden), pick_torso(self.obs_shape) if torso == "auto" else torso
        self.torso, features = make_torso(self.torso_kind, observation_space, self.hidden)
        self.mu = nn.Linear(features, latent_dim)
        self.logvar = nn.Linear(features, latent_dim)
        body = nn.Sequential(*(m for m in self.torso if not isinstance(m, Scale)))
        self.decoder = mirror(body, self.obs_shape, latent_dim, features)
        self.value = nn.Linear(latent_dim, 1)
        self.scale = input_scale(observation_space)
        self.bernoulli = observation_space.dtype == np.uint8

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.torso(obs)
        return self.mu(features), self.logvar(features)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(obs)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        recon = self.decoder(z).reshape(obs.shape[0], *self.obs_shape)
        return recon, self.value(z).squeeze(1), mu, logvar

    def loss(self, obs: torch.Tensor, returns: torch.Tensor, beta: float = 1.0,
             value_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Batch means of the three terms and their weighted sum ``total`` (see the module docstring)."""
        recon, value, mu, logvar = self(obs)
        target = obs.float() * self.scale
        if self.bernoulli:
            rec = F.binary_cross_entropy_with_logits(recon, target, reduction="none")
        else:
            rec = (recon - target).square()
        rec = rec.reshape(len(obs), -1).sum(1).mean()
        kl = (0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)).sum(1).mean()
        val = (value - returns).square().mean()
        return {"total": rec + beta * kl + value_weight * val, "reconstruction": rec, "kl": kl, "value": val}

    def embedding_layers(self) -> tuple[nn.Module, nn.Module]:
        """(torso, mean head): the part an ``encoder=vae`` keeps."""
        return self.torso, self.mu

    def describe(self) -> dict[str, Any]:
        """What ``from_description`` needs to rebuild this net (``gbmr.nets.pretrained`` saves it)."""
        return {"latent_dim": self.latent_dim, "hidden": list(self.hidden), "torso": self.torso_kind}

    @classmethod
    def from_description(cls, observation_space: gym.spaces.Box, data: dict[str, Any]) -> VAE:
        return cls(observation_space, data["latent_dim"], data["hidden"], data["torso"])
