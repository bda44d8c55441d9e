"""The networks of value-decomposition MARL (PyMARL's pieces): per-agent Q networks shared by all agents, and
QMIX's monotonic mixer.

Agent networks take one row per (env, agent): the agent's observation, optionally its last action one-hot and
its id one-hot (parameter sharing with the id in the input, Rashid et al. 2018). Two paths that give the same
Q-values: ``step`` (acting, one step per row, carrying a memory) and ``sequence`` (training, whole episodes
from their first step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gbmr.core.errors import unknown_choice
from gbmr.nets.transformer import TransformerTorso

AGENT_NETS = ("rnn", "transformer")


class RNNAgent(nn.Module):
    """PyMARL's ``rnn`` agent: Linear -> ReLU -> GRU -> Linear (Q per action)."""

    def __init__(self, in_features: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(in_features, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.fc2 = nn.Linear(hidden, n_actions)

    def initial_state(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, self.hidden, device=self.fc1.weight.device)

    def step(self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [R, in], state [R, hidden], starts [R] (True: the row's episode begins) -> Q [R, A], new state."""
        h0 = torch.where(starts[:, None], 0.0, state)
        out, h = self.rnn(F.relu(self.fc1(x))[:, None], h0[None])
        return self.fc2(out[:, 0]), h[0]

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """x [R, L, in], each row an episode from its first step -> Q [R, L, A]."""
        out, _ = self.rnn(F.relu(self.fc1(x)))
        return self.fc2(out)


class TransformerAgent(nn.Module):
    """A causal Transformer over the agent's own last ``lookback`` inputs (gbmr.nets.transformer, with its KV
    cache for acting), then a linear Q head: the note's ``transformer`` agent, heads and layers as parameters."""

    def __init__(self, in_features: int, n_actions: int, d_model: int = 64, num_heads: int = 4, num_layers: int = 2,
                 lookback: int = 32) -> None:
        super().__init__()
        self.torso = TransformerTorso(in_features, d_model, num_heads, num_layers, lookback)
        self.head = nn.Linear(d_model, n_actions)

    def initial_state(self, rows: int) -> dict[str, torch.Tensor]:
        return self.torso.initial_cache(rows)

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor], starts: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features, cache = self.torso.step(x, starts, state)
        return self.head(features), cache

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        starts = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        starts[:, 0] = True
        return self.head(self.torso.forward_sequence(x, starts))


def make_agent_net(kind: str, in_features: int, n_actions: int, hidden: int, transformer: dict[str, Any]
                   ) -> nn.Module:
    if kind == "rnn":
        return RNNAgent(in_features, n_actions, hidden)
    if kind == "transformer":
        return TransformerAgent(in_features, n_actions, **transformer)
    raise unknown_choice("agent_net", kind, AGENT_NETS)


class QMixer(nn.Module):
    """QMIX's mixer (Rashid et al. 2018): Q_tot = w2 . elu(W1 q + b1) + V(s), with W1, w2 from hypernetworks on the
    state, taken in absolute value so that dQ_tot/dQ_i >= 0 (monotonic: the greedy joint action is the agents'
    own greedy actions). PyMARL's ``hypernet_layers: 2``: each weight hypernetwork is Linear -> ReLU -> Linear."""

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_embed: int = 64,
                 hypernet_layers: int = 2) -> None:
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim

        def hyper(out: int) -> nn.Module:
            if hypernet_layers == 1:
                return nn.Linear(state_dim, out)
            return nn.Sequential(nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, out))

        self.hyper_w1 = hyper(embed_dim * n_agents)
        self.hyper_w_final = hyper(embed_dim)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.v = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """agent_qs [..., n_agents], states [..., state_dim] -> Q_tot [...]."""
        lead = agent_qs.shape[:-1]
        qs = agent_qs.reshape(-1, 1, self.n_agents)
        s = states.reshape(-1, states.shape[-1])
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b1(s).view(-1, 1, self.embed_dim)
        hidden = F.elu(torch.bmm(qs, w1) + b1)
        w_final = self.hyper_w_final(s).abs().view(-1, self.embed_dim, 1)
        y = torch.bmm(hidden, w_final).view(-1) + self.v(s).view(-1)
        return y.view(lead)
