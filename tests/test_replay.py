"""Replay memories against hand-computed n-step returns, brute-force sum trees and known priorities."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from gbmr.core.errors import GbmrError
from gbmr.memory.replay import Batch, PrioritizedReplayBuffer, ReplayBuffer, SumTree


def stored(buf: ReplayBuffer) -> dict[str, np.ndarray]:
    """The filled part of the storage (slot order), observations as labels."""
    n = len(buf)
    return {
        "obs": buf.obs[:n, 0],
        "actions": buf.actions[:n],
        "returns": buf.returns[:n],
        "next_obs": buf.next_obs[:n, 0],
        "discounts": buf.discounts[:n],
    }


def step(buf, obs, rewards, next_obs, terminated=None, truncated=None, envs=None):
    """Add a step whose observations are scalar labels and whose actions repeat the labels (``envs``: only these
    environments stepped)."""
    obs = np.asarray(obs, dtype=np.float32)
    none = np.zeros(len(obs), dtype=bool)
    buf.add(
        obs[:, None],
        obs.astype(np.int64),
        np.asarray(rewards, dtype=np.float32),
        np.asarray(next_obs, dtype=np.float32)[:, None],
        none if terminated is None else np.asarray(terminated),
        none if truncated is None else np.asarray(truncated),
        envs,
    )


def interleaved(steps: list[tuple], slices: list[np.ndarray], lag: int, seed: int):
    """The vector steps cut into the envs' ``slices``, each slice's steps in order but the slices interleaved at
    random in runs of up to ``lag`` steps, at most ``lag`` apart (as async actors' batches reach the learner):
    (envs, sliced step) pairs."""
    rng, done, out = np.random.default_rng(seed), [0] * len(slices), []
    while min(done) < len(steps):
        k = rng.choice([k for k in range(len(slices)) if done[k] < len(steps) and done[k] - min(done) < lag])
        for _ in range(min(int(rng.integers(1, lag + 1)), len(steps) - done[k], min(done) + lag - done[k])):
            out.append((slices[k], tuple(np.asarray(column)[slices[k]] for column in steps[done[k]])))
            done[k] += 1
    return out


# --- n-step returns ---


@pytest.mark.parametrize(
    ("ending", "last_discounts"),
    [("terminated", [0.0, 0.0, 0.0]), ("truncated", [0.125, 0.25, 0.5])],
)
def test_three_step_returns_single_episode(ending, last_discounts):
    buf = ReplayBuffer(16, (1,), np.float32, n_step=3, gamma=0.5)
    sizes = []
    for t, r in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        end = [t == 4]
        step(buf, [t], [r], [t + 1], **{ending: end})
        sizes.append(len(buf))
    assert sizes == [0, 0, 1, 2, 5]
    got = stored(buf)
    np.testing.assert_array_equal(got["obs"], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(got["actions"], [0, 1, 2, 3, 4])
    # 1 + .5*2 + .25*3; 2 + .5*3 + .25*4; 3 + .5*4 + .25*5; 4 + .5*5; 5
    np.testing.assert_allclose(got["returns"], [2.75, 4.5, 6.25, 6.5, 5.0])
    np.testing.assert_array_equal(got["next_obs"], [3, 4, 5, 5, 5])
    np.testing.assert_allclose(got["discounts"], [0.125, 0.125, *last_discounts])
    assert buf.win_count.tolist() == [0]


@pytest.mark.parametrize("capacity", [16, 6])
def test_three_step_returns_two_interleaved_envs(capacity):
    """env 0 terminates at step 1 and starts again; env 1 is truncated at step 3. obs = 100*env + step."""
    buf = ReplayBuffer(capacity, (1,), np.float32, num_envs=2, n_step=3, gamma=0.5)
    rewards = [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]]
    terminated = [[0, 0], [1, 0], [0, 0], [0, 0], [0, 0]]
    truncated = [[0, 0], [0, 0], [0, 0], [0, 1], [0, 0]]
    for s in range(5):
        labels = np.array([s, 100 + s])
        step(buf, labels, rewards[s], labels + 1, np.array(terminated[s], bool), np.array(truncated[s], bool))
    # Emission order: per add, env by env, oldest first.
    expected = [  # (obs, return, next_obs, discount)
        (0, 2.0, 2, 0.0),  # step 1: env 0 terminates, flushes 1 + .5*2 and 2
        (1, 2.0, 2, 0.0),
        (100, 27.5, 103, 0.125),  # step 2: env 1's window is full: 10 + .5*20 + .25*30
        (101, 45.0, 104, 0.125),  # step 3: env 1 truncated: 20 + .5*30 + .25*40, 30 + .5*40, 40
        (102, 50.0, 104, 0.25),
        (103, 40.0, 104, 0.5),
        (2, 6.25, 5, 0.125),  # step 4: env 0's new episode fills its window: 3 + .5*4 + .25*5
    ]
    slots = [None] * min(capacity, len(expected))
    for j, row in enumerate(expected):
        slots[j % capacity] = row
    obs, returns, next_obs, discounts = (np.array(col) for col in zip(*slots, strict=True))
    got = stored(buf)
    assert len(buf) == len(slots)
    np.testing.assert_array_equal(got["obs"], obs)
    np.testing.assert_array_equal(got["actions"], obs)
    np.testing.assert_allclose(got["returns"], returns)
    np.testing.assert_array_equal(got["next_obs"], next_obs)
    np.testing.assert_allclose(got["discounts"], discounts)
    assert buf.win_count.tolist() == [2, 1]  # env 0 holds steps 3, 4; env 1 holds step 4


def test_slices_added_on_their_own_keep_each_envs_windows():
    """The two envs above as async slices: env 1's five steps arrive before env 0's. Each env's windows are its
    own, so the same n-step transitions are stored, each slice's as it is added."""
    buf = ReplayBuffer(16, (1,), np.float32, num_envs=2, n_step=3, gamma=0.5)
    rewards = [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]]
    terminated = [[0, 0], [1, 0], [0, 0], [0, 0], [0, 0]]
    truncated = [[0, 0], [0, 0], [0, 0], [0, 1], [0, 0]]
    for env in (1, 0):
        for s in range(5):
            step(buf, [100 * env + s], [rewards[s][env]], [100 * env + s + 1], np.array([terminated[s][env]], bool),
                 np.array([truncated[s][env]], bool), envs=np.array([env]))
    got = stored(buf)
    np.testing.assert_array_equal(got["obs"], [100, 101, 102, 103, 0, 1, 2])
    np.testing.assert_allclose(got["returns"], [27.5, 45.0, 50.0, 40.0, 2.0, 2.0, 6.25])
    np.testing.assert_array_equal(got["next_obs"], [103, 104, 104, 104, 2, 2, 5])
    np.testing.assert_allclose(got["discounts"], [0.125, 0.125, 0.25, 0.5, 0.0, 0.0, 0.125])
    assert buf.win_count.tolist() == [2, 1]


