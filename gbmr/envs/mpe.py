"""Multi-Agent Particle Environments (``mpe2``, PettingZoo's MPE) through the multi-agent adapter.

Discrete actions; ``max_cycles`` is the episode length (25, as in EPyMARL's MPE runs). Ids: ``MPE/<scenario>``.
"""

from __future__ import annotations

import importlib

import gymnasium as gym

from gbmr.envs.multiagent import PettingZooAdapter

SCENARIOS = {  # id -> mpe2 module (cooperative scenarios; the team reward is the sum of the agents' rewards)
    "MPE/simple_spread-v3": "simple_spread_v3",
    "MPE/simple_reference-v3": "simple_reference_v3",
    "MPE/simple_speaker_listener-v4": "simple_speaker_listener_v4",
}
OPTIONS: dict[str, object] = {"max_cycles": 25}


def env_ids() -> tuple[str, ...]:
    return tuple(SCENARIOS)


def options(env_id: str) -> dict[str, object]:
    return OPTIONS


def make(env_id: str, *, training: bool, render_mode: str | None, max_cycles: int) -> gym.Env:
    module = importlib.import_module(f"mpe2.{SCENARIOS[env_id]}")
    return PettingZooAdapter(module.parallel_env(max_cycles=max_cycles, continuous_actions=False))
