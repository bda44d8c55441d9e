"""The generic family (any Gymnasium id, ``module:id``), its observation adapters and errors, and the memory
task's reproducibility and reference returns."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from gbmr.cli import main
from gbmr.core.errors import GbmrError
from gbmr.envs import env_family, env_options, make_env, make_vector_env
from gbmr.envs.memory import CHANCE_RETURN, LOOKBACK, MEMORYLESS_RETURN, ORACLE_RETURN, REPEAT_PREVIOUS

# registers GbmrTiny-v0 on import: a counter mod `size` shown as a Discrete, or as a MultiDiscrete with `pair`
TINY_MODULE = '''
import gymnasium as gym
import numpy as np


class Tiny(gym.Env):
    def __init__(self, size: int = 5, pair: bool = False):
        self.size, self.pair = size, pair
        self.observation_space = gym.spaces.MultiDiscrete([size, 3]) if pair else gym.spaces.Discrete(size)
        self.action_space = gym.spaces.Discrete(size)

    def _obs(self):
        return np.array([self.state, self.steps % 3]) if self.pair else self.state

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state, self.steps = int(self.np_random.integers(self.size)), 0
        return self._obs(), {}

    def step(self, action):
        self.state, self.steps = (self.state + int(action)) % self.size, self.steps + 1
        return self._obs(), float(self.state), self.steps == 10, False, {}


gym.register("GbmrTiny-v0", entry_point=Tiny)
'''


@pytest.fixture
def tiny_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of an importable module that registers GbmrTiny-v0, and of one that fails to import."""
    (tmp_path / "gbmr_tiny_env.py").write_text(TINY_MODULE)
    (tmp_path / "gbmr_broken_env.py").write_text("raise RuntimeError('no display\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "gbmr_tiny_env"


def rollout(env: gym.Env, seed: int, actions: list) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return observations, rewards


def same_episode(a: tuple[list, list], b: tuple[list, list]) -> bool:
    return a[1] == b[1] and len(a[0]) == len(b[0]) and all(map(np.array_equal, a[0], b[0]))


@pytest.mark.parametrize(
    ("env_id", "action_space"),
    [("LunarLander-v3", gym.spaces.Discrete(4)), ("LunarLanderContinuous-v3", gym.spaces.Box(-1, 1, (2,)))],
)
def test_lunar_lander_builds_steps_and_repeats(env_id: str, action_space: gym.Space) -> None:
    env_a, env_b = make_env(env_id, seed=0), make_env(env_id, seed=0)
    assert env_family(env_id) == "gym" and env_a.action_space == action_space
    assert env_a.observation_space.shape == (8,) and env_a.observation_space.dtype == np.float32
    moves = [env_a.action_space.sample() for _ in range(60)]
    episode = rollout(env_a, 3, moves)
    assert same_episode(episode, rollout(env_b, 3, moves))  # exact resume relies on this
    assert not same_episode(episode, rollout(env_b, 4, moves))
    assert all(obs in env_a.observation_space for obs in episode[0])


def test_options_come_from_the_constructor() -> None:
    assert env_options("LunarLander-v3") == {
        "continuous": False, "gravity": -10.0, "enable_wind": False, "wind_power": 15.0,
        "turbulence_power": 1.5, "max_episode_steps": 0,
    }
    assert env_options("LunarLanderContinuous-v3")["continuous"]  # the registration's kwargs win
    assert make_env("LunarLander-v3", gravity=-5).unwrapped.world.gravity[1] == -5
    env = make_env("LunarLander-v3", max_episode_steps=5)
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(5)] == [False] * 4 + [True]
    with pytest.raises(GbmrError, match="max_episode_steps"):
        make_env("LunarLander-v3", max_episode_steps=-1)
    with pytest.raises(GbmrError, match="must be bool"):
        make_env("LunarLander-v3", enable_wind="yes")


def test_module_prefix_and_one_hot(tiny_module: str) -> None:
    env_id = f"{tiny_module}:GbmrTiny-v0"
    assert env_family(env_id) == "gym" and env_options(env_id) == {"size": 5, "pair": False, "max_episode_steps": 0}
    env = make_env(env_id)
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (5,), np.float32)
    observations, rewards = rollout(env, 0, [1, 2, 3])
    states = [int(r) for r in rewards]
    assert [int(np.flatnonzero(o)[0]) for o in observations[1:]] == states  # one-hot of the counter
    assert all(o.dtype == np.float32 and o.sum() == 1 for o in observations)
    assert make_vector_env(env_id, 2, size=7).observation_space.shape == (2, 7)

    pair = make_env(env_id, pair=True)  # MultiDiscrete([5, 3]): two one-hots side by side
    obs, _ = pair.reset(seed=0)
    assert pair.observation_space.shape == (8,) and obs.sum() == 2 and obs[5] == 1  # steps % 3 == 0


