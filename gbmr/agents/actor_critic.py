"""One-step actor-critic (Sutton & Barto 2018, sec. 13.5): after every vector step, the TD error
delta = r + gamma V(s') - V(s) is the advantage of the action just taken. It is A2C with a rollout of one
step, separate actor and critic networks, Adam and no entropy bonus; raise ``n_steps`` for the episodic-style
n-step variant."""

from __future__ import annotations

from dataclasses import dataclass

from gbmr.agents.a2c import A2CAgent, A2CConfig


@dataclass
class ActorCriticConfig(A2CConfig):
    lr: float = 1e-3
    n_steps: int = 1
    ent_coef: float = 0.0
    optimizer: str = "adam"


class ActorCriticAgent(A2CAgent):
    Config = ActorCriticConfig