@pytest.mark.parametrize("n_step", [2, 4])
def test_interleaved_slices_store_what_one_process_stores(n_step):
    """4 envs in 2 slices arriving up to 7 steps apart store the single-process buffer's transitions (in another
    order: each slice's when it is added)."""
    rng = np.random.default_rng(n_step)
    steps = []
    for t in range(150):
        obs = np.arange(4) + 10 * t  # unique labels
        steps.append((obs, rng.normal(size=4), obs + 5, rng.random(4) < 0.1, rng.random(4) < 0.1))
    whole = ReplayBuffer(1000, (1,), np.float32, num_envs=4, n_step=n_step, gamma=0.7)
    sliced = ReplayBuffer(1000, (1,), np.float32, num_envs=4, n_step=n_step, gamma=0.7)
    for s in steps:
        step(whole, *s)
    for envs, s in interleaved(steps, [np.array([0, 1]), np.array([2, 3])], lag=7, seed=n_step):
        step(sliced, *s, envs=envs)
    a, b = stored(whole), stored(sliced)
    order_a, order_b = np.argsort(a["obs"]), np.argsort(b["obs"])
    assert len(whole) == len(sliced) > 400
    for name in a:
        np.testing.assert_array_equal(a[name][order_a], b[name][order_b], err_msg=name)
    np.testing.assert_array_equal(whole.win_count, sliced.win_count)


