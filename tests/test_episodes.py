"""N-step returns and the episode collector, against hand-computed values."""

import io

import numpy as np
import pytest
import torch

from gbmr.memory.episodes import EpisodeCollector, n_step_returns

REWARDS = np.array([1.0, 2.0, 3.0, 4.0])
NEXT_V = np.array([10.0, 20.0, 30.0, 40.0])  # V of the state after each step


@pytest.mark.parametrize(("n", "terminated", "expected"), [
    # R0 = 1 + .5*2 + .25*V(s2)=.25*20; R1 = 2 + .5*3 + .25*30; the tail stops at termination
    (2, True, [7.0, 11.0, 5.0, 4.0]),
    # truncated: the tail bootstraps from the final state, with gamma^(T-t)
    (2, False, [7.0, 11.0, 3 + 2 + 0.25 * 40, 4 + 0.5 * 40]),
    (1, True, [6.0, 12.0, 18.0, 4.0]),
    (1, False, [6.0, 12.0, 18.0, 24.0]),
    # n beyond the episode: Monte-Carlo when terminated, bootstrap from the final state when truncated
    (10, True, [3.25, 4.5, 5.0, 4.0]),
    (10, False, [3.25 + 40 / 16, 4.5 + 40 / 8, 5.0 + 40 / 4, 4.0 + 40 / 2]),
    (0, True, [3.25, 4.5, 5.0, 4.0]),
])
def test_n_step_returns_hand_computed(n, terminated, expected):
    np.testing.assert_allclose(n_step_returns(REWARDS, NEXT_V, n, 0.5, terminated), expected)


def test_n_step_returns_edge_cases():
    assert n_step_returns(np.zeros(0), np.zeros(0), 3, 0.9, True).shape == (0,)
    with pytest.raises(ValueError):
        n_step_returns(REWARDS, NEXT_V[:3], 2, 0.5, True)


def test_collector_two_envs_ending_at_different_steps():
    col = EpisodeCollector(2)
    obs = lambda t: np.array([[t, 0], [t, 1]])  # noqa: E731 - env i sees (t, i)
    assert col.add(obs(0), np.array([0, 1]), np.array([1.0, 2.0]), np.array([False, False]),
                   np.array([False, False]), obs(1)) == []
    ended = col.add(obs(1), np.array([2, 3]), np.array([3.0, 4.0]), np.array([False, True]),
                    np.array([False, False]), obs(2))
    assert len(ended) == 1
    ep = ended[0]
    assert ep.env == 1 and ep.terminated
    np.testing.assert_array_equal(ep.obs, [[0, 1], [1, 1]])
    np.testing.assert_array_equal(ep.actions, [1, 3])
    np.testing.assert_array_equal(ep.rewards, [2.0, 4.0])
    np.testing.assert_array_equal(ep.final_obs, [2, 1])
    assert len(col) == 2  # env 0's two steps wait
    ended = col.add(obs(2), np.array([1, 0]), np.array([5.0, 6.0]), np.array([False, False]),
                    np.array([True, False]), obs(3))
    assert [e.env for e in ended] == [0]
    ep = ended[0]
    assert not ep.terminated
    np.testing.assert_array_equal(ep.actions, [0, 2, 1])
    np.testing.assert_array_equal(ep.rewards, [1.0, 3.0, 5.0])
    np.testing.assert_array_equal(ep.obs[:, 0], [0, 1, 2])
    assert len(col) == 1  # env 1's new episode has begun


def test_collector_state_dict_round_trip():
    col = EpisodeCollector(2)
    col.add(np.array([[1, 2], [3, 4]]), np.array([0, 1]), np.array([0.5, -1.0]), np.array([False, True]),
            np.array([False, False]))
    buf = io.BytesIO()
    torch.save(col.state_dict(), buf)
    buf.seek(0)
    other = EpisodeCollector(2)
    other.load_state_dict(torch.load(buf, weights_only=True))
    args = (np.array([[5, 6], [7, 8]]), np.array([2, 3]), np.array([1.0, 2.0]), np.array([True, True]),
            np.array([False, False]))
    a, b = col.add(*args), other.add(*args)
    assert [e.env for e in a] == [e.env for e in b] == [0, 1]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.rewards, y.rewards)
    np.testing.assert_array_equal(b[0].rewards, [0.5, 1.0])
    np.testing.assert_array_equal(b[1].rewards, [2.0])
    with pytest.raises(ValueError):
        EpisodeCollector(3).load_state_dict(col.state_dict())
