"""SAC, TD3 and DDPG: targets, temperature loss, smoothing and delays on hand-made batches; action scaling;
the spaces they refuse; exact resume; distributed sync; learning on Pendulum (slow)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from run_helpers import assert_resume_equals_uninterrupted, read_rows

from gbmr.agents.ddpg import DDPGAgent, DDPGConfig
from gbmr.agents.off_policy_ac import EXPLORE_STREAM
from gbmr.agents.sac import SACAgent, SACConfig, SACPolicy, discrete_soft_q_target, soft_q_target, temperature_loss
from gbmr.agents.td3 import DeterministicPolicy, TD3Agent, TD3Config, clipped_double_q_target, smoothed_target_actions
from gbmr.cli import main
from gbmr.config import RunConfig
from gbmr.core.errors import GbmrError
from gbmr.core.run_dir import RunDir
from gbmr.core.seeding import derive_seed
from gbmr.nets.action_scaling import BoxScaling
from gbmr.nets.continuous import CriticEnsemble, squashed_sample
from gbmr.nets.policies import GaussianHead
from gbmr.runners.distributed import RolloutActor

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
CPU = torch.device("cpu")


def make(cls, config, action_space=ACT, num_envs=1, seed=0):
    return cls(config, OBS, action_space, num_envs=num_envs, device=CPU, seed=seed, total_steps=1000)


def batch(n=5, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g) * 2 - 1, torch.rand(n, dim, generator=g) * 2 - 1,
            torch.randn(n, generator=g), torch.rand(n, 3, generator=g) * 2 - 1,
            torch.tensor([0.99, 0.0, 0.99, 0.99, 0.0])[:n])


def member(critic: CriticEnsemble, j: int, x: torch.Tensor) -> torch.Tensor:
    """Critic j alone, as a plain MLP: x @ W + b, ReLU between layers."""
    for i, (w, b) in enumerate(zip(critic.weights, critic.biases, strict=True)):
        x = x @ w[j] + b[j, 0]
        if i < len(critic.weights) - 1:
            x = torch.relu(x)
    return x.squeeze(-1)


# ---------------------------------------------------------------------------------------------- targets by hand
def test_soft_q_target_by_hand():
    returns, discounts = torch.tensor([1.0, 0.5]), torch.tensor([0.99, 0.0])
    next_q = torch.tensor([[2.0, 3.0], [1.0, 5.0]])  # [critic, batch]
    y = soft_q_target(returns, discounts, next_q, torch.tensor([-1.0, 0.5]), torch.tensor(0.2))
    # 1 + 0.99 * (min(2, 1) - 0.2 * -1) = 2.188; a terminal step keeps its reward only
    assert torch.allclose(y, torch.tensor([2.188, 0.5]))


def test_discrete_soft_q_target_by_hand():
    next_q = torch.tensor([[[1.0, 4.0]], [[2.0, 3.0]]])  # [2 critics, 1, 2 actions]: min = [1, 3]
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    y = discrete_soft_q_target(torch.tensor([1.0]), torch.tensor([0.9]), next_q, logits, torch.tensor(0.5))
    v = 0.25 * (1 - 0.5 * math.log(0.25)) + 0.75 * (3 - 0.5 * math.log(0.75))
    assert y.item() == pytest.approx(1 + 0.9 * v, rel=1e-6)


def test_temperature_loss_by_hand_and_its_direction():
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    loss = temperature_loss(log_alpha, torch.tensor([-0.5, 0.3]), target_entropy=-1.0)
    assert loss.item() == pytest.approx(-0.5 * ((-0.5 - 1) + (0.3 - 1)) / 2)  # 0.55
    loss.backward()
    assert log_alpha.grad.item() > 0  # entropy 0.1 above the target -1: descent lowers alpha
    probs = torch.tensor([[0.2, 0.8]])
    discrete = temperature_loss(torch.tensor(0.0), torch.log(probs), target_entropy=1.0, probs=probs)
    assert discrete.item() == pytest.approx(-(0.2 * (math.log(0.2) + 1) + 0.8 * (math.log(0.8) + 1)), rel=1e-5)


def test_squashed_log_prob_is_the_change_of_variables():
    mean, log_std, noise = torch.tensor([[0.3, -2.0]]), torch.tensor([[-0.5, 0.1]]), torch.tensor([[1.2, -0.7]])
    u, log_pi = squashed_sample(mean, log_std, noise)
    x = mean + log_std.exp() * noise
    normal = torch.distributions.Normal(mean, log_std.exp()).log_prob(x)
    assert torch.allclose(u, torch.tanh(x))
    assert torch.allclose(log_pi, (normal - torch.log(1 - torch.tanh(x) ** 2)).sum(-1), atol=1e-5)


def test_sac_critic_step_regresses_each_critic_on_the_soft_target():
    agent = make(SACAgent, SACConfig(hidden=(8,), learning_starts=0))
    learner = agent.learner
    obs, actions, returns, next_obs, discounts = batch()
    state = learner.generator.get_state()
    noise = torch.randn(5, 2, generator=learner.generator)
    learner.generator.set_state(state)
    with torch.no_grad():  # the target by plain formulas: each target critic separately, then the min
        next_u, next_log_pi = learner.actor.sample(next_obs, noise)
        x = torch.cat((next_obs, next_u), 1)
        q1, q2 = member(learner.critic_target, 0, x), member(learner.critic_target, 1, x)
        y = returns + discounts * (torch.minimum(q1, q2) - 1.0 * next_log_pi)  # alpha starts at 1
        xa = torch.cat((obs, actions), 1)
        expected = ((member(learner.critic, 0, xa) - y) ** 2).mean() + ((member(learner.critic, 1, xa) - y) ** 2).mean()
    metrics = learner._critic_step(obs, actions, returns, next_obs, discounts)[0]
    assert metrics["qf_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_td3_target_smoothing_clip_and_target_by_hand():
    target_actions = torch.tensor([[0.9, -0.5]])
    smoothed = smoothed_target_actions(target_actions, torch.tensor([[3.0, -0.1]]), policy_noise=0.2, noise_clip=0.5)
    assert torch.allclose(smoothed, torch.tensor([[1.0, -0.52]]))  # 0.6 clipped to 0.5, then the action to 1
    y = clipped_double_q_target(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0]),
                                torch.tensor([[4.0, 7.0], [3.0, 9.0]]))
    assert torch.allclose(y, torch.tensor([2.5, 2.0]))


def test_td3_critic_loss_uses_smoothed_target_actions():
    agent = make(TD3Agent, TD3Config(hidden=(8,), learning_starts=0, policy_frequency=1000))
    learner = agent.learner
    obs, actions, returns, next_obs, discounts = batch()
    state = learner.generator.get_state()
    noise = torch.randn(5, 2, generator=learner.generator)
    learner.generator.set_state(state)
    with torch.no_grad():
        next_u = (learner.actor_target(next_obs) + (0.2 * noise).clamp(-0.5, 0.5)).clamp(-1, 1)
        x = torch.cat((next_obs, next_u), 1)
        target = learner.critic_target
        y = returns + discounts * torch.minimum(member(target, 0, x), member(target, 1, x))
        xa = torch.cat((obs, actions), 1)
        expected = ((member(learner.critic, 0, xa) - y) ** 2).mean() + ((member(learner.critic, 1, xa) - y) ** 2).mean()
    learner.updates = 1  # not an actor step
    metrics = learner.gradient_step(obs, actions, returns, next_obs, discounts)
    assert metrics["qf_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(("cls", "config"), [(TD3Agent, TD3Config), (DDPGAgent, DDPGConfig)])
def test_actor_and_targets_move_every_policy_frequency_critic_updates(cls, config):
    agent = make(cls, config(hidden=(8,), learning_starts=0, policy_frequency=3))
    learner = agent.learner
    for t in range(7):
        actor_before = [p.clone() for p in learner.actor.parameters()]
        target_before = [p.clone() for p in learner.critic_target.parameters()]
        learner.gradient_step(*batch(seed=t))
        learner.updates += 1
        actor_moved = any(not torch.equal(a, p) for a, p in zip(actor_before, learner.actor.parameters(), strict=True))
        target_moved = any(not torch.equal(a, p) for a, p in
                           zip(target_before, learner.critic_target.parameters(), strict=True))
        assert actor_moved == target_moved == (t % 3 == 0), t
    assert learner.actor_updates == 3  # updates 0, 3 and 6


def test_ddpg_has_one_critic_and_no_smoothing():
    agent = make(DDPGAgent, DDPGConfig(hidden=(8,), learning_starts=0))
    learner = agent.learner
    assert learner.critic.n == 1
    state = learner.generator.get_state()
    learner.gradient_step(*batch())
    assert torch.equal(learner.generator.get_state(), state)  # no smoothing noise drawn


# ---------------------------------------------------------------------------------------------- action scaling
def test_action_scaling_round_trip():
    scaling = BoxScaling(ACT)
    unit = np.array([[-1.0, 1.0], [0.0, 0.0], [0.5, -0.5]], np.float32)
    env = scaling.to_env(unit)
    assert np.allclose(env, [[-2.0, 10.0], [0.0, 5.0], [1.0, 2.5]])
    assert np.allclose(scaling.from_env(env), unit)
    assert np.allclose(scaling.from_env(np.array([[5.0, -1.0]])), [[1.0, -1.0]])  # outside the bounds: clipped
    square = BoxScaling(gym.spaces.Box(-1.0, 3.0, (2, 2), np.float32))
    assert square.to_env(np.zeros((1, 4), np.float32)).shape == (1, 2, 2)


def test_agents_act_within_the_bounds_and_store_normalised_actions():
    for cls, config in ((SACAgent, SACConfig), (TD3Agent, TD3Config)):
        agent = make(cls, config(hidden=(8,), learning_starts=2), num_envs=2)
        obs = np.zeros((2, 3), np.float32)
        for _ in range(4):  # two warm-up steps, then the policy
            actions = agent.act(obs)
            assert actions.shape == (2, 2) and np.all(actions >= ACT.low) and np.all(actions <= ACT.high)
            agent.observe(obs, actions, np.zeros(2), obs, np.zeros(2, bool), np.zeros(2, bool))
        stored = agent.buffer.actions[: agent.buffer.size]
        assert np.allclose(BoxScaling(ACT).to_env(stored).reshape(-1, 2)[-2:], actions, atol=1e-5)
        assert np.all(np.abs(stored) <= 1.0)


def test_ppo_gaussian_clips_to_the_same_bounds():
    head = GaussianHead(4, ACT)
    assert np.allclose(head.to_env(torch.tensor([[-9.0, 11.0], [1.0, 3.0]])), [[-2.0, 10.0], [1.0, 3.0]])


@pytest.mark.parametrize(("algo", "action_space", "message"), [
    ("td3", gym.spaces.Box(-np.inf, np.inf, (1,)), "finite bounds"),
    ("sac", gym.spaces.Box(-np.inf, np.inf, (1,)), "finite bounds"),
    ("ddpg", gym.spaces.Discrete(3), "Box action space"),
    ("td3", gym.spaces.MultiBinary(3), "Box action space"),
    ("sac", gym.spaces.MultiBinary(3), "Box or Discrete"),
])
def test_wrong_action_spaces_are_refused(algo, action_space, message):
    from gbmr.agents import agent_class

    with pytest.raises(GbmrError, match=message):
        agent_class(algo).check_spaces(OBS, action_space)
    with pytest.raises(GbmrError, match="Box observation"):
        agent_class(algo).check_spaces(gym.spaces.Discrete(4), ACT)


# ---------------------------------------------------------------------------------------------- the Policy
def test_ou_noise_is_per_env_policy_state_restarted_by_episode_ends():
    """Two OU steps by hand from each env's own stream, the actions mu(s) + x clipped; episode_ends zeroes the
    ended envs' processes only."""
    config = TD3Config(hidden=(8,), learning_starts=0, noise_type="ou", exploration_noise=0.3)
    policy = DeterministicPolicy(config, OBS, ACT, 2, CPU, 7)
    obs = np.array([[0.1, -0.2, 0.3], [0.5, 0.0, -0.5]], np.float32)
    state = policy.initial_state(2)
    assert torch.equal(state["ou"], torch.zeros(2, 2))
    streams = [np.random.default_rng(derive_seed(7, EXPLORE_STREAM, i)) for i in (0, 1)]
    scale = 0.3 * math.sqrt(0.01)
    x = np.zeros((2, 2))
    for _ in range(2):  # x <- x - theta x dt + sigma sqrt(dt) N(0, 1)
        x = x - 0.15 * x * 0.01 + scale * np.stack([r.standard_normal(2, dtype=np.float32) for r in streams])
        actions, state, extras = policy.act(torch.from_numpy(obs), state, explore=True)
        assert np.allclose(state["ou"].numpy(), x, atol=1e-6) and extras == {}
        mu = policy.actor(torch.from_numpy(obs)).detach().numpy()
        assert np.allclose(BoxScaling(ACT).from_env(actions.numpy()), np.clip(mu + x, -1, 1), atol=1e-5)
    state = policy.episode_ends(state, torch.tensor([False, True]))
    assert np.allclose(state["ou"][0].numpy(), x[0], atol=1e-6) and torch.equal(state["ou"][1], torch.zeros(2))
    greedy, _, _ = policy.act(torch.from_numpy(obs), state, explore=False)
    assert np.allclose(BoxScaling(ACT).from_env(greedy.numpy()), mu, atol=1e-5)  # greedy: mu(s), no noise