@pytest.mark.parametrize("n_step", [1, 2, 4])
def test_n_step_matches_a_plain_python_reference(n_step):
    """Random episode ends over 3 envs against per-env lists (a second, independent implementation)."""
    gamma, rng = 0.7, np.random.default_rng(n_step)
    buf = ReplayBuffer(1000, (1,), np.float32, num_envs=3, n_step=n_step, gamma=gamma)
    windows, expected = [[], [], []], []
    for t in range(200):
        obs, rewards = np.arange(3) + 10 * t, rng.normal(size=3)
        terminated, truncated = rng.random(3) < 0.1, rng.random(3) < 0.1
        step(buf, obs, rewards, obs + 5, terminated, truncated)
        for e in range(3):
            windows[e].append((obs[e], rewards[e]))
            ended = terminated[e] or truncated[e]
            while windows[e] and (ended or len(windows[e]) == n_step):
                rs = [r for _, r in windows[e]]
                discount = 0.0 if terminated[e] else gamma ** len(rs)
                expected.append(
                    (windows[e][0][0], sum(r * gamma**j for j, r in enumerate(rs)), obs[e] + 5, discount)
                )
                windows[e].pop(0)
                if not ended:
                    break
    obs, returns, next_obs, discounts = (np.array(col) for col in zip(*expected, strict=True))
    got = stored(buf)
    assert len(buf) == len(expected) > 300
    np.testing.assert_array_equal(got["obs"], obs)
    np.testing.assert_allclose(got["returns"], returns, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["next_obs"], next_obs)
    np.testing.assert_allclose(got["discounts"], discounts, rtol=1e-6)


def test_one_step_equals_plain_transitions():
    rng = np.random.default_rng(1)
    buf = ReplayBuffer(100, (3,), np.float32, num_envs=3, gamma=0.9)
    inputs = []
    for _ in range(20):
        obs, next_obs = rng.normal(size=(2, 3, 3)).astype(np.float32)
        actions, rewards = rng.integers(0, 4, 3), rng.normal(size=3).astype(np.float32)
        terminated, truncated = rng.random(3) < 0.2, rng.random(3) < 0.2
        buf.add(obs, actions, rewards, next_obs, terminated, truncated)
        inputs.append((obs, actions, rewards, next_obs, 0.9 * ~terminated))
    obs, actions, rewards, next_obs, discounts = (np.concatenate(col) for col in zip(*inputs, strict=True))
    assert len(buf) == 60
    np.testing.assert_array_equal(buf.obs[:60], obs)
    np.testing.assert_array_equal(buf.actions[:60], actions)
    np.testing.assert_array_equal(buf.returns[:60], rewards)
    np.testing.assert_array_equal(buf.next_obs[:60], next_obs)
    np.testing.assert_allclose(buf.discounts[:60], discounts)


def test_wrap_around_at_capacity():
    """Two envs into 5 slots: the third add writes slots 4 and 0. obs = 10*step + env."""
    buf = ReplayBuffer(5, (1,), np.float32, num_envs=2)
    for t in range(4):
        labels = np.array([10 * t, 10 * t + 1])
        step(buf, labels, labels, labels + 1)
    assert len(buf) == 5 and buf.ptr == 3
    np.testing.assert_array_equal(buf.obs[:, 0], [21, 30, 31, 11, 20])
    batch = buf.sample(400)
    assert isinstance(batch, Batch) and batch.indices.dtype == np.int64
    np.testing.assert_array_equal(batch.obs[:, 0], buf.obs[batch.indices, 0])
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.obs[:, 0] + 1)
    np.testing.assert_array_equal(batch.weights, np.ones(400, np.float32))
    assert set(batch.indices.tolist()) == {0, 1, 2, 3, 4}


