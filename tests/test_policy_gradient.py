"""The maths of the policy-gradient family against hand-computed values: GAE, V-trace, reward-to-go, round
discounting, PPO's clipped losses, the action heads, and the rollout storage."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from gbmr.agents.ppo import ppo_losses
from gbmr.agents.reinforce import finished_mask
from gbmr.memory.rollout import RolloutStorage, discounted_returns, gae, round_cuts, vtrace
from gbmr.nets.policies import CategoricalHead, GaussianHead


def column(*values):
    return torch.tensor(values, dtype=torch.float32)[:, None]  # [T, N=1]


def storage_with(rewards, values, dones, bootstrap, last_value):
    s = RolloutStorage(len(rewards), 1, {}, torch.device("cpu"))
    for r, v, d, b in zip(rewards, values, dones, bootstrap, strict=True):
        s.add(rewards=torch.tensor([r]), values=torch.tensor([v]), dones=torch.tensor([d]),
              bootstrap=torch.tensor([b]))
    s.last_values = torch.tensor([last_value])
    return s


def test_next_values_follow_the_episode_and_bootstrap_where_it_ended():
    s = storage_with([1, 0, 2], [0.5, 1.0, 1.5], [False, True, False], [0.0, 3.0, 0.0], 2.0)
    assert s.next_values()[:, 0].tolist() == [1.0, 3.0, 2.0]


def test_gae_by_hand_termination():
    """gamma 0.9, lambda 0.5; the episode terminates after step 1 (bootstrap 0), V(s_3) = 2.
    deltas: 1 + 0.9 * 1 - 0.5 = 1.4, 0 + 0 - 1 = -1, 2 + 0.9 * 2 - 1.5 = 2.3;
    A_2 = 2.3, A_1 = -1 (cut), A_0 = 1.4 + 0.45 * -1 = 0.95."""
    s = storage_with([1, 0, 2], [0.5, 1.0, 1.5], [False, True, False], [0.0, 0.0, 0.0], 2.0)
    adv, ret = gae(s["rewards"], s["values"], s.next_values(), s["dones"], 0.9, 0.5)
    assert adv[:, 0].tolist() == pytest.approx([0.95, -1.0, 2.3])
    assert ret[:, 0].tolist() == pytest.approx([1.45, 0.0, 3.8])


def test_gae_by_hand_truncation_bootstraps_the_final_observation():
    """Same, but step 1 was truncated with V(final obs) = 3: delta_1 = 0.9 * 3 - 1 = 1.7, A_0 = 1.4 + 0.45 * 1.7."""
    s = storage_with([1, 0, 2], [0.5, 1.0, 1.5], [False, True, False], [0.0, 3.0, 0.0], 2.0)
    adv, _ = gae(s["rewards"], s["values"], s.next_values(), s["dones"], 0.9, 0.5)
    assert adv[:, 0].tolist() == pytest.approx([2.165, 1.7, 2.3])


def test_gae_with_lambda_one_is_the_n_step_return_advantage():
    rewards, values = column(1, 1, 1), column(0.0, 0.0, 0.0)
    dones = torch.zeros(3, 1, dtype=torch.bool)
    next_values = column(0.0, 0.0, 10.0)
    _, ret = gae(rewards, values, next_values, dones, 0.5, 1.0)
    assert ret[:, 0].tolist() == pytest.approx([1 + 0.5 + 0.25 + 0.125 * 10, 1 + 0.5 + 0.25 * 10, 1 + 0.5 * 10])


def test_vtrace_by_hand():
    """gamma 0.9, lam 1, bars 1; pi/mu = 2, 0.5, 1 -> rho = c = 1, 0.5, 1; the episode terminates at step 2.
    deltas: 1 * (1 + 0.9 * 1 - 0.5) = 1.4, 0.5 * (0 + 0.9 * 0.2 - 1) = -0.41, 2 - 0.2 = 1.8;
    v_2 - V_2 = 1.8, v_1 - V_1 = -0.41 + 0.9 * 0.5 * 1.8 = 0.4, v_0 - V_0 = 1.4 + 0.9 * 0.4 = 1.76;
    advantages: 1 * (1 + 0.9 * 1.4 - 0.5) = 1.76, 0.5 * (0.9 * 2 - 1) = 0.4, 1 * (2 + 0 - 0.2) = 1.8."""
    s = storage_with([1, 0, 2], [0.5, 1.0, 0.2], [False, False, True], [0.0, 0.0, 0.0], 5.0)
    log_rhos = column(math.log(2), math.log(0.5), 0.0)
    adv, targets = vtrace(s["rewards"], s["values"], s.next_values(), s["dones"], log_rhos, 0.9)
    assert targets[:, 0].tolist() == pytest.approx([2.26, 1.4, 2.0])
    assert adv[:, 0].tolist() == pytest.approx([1.76, 0.4, 1.8])


def test_vtrace_on_policy_is_gae():
    """pi = mu: the targets are GAE(lam)'s returns for any lam, and with lam = 1 the advantages too."""
    gen = torch.Generator().manual_seed(0)
    rewards, values, next_values = (torch.randn(6, 3, generator=gen) for _ in range(3))
    dones = torch.rand(6, 3, generator=gen) < 0.3
    for lam in (0.95, 1.0):
        adv, targets = vtrace(rewards, values, next_values, dones, torch.zeros(6, 3), 0.9, lam)
        gae_adv, gae_returns = gae(rewards, values, next_values, dones, 0.9, lam)
        torch.testing.assert_close(targets, gae_returns)
        if lam == 1.0:
            torch.testing.assert_close(adv, gae_adv)
    above = vtrace(rewards, values, next_values, dones, torch.full((6, 3), 1.0), 0.9, 1.0)[0]
    torch.testing.assert_close(above, gae_adv)  # ratios e > 1 are truncated to rho_bar = c_bar = 1
    below = vtrace(rewards, values, next_values, dones, torch.full((6, 3), -1.0), 0.9, 1.0)[0]
    assert not torch.allclose(below, gae_adv)  # ratios 1/e weigh the deltas down


