"""The algorithms ``gbmr train --algo`` knows, imported lazily so ``gbmr list`` stays fast."""

from __future__ import annotations

import importlib

from gbmr.agents.base import Agent
from gbmr.core.errors import unknown_choice

# algo name -> "module:class"
ALGORITHMS: dict[str, str] = {
    "dqn": "gbmr.agents.dqn:DQNAgent",
    "mfec": "gbmr.agents.mfec:MFECAgent",
    "nec": "gbmr.agents.nec:NECAgent",
    "qlearning": "gbmr.agents.qlearning:QLearningAgent",
    "gq": "gbmr.agents.gq:GQAgent",
    "gbmr": "gbmr.agents.gbmr:GBMRAgent",
    "gcmr": "gbmr.agents.gbmr:GCMRAgent",
    "gbmr-sweep": "gbmr.agents.gbmr:GBMRSweepAgent",
    "gbmr-dqn": "gbmr.agents.gbmr_dqn:GBMRDQNAgent",
    "reinforce": "gbmr.agents.reinforce:ReinforceAgent",
    "actor-critic": "gbmr.agents.actor_critic:ActorCriticAgent",
    "a2c": "gbmr.agents.a2c:A2CAgent",
    "ppo": "gbmr.agents.ppo:PPOAgent",
    "ppo-transformer": "gbmr.agents.ppo_transformer:PPOTransformerAgent",
}


def agent_class(algo: str) -> type[Agent]:
    if algo not in ALGORITHMS:
        raise unknown_choice("algorithm", algo, ALGORITHMS)
    module, name = ALGORITHMS[algo].split(":")
    return getattr(importlib.import_module(module), name)
