"""Memory tasks: partially observed, so that a policy without memory stays at chance level.

``popgym-RepeatPreviousEasy-v0`` is popgym's RepeatPrevious with ``k=4``: a shuffled 52-card deck is dealt one
card a step and the observation is the suit of the card just dealt (one-hot, ``(4,)`` float32). The action
(Discrete(4)) names the suit of the card shown ``k - 1 = 3`` steps before the current one: from the ``k``-th
step on, a right answer scores ``+1/48`` and a wrong one ``-1/48`` (``1 / (52 - k)``). An episode lasts 51
steps and terminates; the observation has no clock.

Returns per episode, measured over 2000 episodes (``CHANCE_RETURN`` and ``ORACLE_RETURN`` below):
- an oracle that remembers the last ``k`` observations and answers with the oldest: +1.0, every episode;
- a uniformly random policy: -0.5 in expectation (standard deviation 0.13 over episodes);
- the best memoryless policy, a suit other than the current one (the deck is dealt without replacement, so
  the card 3 steps back matches the current suit with chance 12/51): 2 * 13/51 - 1 = -0.49.
So a policy that sees the last ``LOOKBACK`` observations can reach +1.0 and one that sees only the current
observation cannot beat -0.49. Both figures hold for any ``k`` (an option, as is ``num_decks``); the lookback
needed is ``k``. The environment is pure numpy: ~170k steps/s through ``make_env`` on one core.
Every episode is a function of its reset seed (popgym shuffles with the env's ``np_random``) and its actions.

Learnable on a small budget: in a stand-alone check (PPO, 8 envs, a one-layer transformer of width 32 over the
last 4 observations, the rewards as they are), the mean return passed +0.85 by 20k steps with gamma 0.99 and
+0.95 by 10k with gamma 0.9; an MLP on the current observation stayed at -0.5 after 50k. Each reward depends on
that step's action alone, so a small gamma helps; scaling the rewards up made a shared value head swamp the
policy and nothing was learned in 100k steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from gbmr.envs import generic

REPEAT_PREVIOUS = "popgym-RepeatPreviousEasy-v0"
IDS = (REPEAT_PREVIOUS,)
LOOKBACK = 4  # observations a policy must see (the current one included) to answer right with k=4
CHANCE_RETURN = -0.5  # a uniformly random policy, in expectation
MEMORYLESS_RETURN = 2 * 13 / 51 - 1  # -0.49: the best a policy that sees only the current observation can do
ORACLE_RETURN = 1.0  # answering with the observation LOOKBACK - 1 steps back


def env_ids() -> tuple[str, ...]:
    return IDS


def options(env_id: str) -> dict[str, object]:
    generic.env_ids()  # imports popgym, which registers its ids
    return generic.options(env_id)


def make(env_id: str, *, training: bool, render_mode: str | None, **opts: Any) -> gym.Env:
    return generic.make(env_id, training=training, render_mode=render_mode, **opts)