def test_minigrid_dict_image_is_channel_first() -> None:
    env = make_env("MiniGrid-MemoryS7-v0")
    obs, _ = env.reset(seed=0)
    assert env_family("MiniGrid-MemoryS7-v0") == "gym"
    assert obs.shape == (3, 7, 7) and obs.dtype == np.uint8 and obs in env.observation_space
    raw = gym.make("MiniGrid-MemoryS7-v0").reset(seed=0)[0]["image"]
    assert np.array_equal(obs, raw.transpose(2, 1, 0))


def test_user_errors(tiny_module: str) -> None:
    with pytest.raises(GbmrError, match="Did you mean 'LunarLander-v3'") as error:
        make_env("LunarLandr-v3")
    message = str(error.value)  # fixed ids listed as before, Gymnasium's hundreds summarised
    assert "CartPole-v1" in message and "registered with Gymnasium" in message and "BipedalWalker-v3" not in message
    with pytest.raises(GbmrError, match="Did you mean 'GbmrTiny-v0'"):
        make_env(f"{tiny_module}:GbmrTiny-v9")
    with pytest.raises(GbmrError, match="cannot import module 'gbmr_no_such_module'.*ModuleNotFoundError"):
        make_env("gbmr_no_such_module:Thing-v0")
    with pytest.raises(GbmrError, match="RuntimeError: no display") as error:
        make_env("gbmr_broken_env:Thing-v0")
    assert "\n" not in str(error.value) and "second line" not in str(error.value)
    with pytest.raises(GbmrError, match=r"observation space Tuple\(Discrete\(32\)"):
        make_env("Blackjack-v1")


def test_list_mentions_gymnasium_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert REPEAT_PREVIOUS in out and "any of the" in out and "registered with Gymnasium" in out
    assert "LunarLanderContinuous-v3" not in out  # summarised, not listed


def oracle(history: list[np.ndarray]) -> int:
    """The suit shown LOOKBACK - 1 steps back (any answer before there is one)."""
    return int(np.argmax(history[-LOOKBACK])) if len(history) >= LOOKBACK else 0


def episode_return(env: gym.Env, seed: int, policy) -> float:
    obs, _ = env.reset(seed=seed)
    history, total, done = [obs], 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(history))
        history.append(obs)
        total += float(reward)
        done = terminated or truncated
    return total


def test_memory_task_is_reproducible() -> None:
    env_a, env_b = make_env(REPEAT_PREVIOUS, seed=0), make_env(REPEAT_PREVIOUS, seed=0)
    assert env_family(REPEAT_PREVIOUS) == "memory"
    assert env_a.observation_space == gym.spaces.Box(0.0, 1.0, (4,), np.float32) and env_a.action_space.n == 4
    actions = [int(env_a.action_space.sample()) for _ in range(60)]
    episode = rollout(env_a, 5, actions)
    rollout(env_b, 9, actions[:20])  # an earlier, different episode leaves nothing behind
    assert same_episode(episode, rollout(env_b, 5, actions))
    assert len(episode[1]) == 51 and not same_episode(episode, rollout(env_b, 6, actions))
    assert all(o in env_a.observation_space and o.sum() == 1 for o in episode[0])


def test_memory_task_reference_returns() -> None:
    env = make_env(REPEAT_PREVIOUS)
    assert [episode_return(env, seed, oracle) for seed in range(20)] == pytest.approx([ORACLE_RETURN] * 20)
    rng = np.random.default_rng(0)
    chance = np.mean([episode_return(env, seed, lambda h: int(rng.integers(4))) for seed in range(400)])
    assert chance == pytest.approx(CHANCE_RETURN, abs=0.03)  # standard error ~0.006
    memoryless = np.mean([episode_return(env, s, lambda h: (int(np.argmax(h[-1])) + 1) % 4) for s in range(400)])
    assert memoryless == pytest.approx(MEMORYLESS_RETURN, abs=0.03) and memoryless < -0.45
    one_too_far = np.mean([episode_return(env, s, lambda h: oracle(h[:-1])) for s in range(100)])
    assert one_too_far < -0.45  # LOOKBACK observations are needed, no fewer
    # k is an option; the lookback needed follows it
    previous = lambda h: int(np.argmax(h[-2])) if len(h) >= 2 else 0  # noqa: E731
    assert episode_return(make_env(REPEAT_PREVIOUS, k=2), 0, previous) == pytest.approx(ORACLE_RETURN)
