"""Environment layer: shapes, determinism, vector resets, episodic life, the paper maze's rules, dynamic
layouts and their resumable state, and the user errors."""

from __future__ import annotations

import json
import re
from collections import deque

import gymnasium as gym
import numpy as np
import pytest

from gbmr.core.errors import GbmrError
from gbmr.envs import env_family, env_options, list_env_ids, make_env, make_vector_env
from gbmr.envs.paper_maze import hell_layout

# one id per family (two for the mazes), with the documented observation shape and dtype
SHAPES = {
    "CartPole-v1": ((4,), np.float32),
    "MinAtar/Breakout-v1": ((4, 10, 10), np.uint8),
    "MinAtar/Seaquest-v1": ((10, 10, 10), np.uint8),
    "ALE/MsPacman-v5": ((4, 84, 84), np.uint8),
    "GridMaze-S7-v0": ((3, 7, 7), np.uint8),
    "GridMaze-Paper-v0": ((2,), np.int64),
}


def rollout(env: gym.Env, seed: int, actions: list[int]) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return observations, rewards


@pytest.mark.parametrize("env_id", list(SHAPES))
def test_shape_dtype_and_determinism(env_id: str) -> None:
    shape, dtype = SHAPES[env_id]
    env_a, env_b = make_env(env_id, seed=0), make_env(env_id, seed=0)
    assert env_a.observation_space.shape == shape and env_a.observation_space.dtype == dtype
    actions = [int(env_a.action_space.sample()) for _ in range(40)]
    assert actions == [int(env_b.action_space.sample()) for _ in range(40)]  # seed reaches the action space
    obs_a, rew_a = rollout(env_a, 7, actions)
    obs_b, rew_b = rollout(env_b, 7, actions)
    assert all(o.shape == shape and o.dtype == dtype and o in env_a.observation_space for o in obs_a)
    assert len(obs_a) == len(obs_b) and rew_a == rew_b
    assert all(np.array_equal(a, b) for a, b in zip(obs_a, obs_b, strict=True))
    assert not all(np.array_equal(obs_a[0], o) for o in obs_a[1:])  # the actions do something


def test_atari_rewards_clipped_in_training_only() -> None:
    train, evaluate = make_env("ALE/MsPacman-v5", seed=1), make_env("ALE/MsPacman-v5", training=False)
    actions = [int(train.action_space.sample()) for _ in range(120)]  # ~60 steps of intro music
    _, clipped = rollout(train, 3, actions)
    _, raw = rollout(evaluate, 3, actions)
    assert max(raw) >= 10  # a pellet is worth 10 points
    assert clipped == [float(np.sign(r)) for r in raw]


def test_minatar_episode_does_not_depend_on_previous_one() -> None:
    used, fresh = (make_env("MinAtar/Breakout-v1", seed=0, sticky_action_prob=0.5) for _ in range(2))
    assert used.unwrapped.game.sticky_action_prob == 0.5
    rollout(used, 1, [2] * 30)  # leaves MinAtar's last_action at 2
    actions = [0, 1] * 15
    obs_used, _ = rollout(used, 2, actions)  # with seed 2 the first step is sticky
    obs_fresh, _ = rollout(fresh, 2, actions)
    assert all(np.array_equal(a, b) for a, b in zip(obs_used, obs_fresh, strict=True))


@pytest.mark.parametrize("game", ["Breakout", "Asterix", "Freeway"])
def test_minatar_seeded_episodes_equal_minatars_own_seeding(game: str) -> None:
    """The in-place reseed plays the games MinAtar's own seed() would (rules and sticky actions alike)."""
    from minatar.gym import register_envs

    register_envs()
    ours = make_env(f"MinAtar/{game}-v1", seed=0, sticky_action_prob=0.3)
    reference = gym.make(f"MinAtar/{game}-v1", sticky_action_prob=0.3)
    rng = np.random.default_rng(0)
    for seed in (7, 8):
        reference.unwrapped.game.last_action = 0
        obs, _ = ours.reset(seed=seed)
        ref_obs, _ = reference.reset(seed=seed)
        steps = [(obs, ref_obs, 0.0, 0.0)]
        for _ in range(60):
            action = int(rng.integers(ours.action_space.n))
            obs, reward, terminated, _, _ = ours.step(action)
            ref_obs, ref_reward, ref_terminated, _, _ = reference.step(action)
            steps.append((obs, ref_obs, reward, ref_reward))
            if terminated or ref_terminated:
                assert terminated and ref_terminated
                break
        for obs, ref_obs, reward, ref_reward in steps:
            assert np.array_equal(obs, np.moveaxis(ref_obs, 2, 0)) and reward == ref_reward