def test_ppo_with_vtrace_learns_a_fresh_rollout_as_with_gae():
    """Collected by the current weights, V-trace (lam = 1) gives PPO the advantages and targets GAE does, so one
    update ends at the same weights; this checks the re-evaluation of the rollout under the current policy."""
    from gbmr.agents.ppo import PPOAgent, PPOConfig

    obs_space, action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(3)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (9, 2, 4)).astype(np.float32)
    rewards, dones = rng.normal(size=(8, 2)), rng.random((8, 2)) < 0.2

    def updated(correction):
        torch.manual_seed(0)
        agent = PPOAgent(PPOConfig(n_steps=8, num_minibatches=2, gae_lambda=1.0, correction=correction),
                         obs_space, action_space, 2, torch.device("cpu"), seed=5, total_steps=1000)
        for t in range(8):
            actions = agent.act(obs[t])
            agent.observe(obs[t], actions, rewards[t], obs[t + 1], dones[t], np.zeros(2, bool))
        assert agent.update()
        return agent.policy.net.state_dict()

    gae_weights, vtrace_weights = updated("clip"), updated("vtrace")
    for name, tensor in gae_weights.items():
        torch.testing.assert_close(vtrace_weights[name], tensor, atol=1e-6, rtol=1e-5)


def test_reward_to_go_by_hand():
    """G_2 = 2 + 0.9 * 2 (bootstrap at the last row), G_1 = 0 (terminated), G_0 = 1 + 0.9 * G_1."""
    g = discounted_returns(column(1, 0, 2), column(9, 0, 2), torch.tensor([[False], [True], [False]]), 0.9)
    assert g[:, 0].tolist() == pytest.approx([1.0, 0.0, 3.8])


def test_round_discounting_restarts_the_sum_at_each_point():
    rewards = column(0, 1, 0, -1, 0)
    dones = torch.zeros(5, 1, dtype=torch.bool)
    zeros = torch.zeros(5, 1)
    plain = discounted_returns(rewards, zeros, dones, 0.9)
    assert plain[:, 0].tolist() == pytest.approx([0.171, 0.19, -0.9, -1.0, 0.0])
    rounds = discounted_returns(rewards, *round_cuts(rewards, zeros, dones), 0.9)
    assert rounds[:, 0].tolist() == pytest.approx([0.9, 1.0, -0.9, -1.0, 0.0])


def test_ppo_losses_by_hand():
    ratios = torch.tensor([2.0, 0.9, 0.5])
    old = torch.log(torch.tensor([0.25, 0.5, 0.4]))
    new = old + ratios.log()
    adv = torch.tensor([1.0, -1.0, -1.0])
    new_v, old_v, ret = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.5, 2.0, 1.0]), torch.tensor([2.0, 1.0, 0.0])
    policy, value, kl, clip_fraction = ppo_losses(new, old, adv, new_v, old_v, ret, 0.2, clip_vloss=True)
    # max(-A r, -A clip(r)): max(-2, -1.2), max(0.9, 0.9), max(0.5, 0.8)
    assert policy.item() == pytest.approx((-1.2 + 0.9 + 0.8) / 3)
    # clipped values 0.7, 2.0, 0.8: errors max(1, 1.69), max(1, 1), max(0, 0.64)
    assert value.item() == pytest.approx(0.5 * (1.69 + 1.0 + 0.64) / 3)
    assert clip_fraction.item() == pytest.approx(2 / 3)
    assert kl.item() == pytest.approx(np.mean([(r - 1) - math.log(r) for r in (2.0, 0.9, 0.5)]), rel=1e-5)
    _, unclipped, _, _ = ppo_losses(new, old, adv, new_v, old_v, ret, 0.2, clip_vloss=False)
    assert unclipped.item() == pytest.approx(0.5 * 2 / 3)


def test_finished_mask_keeps_whole_episodes_only():
    dones = torch.tensor([[False, False], [True, False], [False, False]])
    assert finished_mask(dones).tolist() == [[True, False], [True, False], [False, False]]