@pytest.mark.parametrize(("algo", "env_id", "options"), [
    ("sac", "Pendulum-v1", {}), ("sac", "CartPole-v1", {}), ("td3", "Pendulum-v1", {"noise_type": "ou"}),
])
def test_a_distributed_actor_acts_through_the_policy_alone_as_the_agent(algo, env_id, options):
    """An actor holding envs 2-3 of 4 builds only the Policy (no learner, no replay) and, given the learner's
    weights, takes the actions a whole agent takes on those envs' streams: warm-up draws, then the actor's with
    their noise (TD3's OU process restarted where Pendulum's 200-step episodes end). (The agent acts on 2 envs:
    a batch of 4 rounds the actor's matmuls differently in the last bit.)"""
    from gbmr.agents import agent_class

    cls = agent_class(algo)
    config = RunConfig(algo=algo, env=env_id, seed=4, total_steps=10_000, num_envs=4,
                       agent=cls.Config(hidden=(16,), learning_starts=100, **options))
    actor = RolloutActor(config.to_dict(), [2, 3], None)
    assert actor.agent is None and isinstance(actor.policy, SACPolicy if algo == "sac" else DeterministicPolicy)
    env = gym.make(env_id)
    agent = cls(config.agent, env.observation_space, env.action_space, 2, CPU, 4, 10_000)
    agent.policy.assign_envs(np.array([2, 3]))
    batch = actor.collect(agent.policy_weights(), 0, 210, start_step=0)["batch"]
    for t in range(210):
        agent.follow_schedule(4 * t)
        assert np.array_equal(agent.act(batch["obs"][t]), batch["actions"][t]), t
        dones = torch.from_numpy(batch["terminated"][t] | batch["truncated"][t])
        agent.acting_state = agent.policy.episode_ends(agent.acting_state, dones)
    assert agent.steps >= 100 and (algo != "td3" or batch["truncated"].any())  # the actor acted, episodes ended