def test_uniform_sampling_is_uniform_and_seeded():
    def make(seed):
        buf = ReplayBuffer(8, (1,), np.float32, seed=seed)
        for t in range(8):
            step(buf, [t], [0.0], [t + 1])
        return buf

    buf = make(0)
    counts = np.bincount(np.concatenate([buf.sample(64).indices for _ in range(200)]), minlength=8)
    assert chisquare(counts).pvalue > 0.01
    np.testing.assert_array_equal(make(3).sample(32).indices, make(3).sample(32).indices)
    assert not np.array_equal(make(3).sample(32).indices, make(4).sample(32).indices)


def test_invalid_configuration_and_empty_sample():
    with pytest.raises(GbmrError, match="capacity"):
        ReplayBuffer(5, (1,), np.float32, num_envs=2, n_step=3)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(8, (1,), np.float32).sample(4)


# --- sum tree ---


def test_sum_tree_matches_brute_force():
    rng = np.random.default_rng(0)
    tree, reference = SumTree(1000), np.zeros(1000)
    for _ in range(5):
        indices = rng.integers(0, 1000, 700)  # with repeats: the last write of an index wins
        priorities = rng.exponential(size=700)
        tree.update(indices, priorities)
        for i, p in zip(indices, priorities, strict=True):
            reference[i] = p
        assert tree.total == pytest.approx(reference.sum(), rel=1e-12)
        np.testing.assert_array_equal(tree[np.arange(1000)], reference)
        prefix_sums = rng.random(5000) * reference.sum()
        np.testing.assert_array_equal(
            tree.find(prefix_sums), np.searchsorted(np.cumsum(reference), prefix_sums, side="right")
        )


