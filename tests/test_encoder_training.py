"""Encoder training through the kernel lookup (GBMR.md "Encoder training"): the shared kernel's gradient by hand,
GQ's loss and gradient on a hand-built graph, and the loss going down on a small task."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from gbmr.agents.gq import GQAgent, GQConfig
from gbmr.memory.kernel import kernel_lookup

PLANE = gym.spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)

# h = (0, 0); neighbours (1, 0) with value 1 and (0, 2) with value 3; delta = 0:
# w = (1, 1/4), Q = (1 + 3/4) / (5/4) = 1.4. With R = 2, L = (R - Q)^2 = 0.36 and
# dL/dh = -2 (R - Q) sum_i (v_i - Q) dw_i/dh / sum_i w_i, dw_i/dh = -2 w_i^2 (h - h_i):
# dw_1/dh = (2, 0), dw_2/dh = (0, 1/4) -> dQ/dh = ((-0.4)(2, 0) + 1.6 (0, 0.25)) / 1.25 = (-0.64, 0.32)
# -> dL/dh = -1.2 (-0.64, 0.32) = (0.768, -0.384).
Q_HAND, LOSS_HAND, GRAD_HAND = 1.4, 0.36, [0.768, -0.384]


def test_kernel_lookup_value_and_gradient_by_hand():
    h = torch.zeros(2, 2, requires_grad=True)
    keys = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]] * 2)
    values = torch.tensor([[1.0, 3.0, 100.0]] * 2)
    valid = torch.tensor([[True, True, False], [False, False, False]])  # a masked neighbour; a row with none
    q, weights = kernel_lookup(h, keys, values, valid, delta=0.0)
    torch.testing.assert_close(q, torch.tensor([Q_HAND, 0.0]))
    torch.testing.assert_close(weights[0], torch.tensor([0.8, 0.2, 0.0]))
    (2.0 - q).square().sum().backward()
    torch.testing.assert_close(h.grad, torch.tensor([GRAD_HAND, [0.0, 0.0]]))


def linear_gq(**overrides) -> GQAgent:
    """GQ whose learned encoder is phi(x) = W x + b on 2-d observations (no hidden layer): W = I, b = -1."""
    cfg = GQConfig(**{"encoder": "learned", "embed_dim": 2, "hidden": (), "capacity": 8, "k": 2, "delta": 0.0,
                      "learning_starts": 0, **overrides})
    agent = GQAgent(cfg, PLANE, gym.spaces.Discrete(2), 1, torch.device("cpu"), 0, 100)
    with torch.no_grad():
        agent.encoder.head.weight.copy_(torch.eye(2))
        agent.encoder.head.bias.fill_(-1.0)
    return agent


@pytest.mark.parametrize("layout", ["joint", "per_action"])
def test_gq_encoder_loss_and_gradient_by_hand(layout):
    agent = linear_gq(layout=layout)
    # nodes at (1, 0) and (0, 2): (1,0) -0-> (0,2) -0-> terminal with returns 1 and 3, so Q(u, 0) = 1 and 3
    agent.graph.write_episode(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([0, 0]), np.zeros(2), np.array([1.0, 3.0]))
    keys_before = agent.graph.node_keys.copy()
    obs = np.array([[1.0, 1.0]], np.float32)  # phi(obs) = (0, 0)
    loss = agent.encoder_loss(obs, np.array([0]), np.array([2.0]))
    assert loss.item() == pytest.approx(LOSS_HAND)
    agent.learner.step(loss)
    head = agent.encoder.head
    torch.testing.assert_close(head.bias.grad, torch.tensor(GRAD_HAND))
    torch.testing.assert_close(head.weight.grad, torch.outer(torch.tensor(GRAD_HAND), torch.ones(2)))
    np.testing.assert_array_equal(agent.graph.node_keys, keys_before)  # the graph's keys are constants
    assert not torch.equal(head.bias.detach(), torch.tensor([-1.0, -1.0]))  # RMSprop moved phi


def test_gq_encoder_loss_missing_rule():
    """No out-edge labelled 1 anywhere: Q(s, 1) reads 0 under `zero` (a target of 2 costs 4), nothing under `skip`."""
    for missing, expected in (("zero", 4.0), ("skip", None)):
        agent = linear_gq(missing=missing)
        agent.graph.write_episode(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([0, 0]), np.zeros(2), np.ones(2))
        loss = agent.encoder_loss(np.array([[1.0, 1.0]], np.float32), np.array([1]), np.array([2.0]))
        assert (loss if loss is None else loss.item()) == expected


def test_gq_learned_encoder_learns_to_address_a_fixed_memory():
    """A small task, seed 0: nodes at (i, 0) with Q = i, i = 0..9; observations x in [0, 9] with return x. The
    untrained phi lands anywhere and reads a blend of values; the learner steps of GQ's own ``update`` (replay
    batches of 32, RMSprop) teach phi to map x near (x, 0). The graph's keys never move."""
    line = gym.spaces.Box(0.0, 9.0, shape=(1,), dtype=np.float32)
    cfg = GQConfig(encoder="learned", embed_dim=2, hidden=(16,), capacity=16, k=3, dist_th=0.1, lr=3e-3,
                   learning_starts=0)
    agent = GQAgent(cfg, line, gym.spaces.Discrete(1), 1, torch.device("cpu"), 0, 10_000)
    for i in range(10):
        agent.graph.write_episode(np.array([[i, 0.0]]), np.array([0]), np.zeros(1), np.array([float(i)]))
    keys = agent.graph.node_keys.copy()
    x = np.random.default_rng(0).uniform(0, 9, size=(2000, 1)).astype(np.float32)
    agent.learner.replay.add(x, np.zeros(2000, dtype=np.int64), x[:, 0])
    probe = np.linspace(0, 9, 100, dtype=np.float32)[:, None]

    def probe_loss():
        return agent.encoder_loss(probe, np.zeros(100, dtype=np.int64), probe[:, 0]).item()

    before, losses = probe_loss(), []
    for _ in range(300):
        agent.steps += cfg.learn_step
        losses.append(agent.update()["encoder_loss"])
    assert probe_loss() < 0.01 * before, (before, probe_loss())  # measured: 22.5 -> 0.03
    assert np.mean(losses[-50:]) < 0.01 * np.mean(losses[:50])
    np.testing.assert_array_equal(agent.graph.node_keys, keys)