def test_a_replacement_actor_goes_on_with_the_ou_state_it_was_given():
    """An actor's state carries its Policy's per-env OU processes: a replacement started from it acts on."""
    config = RunConfig(algo="ddpg", env="Pendulum-v1", seed=3, total_steps=1000, num_envs=1,
                       agent=DDPGConfig(hidden=(8,), learning_starts=0, noise_type="ou"))
    first = RolloutActor(config.to_dict(), [0], None)
    env = gym.make("Pendulum-v1")
    weights = DDPGAgent(config.agent, env.observation_space, env.action_space, 1, CPU, 3, 1000).policy_weights()
    state = first.collect(weights, 0, 30, start_step=0)["state"]
    assert state["acting_state"]["ou"].abs().sum() > 0
    replacement = RolloutActor(config.to_dict(), [0], state)
    ahead, again = first.collect(weights, 1, 20, 30)["batch"], replacement.collect(weights, 1, 20, 30)["batch"]
    assert np.array_equal(ahead["actions"], again["actions"])


# ---------------------------------------------------------------------------------------------- runs
SMALL_SAC = ["--algo", "sac", "--env", "Pendulum-v1", "--seed", "2", "--total-steps", "1200", "--no-progress",
             "--set", "learning_starts=300", "--set", "batch_size=16", "--set", "hidden=[16]",
             "--set", "eval_every=600", "--set", "eval_episodes=1", "--set", "checkpoint_every=200"]


