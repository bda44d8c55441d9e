"""The algorithms ``gbmr train --algo`` knows, imported lazily so ``gbmr list`` stays fast."""

from __future__ import annotations

import importlib
from typing import Any

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
    "sac": "gbmr.agents.sac:SACAgent",
    "td3": "gbmr.agents.td3:TD3Agent",
    "ddpg": "gbmr.agents.ddpg:DDPGAgent",
    "qmix": "gbmr.agents.qmix:QMIXAgent",
    "differ": "gbmr.agents.differ:DIFFERAgent",
}
MULTI_AGENT = ("qmix", "differ")  # the algorithms for the multi-agent environments (MPE/..., LBF/...)


def agent_class(algo: str) -> type[Agent]:
    if algo not in ALGORITHMS:
        raise unknown_choice("algorithm", algo, ALGORITHMS)
    module, name = ALGORITHMS[algo].split(":")
    return getattr(importlib.import_module(module), name)


def build_agent(config: Any, observation_space: Any, action_space: Any, num_envs: int | None = None) -> Agent:
    """The agent a RunConfig names, for the run's ``num_envs`` (or fewer: a distributed actor's slice)."""
    from gbmr.core.devices import resolve_device
    from gbmr.core.errors import GbmrError
    from gbmr.envs.multiagent import is_multi_agent

    cls = agent_class(config.algo)
    if is_multi_agent(observation_space) and not cls.multi_agent:
        raise GbmrError(f"'{config.algo}' is a single-agent algorithm and '{config.env}' a multi-agent environment; "
                        f"use one of: {', '.join(MULTI_AGENT)}")
    cls.check_spaces(observation_space, action_space)
    return cls(config.agent, observation_space, action_space, num_envs=num_envs or config.num_envs,
               device=resolve_device(config.device), seed=config.seed, total_steps=config.total_steps)

