"""Frame-sharing replay (frame_stack > 0) against whole-observation replay fed the same streams."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from gbmr.agents.dqn import DQNAgent, DQNConfig
from gbmr.core.errors import GbmrError
from gbmr.envs import make_env
from gbmr.memory.replay import Batch, FrameStore, PrioritizedReplayBuffer, ReplayBuffer

STACK, FRAME = 4, (6, 6)


def stacked_stream(seed: int, num_envs: int, steps: int, p_end: float = 0.1, p_jump: float = 0.02):
    """Vector steps of frame-stacked observations (uint8, stack on axis 0) with episode ends.

    After an episode ends the next observation is, at random: the reset frame repeated (gymnasium's
    FrameStackObservation), zero padding then the reset frame, or the old stack shifted by one frame (a stack
    that is not reset, as after a lost life in some wrappers). Rarely an unrelated observation arrives without
    an episode end. Frames are drawn from a few templates, so equal frames also occur by chance.
    """
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (6, *FRAME), dtype=np.uint8)

    def frame():
        return templates[rng.integers(len(templates))] if rng.random() < 0.3 else rng.integers(0, 256, FRAME, np.uint8)

    def fresh_stack():
        g = frame()
        kind = rng.integers(2)
        return np.stack([g] * STACK) if kind == 0 else np.stack([np.zeros(FRAME, np.uint8)] * (STACK - 1) + [g])

    obs = np.stack([fresh_stack() for _ in range(num_envs)])
    for _ in range(steps):
        next_obs = np.concatenate([obs[:, 1:], np.stack([frame() for _ in range(num_envs)])[:, None]], axis=1)
        terminated, truncated = rng.random(num_envs) < p_end / 2, rng.random(num_envs) < p_end / 2
        yield (obs, rng.integers(0, 4, num_envs), rng.normal(size=num_envs).astype(np.float32), next_obs,
               terminated, truncated)
        obs = next_obs.copy()
        for e in range(num_envs):
            if terminated[e] or truncated[e]:
                shifted = np.concatenate([next_obs[e, 1:], frame()[None]])
                obs[e] = shifted if rng.random() < 0.3 else fresh_stack()
            elif rng.random() < p_jump:
                obs[e] = fresh_stack()


def twins(cls=ReplayBuffer, capacity=30, num_envs=1, n_step=1, **kwargs):
    """The same buffer storing whole observations and sharing frames."""
    args = dict(capacity=capacity, obs_shape=(STACK, *FRAME), obs_dtype=np.uint8, num_envs=num_envs,
                n_step=n_step, gamma=0.9, **kwargs)
    return cls(**args), cls(**args, frame_stack=STACK)


def assert_same_batches(a: Batch, b: Batch) -> None:
    for field, x, y in zip(Batch._fields, a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field)


def assert_same_contents(full: ReplayBuffer, frames: ReplayBuffer) -> None:
    assert (len(full), full.ptr) == (len(frames), frames.ptr)
    slots = np.arange(len(full))
    assert_same_batches(full.transitions(slots), frames.transitions(slots))


@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("num_envs", [1, 3])
def test_every_stored_transition_equals_whole_observation_storage(n_step, num_envs):
    """Checked after every add, over many wrap-arounds of a 30-slot ring, so a frame slot recycled while a
    stored transition or a pending window still needs it would show."""
    full, frames = twins(num_envs=num_envs, n_step=n_step)
    for step in stacked_stream(n_step + 10 * num_envs, num_envs, 400):
        full.add(*step)
        frames.add(*step)
        assert_same_contents(full, frames)
    assert frames.store.emitted > 10 * full.capacity
    # Frames are shared: far fewer slots than the 2 * 4 frames per transition whole storage copies.
    assert frames.store.used < 1.5 * full.capacity + num_envs * (n_step**2 + 2 * STACK)
    assert frames.obs.shape == (30, STACK) and frames.obs.dtype == np.int32


@pytest.mark.parametrize("n_step", [1, 3])
def test_slices_added_apart_keep_their_frames(n_step):
    """Async actors' slices (2 envs of 4 each) arriving up to 40 vector steps apart: one slice writes more than a
    30-slot ring holds while the other's windows and previous stacks wait, and every stored transition still
    decodes to what whole storage holds."""
    from test_replay import interleaved

    full, frames = twins(num_envs=4, n_step=n_step)
    steps = list(stacked_stream(5, 4, 300))
    for envs, step in interleaved(steps, [np.array([0, 1]), np.array([2, 3])], lag=40, seed=1):
        full.add(*step, envs=envs)
        frames.add(*step, envs=envs)
        assert_same_contents(full, frames)
    assert frames.store.emitted > 10 * full.capacity


def test_pool_grows_when_episodes_are_very_short():
    """Episodes of one step need ~2 new frames per transition: the pool outgrows its preallocation."""
    full, frames = twins(capacity=40, num_envs=2, n_step=3)
    pool = len(frames.store.frames)
    for step in stacked_stream(3, 2, 200, p_end=1.0):
        full.add(*step)
        frames.add(*step)
        assert_same_contents(full, frames)
    assert len(frames.store.frames) > pool


def test_frame_store_shares_frames_of_a_frame_stack():
    """One frame per step, plus one per episode for the reset observation (its padding is the same frame)."""
    store = FrameStore(STACK, 1000, (STACK, *FRAME), np.uint8, num_envs=1, n_step=1)
    steps = list(stacked_stream(0, 1, 100, p_end=0.0, p_jump=0.0))
    for obs, _, _, next_obs, _, _ in steps:
        obs_keys, next_keys = store.encode(obs, next_obs)
        np.testing.assert_array_equal(store.frames[obs_keys], obs)
        np.testing.assert_array_equal(store.frames[next_keys], next_obs)
        np.testing.assert_array_equal(next_keys[:, :-1], obs_keys[:, 1:])
    first = steps[0][0][0]
    assert store.used == 100 + len({first[k].tobytes() for k in range(STACK)})  # 1 or 2 reset frames


def test_atari_sized_memory_per_transition():
    """(4, 84, 84) stacks, episodes of 50 steps: ~1/8 of whole storage, about one frame per transition."""
    shape, capacity = (4, 84, 84), 200
    full = ReplayBuffer(capacity, shape, np.uint8, n_step=3)
    frames = ReplayBuffer(capacity, shape, np.uint8, n_step=3, frame_stack=4)
    rng = np.random.default_rng(0)
    obs = np.repeat(rng.integers(0, 256, (1, 1, 84, 84), dtype=np.uint8), 4, axis=1)
    for t in range(3 * capacity):
        next_obs = np.concatenate([obs[:, 1:], rng.integers(0, 256, (1, 1, 84, 84), dtype=np.uint8)], axis=1)
        end = np.array([t % 50 == 49])
        frames.add(obs, np.zeros(1, np.int64), np.ones(1, np.float32), next_obs, end, np.zeros(1, bool))
        obs = np.repeat(rng.integers(0, 256, (1, 1, 84, 84), dtype=np.uint8), 4, axis=1) if end[0] else next_obs
    # Frames in use: one per stored transition, one per reset (4 episodes), the n_step**2 transitions of slack
    # in deciding that a frame is free, and the frames of the newest stack.
    assert capacity + 4 < frames.store.used <= capacity + 4 + 3**2 + 4 + 2
    assert full.nbytes / capacity == 2 * 4 * 84 * 84 + 16
    assert frames.nbytes == frames.store.used * (84 * 84 + 12) + capacity * (2 * 4 * 4 + 16)
    assert full.nbytes / frames.nbytes > 7  # 7.3 here; 7.7 at 100k slots with these 50-step episodes


def test_prioritized_replay_with_frames_samples_the_same():
    full, frames = twins(PrioritizedReplayBuffer, capacity=40, num_envs=2, n_step=3, seed=4)
    for step in stacked_stream(7, 2, 300):
        full.add(*step)
        frames.add(*step)
        if not len(full):
            continue
        a, b = full.sample(16), frames.sample(16)
        assert_same_batches(a, b)
        full.update_priorities(a.indices, a.returns)
        frames.update_priorities(b.indices, b.returns)
    assert b.weights.min() < 1.0  # priorities differ, so the importance weights do


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_frame_state_dict_round_trip_gives_identical_samples(cls):
    stream = list(stacked_stream(11, 2, 80))
    original = cls(40, (STACK, *FRAME), np.uint8, num_envs=2, n_step=3, gamma=0.9, seed=0, frame_stack=STACK)
    for step in stream[:8]:  # not yet full: the saved pool is only its used slots
        original.add(*step)
    early = original.state_dict()
    assert len(early["store"]["frames"]) == original.store.used < len(original.store.frames) // 2
    for step in stream[8:50]:  # wrapped around, with windows pending
        original.add(*step)
        original.sample(8)
    assert original.win_count.sum() > 0

    file = io.BytesIO()
    torch.save(original.state_dict(), file)
    file.seek(0)
    restored = cls(40, (STACK, *FRAME), np.uint8, num_envs=2, n_step=3, gamma=0.9, seed=99, frame_stack=STACK)
    restored.load_state_dict(torch.load(file, weights_only=True))
    for step in stream[50:]:
        for buf in (original, restored):
            buf.add(*step)
        a, b = original.sample(8), restored.sample(8)
        assert_same_batches(a, b)
        if cls is PrioritizedReplayBuffer:
            original.update_priorities(a.indices, a.returns)
            restored.update_priorities(b.indices, b.returns)
    assert restored.store.used == original.store.used
    np.testing.assert_array_equal(restored.store._queued(), original.store._queued())


def test_full_and_frame_states_do_not_mix():
    full, frames = twins()
    with pytest.raises(GbmrError, match="does not fit"):
        frames.load_state_dict(full.state_dict())


@pytest.mark.parametrize(
    ("shape", "dtype", "stack"),
    [((4, 6, 6), np.float32, 4), ((6, 6, 4), np.uint8, 4), ((4,), np.uint8, 4), ((4, 6, 6), np.uint8, -1)],
)
def test_frame_stack_rejects_observations_it_cannot_serve(shape, dtype, stack):
    with pytest.raises(GbmrError, match="frame_stack"):
        ReplayBuffer(16, shape, dtype, frame_stack=stack)


def test_dqn_frame_stack_config_error():
    space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    with pytest.raises(GbmrError, match="frame_stack=4 needs uint8"):
        DQNAgent(DQNConfig(frame_stack=4, buffer_size=100, hidden=(8,)), space, gym.spaces.Discrete(2), 1,
                 torch.device("cpu"), 0, 1000)


def test_atari_stream_with_episodic_life_equals_whole_storage():
    """Real ALE frames through the training wrappers (episodic life: a lost life ends the training episode
    and the reset continues the game), random actions, two envs as the runner feeds them."""
    envs = [make_env("ALE/MsPacman-v5", training=True) for _ in range(2)]
    full = ReplayBuffer(150, envs[0].observation_space.shape, np.uint8, num_envs=2, n_step=3)
    frames = ReplayBuffer(150, envs[0].observation_space.shape, np.uint8, num_envs=2, n_step=3, frame_stack=4)
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
    rng, ends, life_resets = np.random.default_rng(0), 0, 0
    for _ in range(400):
        actions = rng.integers(0, envs[0].action_space.n, 2)
        results = [env.step(a) for env, a in zip(envs, actions, strict=True)]
        next_obs, rewards, terminated, truncated = (np.array(x) for x in list(zip(*results, strict=True))[:4])
        full.add(obs, actions, rewards, next_obs, terminated, truncated)
        frames.add(obs, actions, rewards, next_obs, terminated, truncated)
        obs = next_obs.copy()
        for i in np.flatnonzero(terminated | truncated):
            obs[i], info = envs[i].reset()
            ends, life_resets = ends + 1, life_resets + info["life_reset"]
    assert life_resets > 0
    assert_same_contents(full, frames)
    assert frames.store.used < full.capacity + 2 * ends + 40