def test_sac_resumes_exactly_after_kills(tmp_path, one_thread):
    reference, run = assert_resume_equals_uninterrupted(SMALL_SAC, tmp_path, 1200)
    ours, theirs = RunDir(run).load_checkpoint()["agent"], RunDir(reference).load_checkpoint()["agent"]
    for key, value in theirs["learner"]["actor"].items():
        assert torch.equal(ours["learner"]["actor"][key], value), key


def test_discrete_sac_runs_on_cartpole(tmp_path, one_thread):
    run = tmp_path / "run"
    assert main(["train", "--algo", "sac", "--env", "CartPole-v1", "--total-steps", "800", "--no-progress",
                 "--set", "learning_starts=200", "--set", "batch_size=16", "--set", "hidden=[16]",
                 "--set", "eval_every=800", "--set", "eval_episodes=1", "--run-dir", str(run)]) == 0
    header, *rows = read_rows(run / "learner.csv")
    values = dict(zip(header, rows[-1], strict=True))
    assert 0 < float(values["alpha"]) < 1 and 0 < float(values["entropy"]) <= math.log(2) + 1e-6


@pytest.mark.parametrize(("algo", "extra"), [("sac", []), ("td3", ["--set", "noise_type=ou"]),
                                           ("ddpg", ["--set", "noise_type=ou"])])