def test_vector_env_reset_mask() -> None:
    vec = make_vector_env("CartPole-v1", 2)
    assert vec.autoreset_mode == gym.vector.AutoresetMode.DISABLED and len(vec.envs) == 2
    vec.reset(seed=[1, 2])
    done = np.zeros(2, dtype=bool)
    while not done.any():
        obs, _, terminated, truncated, _ = vec.step(np.array([0, 0]))
        done = terminated | truncated
    assert done.tolist() == [False, True]  # seed 2 falls first
    kept = obs[0].copy()
    obs, _ = vec.reset(seed=[11, 12], options={"reset_mask": done})
    expected = [make_env("CartPole-v1").reset(seed=s)[0] for s in (11, 12)]
    assert np.array_equal(obs[0], kept) and np.array_equal(obs[1], expected[1])
    assert not np.array_equal(obs[0], expected[0])


def test_episodic_life_marks_life_loss_in_training_only() -> None:
    train = make_env("ALE/Breakout-v5", seed=0)
    obs, info = train.reset(seed=5)
    assert info["lives"] == 5 and not info["life_reset"]
    actions = []
    while True:
        actions.append(int(train.action_space.sample()))
        obs, _, terminated, truncated, info = train.step(actions[-1])
        if terminated or truncated:
            break
    assert terminated and info["lives"] == 4  # a life lost, the game not over
    obs, info = train.reset(seed=5)
    assert info["life_reset"] and info["lives"] == 4  # the same game goes on

    evaluate = make_env("ALE/Breakout-v5", training=False, episodic_life=True)  # options cannot force it
    evaluate.reset(seed=5)
    for action in actions:
        _, _, terminated, truncated, info = evaluate.step(action)
        assert not (terminated or truncated)
    assert info["lives"] == 4


def test_paper_maze_rules() -> None:
    env = make_env("GridMaze-Paper-v0")
    maze = env.unwrapped
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0, 0] and maze.size == 10 and maze.goal.tolist() == [9, 9]
    assert np.array_equal(maze.hell_cells, hell_layout(0, 0)) and len(maze.hell_cells) == 12
    # a wall of the grid: stay, reward 0
    obs, reward, terminated, truncated, _ = env.step(0)  # up from (0, 0)
    assert obs.tolist() == [0, 0] and reward == 0 and not terminated and not truncated
    # bounce: from a free neighbour of a hell cell, step into it
    moves = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}
    hell = {tuple(c) for c in maze.hell_cells.tolist()}
    r, c = maze.hell_cells[0].tolist()
    action, (dr, dc) = next(
        (a, (dr, dc))
        for a, (dr, dc) in moves.items()
        if 0 <= r - dr < 10 and 0 <= c - dc < 10 and (r - dr, c - dc) not in hell
    )
    maze.agent_pos = np.array([r - dr, c - dc])
    obs, reward, terminated, _, _ = env.step(action)
    assert obs.tolist() == [r - dr, c - dc] and reward == -1 and not terminated
    # the goal: +200 and termination, from whichever neighbour is free
    before, action = ((8, 9), 1) if (8, 9) not in hell else ((9, 8), 3)
    maze.agent_pos = np.array(before)
    obs, reward, terminated, truncated, _ = env.step(action)
    assert obs.tolist() == [9, 9] and reward == 200 and terminated and not truncated
    # 200-step cap: pushing against the top wall never ends the episode before step 200
    env.reset(seed=0)
    ends = [any(env.step(0)[2:4]) for _ in range(200)]
    assert ends == [False] * 199 + [True]


def reachable(hell: set[tuple[int, int]]) -> bool:
    """Independent oracle: breadth-first search from the start over non-hell cells."""
    seen, queue = {(0, 0)}, deque([(0, 0)])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < 10 and 0 <= nc < 10 and (nr, nc) not in hell and (nr, nc) not in seen:
                seen.add((nr, nc))
                queue.append((nr, nc))
    return (9, 9) in seen


def test_hell_layouts_are_valid_and_seeded() -> None:
    layouts = [hell_layout(seed, index) for seed in range(5) for index in range(10)]
    for cells in layouts:
        hell = {tuple(c) for c in cells.tolist()}
        assert len(hell) == 12 and (0, 0) not in hell and (9, 9) not in hell and reachable(hell)
    assert len({c.tobytes() for c in layouts}) == len(layouts)
    assert np.array_equal(hell_layout(3, 2), hell_layout(3, 2))


