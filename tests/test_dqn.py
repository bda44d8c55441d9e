"""DQN maths against hand-computed values; its policy acting alone in a distributed actor."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from gbmr.agents.acting import linear_schedule
from gbmr.agents.dqn import DQNAgent, DQNConfig, EpsilonGreedyPolicy, q_targets
from gbmr.agents.optim import clip_grad_norm
from gbmr.config import RunConfig
from gbmr.runners.distributed import RolloutActor


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


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipped, and left alone
def test_clip_grad_norm_equals_torch(max_norm):
    torch.manual_seed(0)
    grads = [torch.randn(8, 4), torch.randn(8), torch.randn(3, 8)]
    original = [g.clone() for g in grads]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, original, strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    clip_grad_norm(grads, max_norm)
    for got, p in zip(grads, params, strict=True):
        assert torch.equal(got, p.grad)  # bit for bit
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
    if max_norm < 1:
        assert norm == pytest.approx(max_norm, rel=1e-5)
    else:
        assert all(torch.equal(g, o) for g, o in zip(grads, original, strict=True))


def test_a_distributed_actor_builds_only_the_policy_and_acts_as_the_agent():
    """An actor of a distributed DQN run holds an EpsilonGreedyPolicy (no learner, no replay) and, given the
    learner's weights and step, draws the actions the whole agent draws on the same observations."""
    config = RunConfig(algo="dqn", env="CartPole-v1", seed=5, total_steps=1000, num_envs=2,
                       agent=DQNConfig(hidden=(16,), eps_fraction=0.5))
    actor = RolloutActor(config.to_dict(), [0, 1], None)
    assert actor.agent is None and isinstance(actor.policy, EpsilonGreedyPolicy)
    env = gym.make("CartPole-v1")
    agent = DQNAgent(config.agent, env.observation_space, env.action_space, 2, torch.device("cpu"), 5, 1000)
    batch = actor.collect(agent.policy_weights(), 0, 20, start_step=100)["batch"]
    actions = []
    for t in range(20):
        agent.follow_schedule(100 + 2 * t)
        actions.append(agent.act(batch["obs"][t]))
    assert np.array_equal(np.stack(actions), batch["actions"])
    assert 0.0 < agent.epsilon < 1.0  # both random and greedy actions were compared


def test_the_policy_contract_greedy_is_argmax_q_and_epsilon_follows_the_schedule():
    env = gym.make("CartPole-v1")
    config = DQNConfig(hidden=(8,), eps_start=1.0, eps_end=0.1, eps_fraction=0.5)
    policy = DQNAgent.make_policy(config, env.observation_space, env.action_space, torch.device("cpu"), 0, 1000)
    obs = torch.randn(5, 4)
    actions, state, extras = policy.act(obs, policy.initial_state(5), explore=False)
    assert torch.equal(actions, policy.q(obs).argmax(dim=1)) and state == {} and extras == {}
    policy.follow_schedule(250)  # half of the 500-step decay from 1.0 to 0.1
    assert policy.epsilon == pytest.approx(0.55)