def test_other_continuous_envs_are_accepted(tmp_path, algo, extra, one_thread):
    for env_id in ("MountainCarContinuous-v0", "LunarLanderContinuous-v3"):
        run = tmp_path / env_id
        assert main(["train", "--algo", algo, "--env", env_id, "--total-steps", "300", "--no-progress",
                     "--set", "learning_starts=100", "--set", "batch_size=16", "--set", "hidden=[16]",
                     "--set", "eval_every=300", "--set", "eval_episodes=1", *extra, "--run-dir", str(run)]) == 0
        assert len(read_rows(run / "eval.csv")) == 2


def test_sac_runs_distributed_in_sync_mode(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--algo", "sac", "--env", "Pendulum-v1", "--total-steps", "600", "--num-envs", "2",
                 "--actors", "2", "--no-progress", "--set", "learning_starts=200", "--set", "actor_steps=50",
                 "--set", "batch_size=16", "--set", "hidden=[16]", "--set", "eval_every=600",
                 "--set", "eval_episodes=1", "--run-dir", str(run)]) == 0
    learner = read_rows(run / "learner.csv")
    assert len(learner) > 1 and RunDir(run).load_checkpoint()["runner"]["step"] == 600
    assert np.isfinite(float(learner[-1][2]))


# ---------------------------------------------------------------------------------------------- learning
def evaluations(run):
    return [float(row[1]) for row in read_rows(run / "eval.csv")[1:]]


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "steps"), [("sac", 5000), ("td3", 10000)])
def test_learns_pendulum(tmp_path, algo, steps, one_thread):
    """The classic preset reaches a greedy mean return >= -250 on Pendulum-v1 within 20k steps (seed 1): SAC by
    5k steps, TD3 by 10k (random policies score ~-1200)."""
    run = tmp_path / "run"
    assert main(["train", "--algo", algo, "--env", "Pendulum-v1", "--seed", "1", "--total-steps", str(steps),
                 "--no-progress", "--set", "eval_every=2500", "--run-dir", str(run)]) == 0
    assert evaluations(run)[-1] >= -250


@pytest.mark.slow
def test_ddpg_improves_on_pendulum(tmp_path, one_thread):
    run = tmp_path / "run"
    assert main(["train", "--algo", "ddpg", "--env", "Pendulum-v1", "--seed", "1", "--total-steps", "8000",
                 "--no-progress", "--set", "eval_every=2000", "--run-dir", str(run)]) == 0
    returns = evaluations(run)
    assert returns[-1] > returns[0] + 300