@pytest.mark.parametrize(
    ("env_id", "layout"),
    [
        ("GridMaze-PaperDynamic-v0", lambda env: env.unwrapped.hell_cells.copy()),
        ("GridMaze-Dynamic-v0", lambda env: env.unwrapped.walls.copy()),
    ],
)
def test_dynamic_layouts_change_and_resume(env_id, layout) -> None:
    env = make_env(env_id, change_every=2)
    layouts = []
    for episode in range(5):
        env.reset(seed=episode)
        layouts.append(layout(env))
    same = [np.array_equal(layouts[0], other) for other in layouts[1:]]
    assert same == [True, False, False, False] and np.array_equal(layouts[2], layouts[3])

    state = env.unwrapped.state_dict()
    assert state == {"episode": 4} and json.loads(json.dumps(state)) == state  # plain Python values
    resumed = make_env(env_id, change_every=2)
    resumed.unwrapped.load_state_dict(state)
    # re-resetting the episode in progress gives its layout, and the schedule goes on in step
    obs, _ = resumed.reset(seed=4)
    assert np.array_equal(layout(resumed), layouts[4])
    for episode in range(5, 8):
        assert np.array_equal(env.reset(seed=episode)[0], resumed.reset(seed=episode)[0])
        assert np.array_equal(layout(env), layout(resumed))


def test_minigrid_maze_views_and_actions() -> None:
    partial = make_env("GridMaze-S11-v0", fully_observed=False)
    full = make_env("GridMaze-S11-v0")
    assert partial.reset(seed=0)[0].shape == (3, 7, 7)
    obs, _ = full.reset(seed=0)
    assert obs.shape == (3, 11, 11) and full.action_space.n == 3
    objects = obs[0]  # MiniGrid object ids: 2 wall, 8 goal, 10 agent; rows are y
    assert objects[1, 1] == 10 and objects[9, 9] == 8
    assert (objects[0] == 2).all() and (objects[:, -1] == 2).all()


def test_listing_and_families() -> None:
    ids = list_env_ids()
    assert set(ids) == {"classic", "minatar", "atari", "maze", "memory", "mpe", "lbf", "mario", "smax"}
    assert env_family("MPE/simple_spread-v3") == "mpe" and env_family("LBF/Foraging-8x8-2p-1f-coop-v3") == "lbf"
    assert {"SuperMarioBros-1-1-v0", "SuperMarioBros-8-4-v3", "SuperMarioBros-v0"} <= set(ids["mario"])
    for game in ("MsPacman", "Alien", "Pong", "Frostbite", "Hero", "Breakout"):
        assert f"ALE/{game}-v5" in ids["atari"]
    assert ids["minatar"] == sorted(
        f"MinAtar/{g}-v1" for g in ("Breakout", "Asterix", "Freeway", "Seaquest", "SpaceInvaders")
    )
    assert {"GridMaze-Paper-v0", "GridMaze-PaperDynamic-v0", "GridMaze-Dynamic-v0"} <= set(ids["maze"])
    assert env_family("ALE/Tennis-v5") == "atari" and env_family("Acrobot-v1") == "classic"
    assert env_options("ALE/Pong-v5")["frame_stack"] == 4 and env_options("CartPole-v1") == {}
    assert env_options("GridMaze-PaperDynamic-v0") == {"layout_seed": 0, "change_every": 25}


def test_user_errors() -> None:
    with pytest.raises(GbmrError, match="Did you mean 'CartPole-v1'"):
        make_env("CartPol-v1")  # (CartPole-v0 is registered with Gymnasium: the generic family takes it)
    with pytest.raises(GbmrError, match="environment id") as error:
        env_family("ALE/NotAGame-v5")
    message = str(error.value)  # small families listed in full, Atari's >100 ids summarised
    assert "MinAtar/Breakout-v1" in message and "GridMaze-Paper-v0" in message and "CartPole-v1" in message
    assert re.search(r"atari: \d{3} ids such as ALE/Adventure-v5", message) and "ALE/Zaxxon-v5" not in message
    with pytest.raises(GbmrError) as error:
        make_env("ALE/Pong-v5", noop=3)
    assert "'noop'" in str(error.value) and "noop_max=30" in str(error.value)
    assert "frame_stack=4" in str(error.value) and "Did you mean 'noop_max'" in str(error.value)
    with pytest.raises(GbmrError, match="takes no options"):
        make_env("CartPole-v1", frame_stack=4)
    with pytest.raises(GbmrError, match="must be int"):
        make_vector_env("ALE/Pong-v5", 2, frame_stack="4")
    with pytest.raises(GbmrError, match="change_every"):
        make_env("GridMaze-Dynamic-v0", change_every=-1)