def test_categorical_head_matches_torch_distributions():
    head = CategoricalHead(3, gym.spaces.Discrete(4))
    logits = torch.randn(5, 4)
    dist = torch.distributions.Categorical(logits=logits)
    actions = torch.tensor([0, 1, 2, 3, 1])
    assert torch.allclose(head.log_prob(logits, actions), dist.log_prob(actions))
    assert torch.allclose(head.entropy(logits), dist.entropy())
    rngs = [np.random.default_rng(i) for i in range(20000)]
    samples = head.sample(logits[:1].expand(20000, 4), torch.from_numpy(head.noise(rngs)))
    freq = np.bincount(samples.numpy(), minlength=4) / 20000
    assert np.allclose(freq, dist.probs[0].numpy(), atol=0.02)


def test_gaussian_head_matches_torch_distributions_and_clips_for_the_env():
    space = gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)
    head = GaussianHead(3, space, log_std_init=-0.5)
    mean = torch.randn(4, 2)
    dist = torch.distributions.Normal(mean, torch.full((2,), math.exp(-0.5)))
    actions = torch.randn(4, 2) * 3
    assert torch.allclose(head.log_prob(mean, actions), dist.log_prob(actions).sum(-1), atol=1e-6)
    assert torch.allclose(head.entropy(mean), dist.entropy().sum(-1))
    env_actions = head.to_env(actions)
    assert env_actions.shape == (4, 2) and np.abs(env_actions).max() <= 2.0
    assert np.allclose(env_actions, np.clip(actions.numpy(), -2, 2))


def test_rollout_storage_round_trip_keeps_the_filled_rows():
    s = RolloutStorage(4, 2, {"obs": ((3,), torch.uint8)}, torch.device("cpu"))
    for t in range(3):
        s.add(obs=torch.full((2, 3), t, dtype=torch.uint8), values=torch.tensor([t, -t]), rewards=torch.ones(2),
              dones=torch.tensor([False, t == 1]), bootstrap=torch.zeros(2))
    restored = RolloutStorage(4, 2, {"obs": ((3,), torch.uint8)}, torch.device("cpu"))
    restored.load_state_dict(s.state_dict())
    assert restored.size == 3 and not restored.full
    for name in ("obs", "values", "dones"):
        assert torch.equal(restored[name], s[name])
    restored.add(obs=torch.zeros(2, 3, dtype=torch.uint8), values=torch.zeros(2), rewards=torch.zeros(2),
                 dones=torch.tensor([False, False]), bootstrap=torch.zeros(2))
    assert restored.full
    with pytest.raises(RuntimeError):
        restored.add(values=torch.zeros(2))


@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,), np.float32)])
def test_an_envs_actions_do_not_depend_on_which_envs_share_its_batch(action_space):
    """A distributed actor holding envs 2-3 of a run samples them as the agent holding envs 0-3 does."""
    from gbmr.agents.ppo import PPOAgent, PPOConfig

    obs_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    def agent(num_envs):
        torch.manual_seed(0)
        return PPOAgent(PPOConfig(), obs_space, action_space, num_envs, torch.device("cpu"), seed=5,
                        total_steps=1000)

    whole, part = agent(4), agent(2)
    part.assign_envs(np.array([2, 3]))
    obs = np.random.default_rng(0).uniform(-1, 1, (6, 4, 4)).astype(np.float32)
    for t in range(6):
        np.testing.assert_array_equal(whole.act(obs[t])[2:], part.act(obs[t, 2:]))
    other = agent(2)  # envs 0-1's streams: different draws (the test would pass vacuously otherwise)
    assert any(not np.array_equal(whole.act(obs[t])[2:], other.act(obs[t, 2:])) for t in range(6))


def test_batch_checks_dims_and_flattens_time_major():
    from gbmr.core.batch import Batch

    batch = Batch({"obs": torch.arange(12.0).view(3, 2, 2), "rewards": torch.zeros(3, 2)})
    assert (batch.steps, batch.num_envs) == (3, 2)
    assert batch.flat("obs")[1].tolist() == [2.0, 3.0]  # t=0, env 1
    with pytest.raises(ValueError, match="leading dims"):
        Batch({"obs": torch.zeros(3, 2), "rewards": torch.zeros(4, 2)})


def test_sequence_storage_carries_the_last_steps_into_the_next_context():
    from gbmr.memory.rollout import SequenceStorage

    s = SequenceStorage(3, 1, {"obs": ((), torch.float32), "starts": ((), torch.bool)}, torch.device("cpu"),
                        context=2)
    for t in range(3):
        s.add(obs=torch.tensor([float(t)]), starts=torch.tensor([t == 1]), values=torch.zeros(1),
              rewards=torch.zeros(1), dones=torch.tensor([False]), bootstrap=torch.zeros(1))
    assert s.batch().context["obs"][:, 0].tolist() == [0.0, 0.0]
    s.clear()
    context = s.batch().context
    assert context["obs"][:, 0].tolist() == [1.0, 2.0] and context["starts"][:, 0].tolist() == [True, False]
