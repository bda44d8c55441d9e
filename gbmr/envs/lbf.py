"""Level-Based Foraging (``lbforaging`` 2.x) through the multi-agent adapter.

Ids: ``LBF/`` + lbforaging's own registration, ``Foraging[-2s]-{5..19}x{5..19}-{2..9}p-{1..4}f[-coop]-v3``
(``-2s``: sight 2, partial observation; ``-coop``: every food needs all agents). ``max_episode_steps`` is 50,
lbforaging's and EPyMARL's setting.
"""

from __future__ import annotations

from itertools import product

import gymnasium as gym

from gbmr.envs.multiagent import LBFAdapter

PREFIX = "LBF/"
IDS = tuple(
    f"{PREFIX}Foraging{'-2s' if partial else ''}-{s}x{s}-{p}p-{f}f{'-coop' if coop else ''}-v3"
    for s, p, f, coop, partial in product(range(5, 20), range(2, 10), range(1, 5), (True, False), (True, False))
)
OPTIONS: dict[str, object] = {"max_episode_steps": 50}


def env_ids() -> tuple[str, ...]:
    return IDS


def summary() -> str:
    """One line for ``gbmr list`` instead of 1920 ids."""
    return (f"{len(IDS)} ids {PREFIX}Foraging[-2s]-{{5..19}}x{{5..19}}-{{2..9}}p-{{1..4}}f[-coop]-v3, "
            f"such as {PREFIX}Foraging-8x8-2p-1f-coop-v3")


def options(env_id: str) -> dict[str, object]:
    return OPTIONS


def make(env_id: str, *, training: bool, render_mode: str | None, max_episode_steps: int) -> gym.Env:
    import lbforaging  # noqa: F401 - registers the Foraging ids
    from lbforaging.foraging import ForagingEnv

    kwargs = {**gym.spec(env_id[len(PREFIX):]).kwargs, "max_episode_steps": max_episode_steps}
    return LBFAdapter(ForagingEnv(**kwargs))