def test_polyak_update_by_hand():
    from gbmr.agents.optim import polyak_update

    target = [torch.tensor([1.0, 2.0]), torch.tensor([[-4.0]])]
    online = [torch.tensor([3.0, -2.0]), torch.tensor([[6.0]])]
    polyak_update(target, online, 0.005)
    # 0.995 * 1 + 0.005 * 3 = 1.01; 0.995 * 2 + 0.005 * -2 = 1.98; 0.995 * -4 + 0.005 * 6 = -3.95
    assert torch.allclose(target[0], torch.tensor([1.01, 1.98])) and torch.allclose(target[1], torch.tensor([[-3.95]]))
    assert torch.equal(online[0], torch.tensor([3.0, -2.0]))  # the online parameters are left alone
    polyak_update(target, online, 1.0)  # a hard copy, not an alias
    assert all(torch.equal(t, o) for t, o in zip(target, online, strict=True))
    online[0].add_(1.0)
    assert torch.equal(target[0], torch.tensor([3.0, -2.0]))


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("cls", [SACAgent, TD3Agent])
def test_an_update_moves_the_targets_by_polyak_averaging(cls):
    """After one update (an actor step too: policy_frequency 1), every target parameter is (1 - tau) old target +
    tau new online parameter. The targets start away from the online nets, so a skipped update fails."""
    config = (SACConfig if cls is SACAgent else TD3Config)(hidden=(8,), learning_starts=0, policy_frequency=1,
                                                           tau=0.25)
    learner = make(cls, config).learner
    pairs = [(learner.critic_target, learner.critic)]
    if cls is TD3Agent:
        pairs.append((learner.actor_target, learner.actor))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for target, _ in pairs:
            for p in target.parameters():
                p.add_(torch.randn(p.shape, generator=g))
    old = [params(target) for target, _ in pairs]
    learner.gradient_step(*batch())
    for (target, online), before in zip(pairs, old, strict=True):
        new_online = params(online)
        assert any(not torch.equal(a, b) for a, b in zip(before, params(target), strict=True))
        for a, b, p in zip(before, new_online, target.parameters(), strict=True):
            torch.testing.assert_close(p, 0.75 * a + 0.25 * b, rtol=0, atol=1e-6)


def test_adam_step_equals_optimizer_step():
    from gbmr.agents.optim import adam_step, make_adam

    torch.manual_seed(0)
    nets = [torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)]
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [make_adam(net.parameters(), 1e-2, CPU) for net in nets]
    for t in range(4):
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(t))
        for net, optimizer, step in zip(nets, optimizers, (lambda o: o.step(), adam_step), strict=True):
            optimizer.zero_grad()
            net(x).square().sum().backward()
            step(optimizer)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert optimizers[1].state[nets[1].weight]["step"].item() == 4


def test_mujoco_hopper_runs_when_installed(tmp_path, one_thread):
    pytest.importorskip("mujoco")
    run = tmp_path / "run"
    assert main(["train", "--algo", "sac", "--env", "Hopper-v5", "--total-steps", "200", "--no-progress",
                 "--set", "learning_starts=100", "--set", "batch_size=16", "--set", "hidden=[16]",
                 "--set", "eval_every=200", "--set", "eval_episodes=1", "--run-dir", str(run)]) == 0
    config = (run / "config.yaml").read_text()
    assert "preset: default" in config and "q_lr: 0.001" in config  # CleanRL's SAC settings for the gym family


def test_sac_temperature_step_follows_the_loss_gradient():
    """The agent sets d loss / d log alpha to the loss itself (exact: the loss is -alpha x a constant)."""
    agent = make(SACAgent, SACConfig(hidden=(8,), learning_starts=0))
    learner = agent.learner
    log_alpha = learner.temperature.log_alpha.detach().clone().requires_grad_(True)
    obs = batch()[0]
    state = learner.generator.get_state()
    with torch.no_grad():
        _, log_pi = learner.actor.sample(obs, torch.randn(5, 2, generator=learner.generator))
    learner.generator.set_state(state)
    temperature_loss(log_alpha, log_pi, learner.target_entropy).backward()
    reference = torch.optim.Adam([log_alpha], lr=agent.config.q_lr)
    reference.step()
    learner._actor_step(obs)
    assert learner.temperature.log_alpha.item() == pytest.approx(log_alpha.item(), abs=1e-7)
    assert learner.temperature.log_alpha.item() != 0.0
