"""DQN maths against hand-computed values."""

import torch

from gbmr.agents.acting import linear_schedule
from gbmr.agents.dqn import q_targets


def test_double_dqn_targets():
    returns = torch.tensor([1.0, 0.5])
    discounts = torch.tensor([0.9, 0.0])  # second transition terminated
    next_q_target = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    next_q_online = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    # Double DQN: the online net picks a* = [0, 1], the target net values it: [1, 5].
    assert torch.allclose(q_targets(returns, discounts, next_q_target, next_q_online), torch.tensor([1.9, 0.5]))
    # Plain DQN: max of the target net: [3, 5].
    assert torch.allclose(q_targets(returns, discounts, next_q_target), torch.tensor([3.7, 0.5]))


def test_n_step_discount_enters_target():
    # a 3-step return with gamma 0.5 arrives with discount 0.125
    y = q_targets(torch.tensor([2.0]), torch.tensor([0.125]), torch.tensor([[8.0, 4.0]]))
    assert torch.allclose(y, torch.tensor([3.0]))


def test_linear_schedule():
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert abs(linear_schedule(1.0, 0.1, 100, 50) - 0.55) < 1e-12
    assert linear_schedule(1.0, 0.1, 100, 500) == 0.1
    assert linear_schedule(1.0, 0.1, 0, 0) == 0.1