def test_sum_tree_never_returns_zero_priority_leaves():
    tree = SumTree(6)  # 8 leaves inside
    tree.update(np.arange(6), np.array([0.0, 1.0, 0.0, 2.0, 0.0, 0.0]))
    assert tree.total == 3.0
    np.testing.assert_array_equal(tree.find(np.array([0.0, 0.5, 1.0, 2.999, 3.0, 3.5])), [1, 1, 3, 3, 3, 3])
    with pytest.raises(IndexError):
        tree.update(np.array([6]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):  # a NaN TD error must not poison the tree silently
        tree.update(np.array([0]), np.array([np.nan]))


def test_sum_tree_state_dict_round_trip():
    rng = np.random.default_rng(2)
    tree = SumTree(37)
    tree.update(np.arange(37), rng.random(37))
    copy = SumTree(37)
    copy.load_state_dict(tree.state_dict())
    assert copy.total == tree.total
    s = rng.random(100) * tree.total
    np.testing.assert_array_equal(copy.find(s), tree.find(s))


# --- prioritized replay ---


def filled_per(n: int, **kwargs) -> PrioritizedReplayBuffer:
    buf = PrioritizedReplayBuffer(n, (1,), np.float32, **kwargs)
    for t in range(n):
        step(buf, [t], [0.0], [t + 1])
    return buf


def test_priority_formula_and_new_transitions_get_max_priority():
    buf = PrioritizedReplayBuffer(4, (1,), np.float32, alpha=0.5, eps=1.0)
    step(buf, [0], [0.0], [1])
    step(buf, [1], [0.0], [2])
    np.testing.assert_array_equal(buf.tree[np.arange(2)], [1.0, 1.0])  # max priority starts at 1
    buf.update_priorities(np.array([0, 1]), np.array([3.0, -8.0]))  # (|td| + 1) ** .5
    np.testing.assert_allclose(buf.tree[np.arange(2)], [2.0, 3.0])
    step(buf, [2], [0.0], [3])
    assert buf.tree[np.array([2])][0] == pytest.approx(3.0)
    assert buf.tree.total == pytest.approx(8.0)


def test_per_never_samples_empty_slots():
    buf = PrioritizedReplayBuffer(16, (1,), np.float32)
    for t in range(5):
        step(buf, [t], [0.0], [t + 1])
    indices = np.concatenate([buf.sample(32).indices for _ in range(50)])
    assert set(indices.tolist()) == {0, 1, 2, 3, 4}


def test_per_sampling_is_stratified():
    """Equal priorities, one draw per segment: every index exactly once, in order."""
    buf = filled_per(8)
    for _ in range(5):
        np.testing.assert_array_equal(buf.sample(8).indices, np.arange(8))


def test_per_sampling_frequencies_follow_priorities():
    buf = filled_per(8, alpha=1.0, eps=0.0)
    priorities = np.arange(1.0, 9.0)
    buf.update_priorities(np.arange(8), priorities)
    counts = np.bincount(np.concatenate([buf.sample(64).indices for _ in range(200)]), minlength=8)
    assert chisquare(counts, counts.sum() * priorities / priorities.sum()).pvalue > 0.01
    assert chisquare(counts).pvalue < 1e-6  # and they are clearly not uniform


def test_per_weights_hand_computed():
    buf = filled_per(4, alpha=1.0, eps=0.0)
    buf.beta = 0.5
    buf.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    # P = [.1, .2, .3, .4], N = 4: (N P)^-.5 = 1/sqrt(.4), 1/sqrt(.8), 1/sqrt(1.2), 1/sqrt(1.6)
    unnormalised = np.array([1.5811388, 1.1180340, 0.9128709, 0.7905694])
    seen_full_batch = False
    for _ in range(300):  # a batch of all four indices has probability .4 * .2 * .4
        batch = buf.sample(4)
        expected = unnormalised[batch.indices] / unnormalised[batch.indices].max()
        np.testing.assert_allclose(batch.weights, expected, rtol=1e-6)
        assert batch.weights.dtype == np.float32
        if sorted(batch.indices.tolist()) == [0, 1, 2, 3]:
            seen_full_batch = True
            np.testing.assert_allclose(np.sort(batch.weights), [0.5, 0.5773503, 0.7071068, 1.0], rtol=1e-6)
    assert seen_full_batch


def test_update_priorities_changes_sampling():
    buf = filled_per(8, alpha=1.0)
    before = np.concatenate([buf.sample(32).indices for _ in range(20)])
    assert 0.05 < np.mean(before == 5) < 0.25  # all at max priority: uniform
    buf.update_priorities(np.array([5]), np.array([1000.0]))
    after = np.concatenate([buf.sample(32).indices for _ in range(20)])
    assert np.mean(after == 5) > 0.95


# --- checkpoints ---


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_state_dict_round_trip_gives_identical_samples(cls):
    data = np.random.default_rng(5)

    def steps(count, p_end):
        return [
            (
                data.integers(0, 255, (2, 2, 3), dtype=np.uint8),
                data.integers(0, 4, 2),
                data.normal(size=2).astype(np.float32),
                data.integers(0, 255, (2, 2, 3), dtype=np.uint8),
                data.random(2) < p_end,
                data.random(2) < p_end,
            )
            for _ in range(count)
        ]

    def make(seed):
        return cls(16, (2, 3), np.uint8, num_envs=2, n_step=3, gamma=0.9, seed=seed)

    def run(buf, future):
        batches = []
        for transition in future:
            buf.add(*transition)
            batches.append(buf.sample(8))
            if isinstance(buf, PrioritizedReplayBuffer):
                buf.update_priorities(batches[-1].indices, batches[-1].returns)
        return batches

    original = make(seed=0)
    for transition in steps(12, 0.15) + steps(2, 0.0):  # past capacity, leaving windows pending
        original.add(*transition)
    original.sample(8)
    assert original.win_count.sum() > 0

    file = io.BytesIO()
    torch.save(original.state_dict(), file)
    file.seek(0)
    restored = make(seed=99)
    restored.load_state_dict(torch.load(file, weights_only=True))

    future = steps(10, 0.15)
    for a, b in zip(run(original, future), run(restored, future), strict=True):
        for field, x, y in zip(Batch._fields, a, b, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=field)
    np.testing.assert_array_equal(original.obs, restored.obs)
    assert restored.obs.dtype == np.uint8 and a.obs.dtype == np.uint8


def test_load_state_dict_rejects_other_layout():
    state = ReplayBuffer(16, (1,), np.float32, n_step=3).state_dict()
    with pytest.raises(GbmrError, match="does not fit"):
        ReplayBuffer(16, (1,), np.float32, n_step=2).load_state_dict(state)
