"""SAC (discrete and continuous), TD3 and DDPG on image observations: the CNN encoder, what trains it, the
critic targets through the target encoder on hand-made batches, and Mario smoke runs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from run_helpers import (
    assert_press_duration_eval_logs,
    assert_resume_equals_uninterrupted,
    needs_mario,
    read_rows,
)

from gbmr.agents.sac import SACAgent, SACConfig
from gbmr.agents.td3 import TD3Agent, TD3Config
from gbmr.cli import main
from gbmr.core.run_dir import RunDir

FRAMES = gym.spaces.Box(0, 255, (2, 36, 36), np.uint8)  # the smallest frames the Nature CNN takes
DISCRETE = gym.spaces.Discrete(3)
BOX = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
CPU = torch.device("cpu")


def make(cls, config, action_space, num_envs=2):
    return cls(config, FRAMES, action_space, num_envs=num_envs, device=CPU, seed=0, total_steps=1000)


def frames(n, seed):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, *FRAMES.shape), dtype=np.uint8))


def image_batch(n=4, discrete=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    actions = torch.tensor([0, 2, 1, 2])[:n] if discrete else torch.rand(n, 2, generator=g) * 2 - 1
    discounts = torch.tensor([0.9, 0.0, 0.9, 0.9])[:n]
    return frames(n, seed), actions, torch.randn(n, generator=g), frames(n, seed + 1), discounts


def member(critic, j, x):
    """Critic j of the ensemble as a plain MLP."""
    for i, (w, b) in enumerate(zip(critic.weights, critic.biases, strict=True)):
        x = x @ w[j] + b[j, 0]
        if i < len(critic.weights) - 1:
            x = torch.relu(x)
    return x


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def moved(before, module):
    return any(not torch.equal(a, p) for a, p in zip(before, module.parameters(), strict=True))


def test_discrete_sac_on_frames_shapes_and_acting():
    agent = make(SACAgent, SACConfig(hidden=(), features=32, learning_starts=0), DISCRETE)
    learner = agent.learner
    features = learner.encode(frames(5, 0))
    assert learner.encoder is not None and features.shape == (5, 32)
    assert learner.critic(features).shape == (2, 5, 3) and learner.actor(features).shape == (5, 3)
    actions = agent.act(frames(2, 1).numpy())
    assert actions.shape == (2,) and set(actions.tolist()) <= {0, 1, 2}
    assert set(agent.policy_weights()) >= {"encoder.1.weight", "actor.out.weight"}  # distributed actors get both


@pytest.mark.parametrize(("cls", "action_space"), [(SACAgent, DISCRETE), (SACAgent, BOX), (TD3Agent, BOX)])
def test_the_policy_alone_acts_as_the_agent_with_the_encoder_in_its_weights(cls, action_space):
    """A remote actor's Policy (make_policy) given the agent's weights acts as the agent on frames: the CNN
    travels in the weights (without it the fresh encoder's features differ)."""
    config = (SACConfig if cls is SACAgent else TD3Config)(hidden=(8,), features=16, learning_starts=0)
    agent = make(cls, config, action_space)
    policy = cls.make_policy(config, FRAMES, action_space, CPU, 0, 1000)
    policy.assign_envs(np.arange(2))
    obs = frames(2, 7)
    assert not torch.equal(policy.encoder(obs), agent.policy.encoder(obs))
    policy.load_weights(agent.policy_weights())
    assert torch.equal(policy.encoder(obs), agent.policy.encoder(obs))
    state = policy.initial_state(2)
    for explore in (True, True, False):
        actions, state, _ = policy.act(obs, state, explore)
        assert np.array_equal(actions.numpy(), agent.act(obs.numpy(), explore))


def test_discrete_sac_critic_target_through_the_target_encoder_by_hand():
    agent = make(SACAgent, SACConfig(hidden=(), features=16, learning_starts=0), DISCRETE)
    learner = agent.learner
    obs, actions, returns, next_obs, discounts = image_batch()
    with torch.no_grad():
        learner.encoder_target[1].bias.add_(0.5)  # target encoder != online encoder: the target must use the former
        next_q = torch.minimum(member(learner.critic_target, 0, learner.encoder_target(next_obs)),
                               member(learner.critic_target, 1, learner.encoder_target(next_obs)))
        probs = torch.softmax(learner.actor(learner.encoder(next_obs)), -1)  # the online actor at s'
        y = returns + discounts * (probs * (next_q - 1.0 * probs.log())).sum(-1)  # alpha starts at 1
        f = learner.encoder(obs)
        q = [member(learner.critic, j, f)[torch.arange(4), actions] for j in (0, 1)]
        expected = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
    metrics, _ = learner._critic_step(obs, actions, returns, next_obs, discounts)
    assert metrics["qf_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("cls", [SACAgent, TD3Agent])
def test_updates_train_the_encoder_by_the_critic_loss_only(cls):
    config = (SACConfig if cls is SACAgent else TD3Config)(hidden=(8,), features=16, learning_starts=0,
                                                           policy_frequency=1)
    agent = make(cls, config, DISCRETE if cls is SACAgent else BOX)
    learner = agent.learner
    encoder, actor, target = snapshot(learner.encoder), snapshot(learner.actor), snapshot(learner.encoder_target)
    learner._actor_step(learner.encode(frames(4, 3)).detach())
    assert moved(actor, learner.actor) and not moved(encoder, learner.encoder)  # the actor's loss stops at features
    for t in range(3):
        learner.gradient_step(*image_batch(discrete=cls is SACAgent, seed=t))
        learner.updates += 1
    assert moved(encoder, learner.encoder) and moved(target, learner.encoder_target)  # Polyak follows the encoder
    assert all(torch.isfinite(p).all() for p in learner.encoder.parameters())


def test_td3_on_frames_target_by_hand_and_actions_in_bounds():
    agent = make(TD3Agent, TD3Config(hidden=(8,), features=16, learning_starts=0, policy_frequency=1000), BOX)
    learner = agent.learner
    assert learner.critic.weights[0].shape == (2, 16 + 2, 8)  # the action joins after the CNN
    obs, actions, returns, next_obs, discounts = image_batch(discrete=False)
    state = learner.generator.get_state()
    noise = torch.randn(4, 2, generator=learner.generator)
    learner.generator.set_state(state)
    with torch.no_grad():
        learner.encoder_target[1].bias.add_(0.5)
        next_f = learner.encoder_target(next_obs)
        next_u = (learner.actor_target(next_f) + (0.2 * noise).clamp(-0.5, 0.5)).clamp(-1, 1)
        x = torch.cat((next_f, next_u), 1)
        y = returns + discounts * torch.minimum(member(learner.critic_target, 0, x), member(learner.critic_target, 1, x)
                                                ).squeeze(-1)
        xa = torch.cat((learner.encoder(obs), actions), 1)
        expected = sum(((member(learner.critic, j, xa).squeeze(-1) - y) ** 2).mean() for j in (0, 1))
    learner.updates = 1  # not an actor step
    assert learner.gradient_step(obs, actions, returns, next_obs, discounts)["qf_loss"].item() == pytest.approx(
        expected.item(), rel=1e-5)
    acted = agent.act(frames(2, 5).numpy())
    assert acted.shape == (2, 2) and np.all(np.abs(acted) <= 1.0)


@needs_mario
@pytest.mark.slow
@pytest.mark.parametrize(("algo", "preset", "steps", "video"), [
    ("sac", "mario", 300, False), ("sac", "mario-press", 200, True), ("td3", "mario-press", 200, False),
    ("ddpg", "mario-press", 200, False),
])
def test_mario_smoke_run_writes_a_complete_run_folder(tmp_path, algo, preset, steps, video, one_thread):
    """Each algorithm's Mario preset at a tiny budget: a complete run folder, updates with a finite loss, the
    press-duration logs; one run's greedy episode recorded by ``gbmr eval --video``."""
    run = tmp_path / "run"
    assert main(["train", "--algo", algo, "--env", "SuperMarioBros-1-1-v0", "--preset", preset,
                 "--total-steps", str(steps), "--no-progress", "--run-dir", str(run),
                 "--set", "learning_starts=100", "--set", "buffer_size=500", "--set", "batch_size=8",
                 "--set", f"eval_every={steps}", "--set", "eval_episodes=1", "--set", "eval_max_steps=50",
                 "--set", "env_options.max_episode_steps=100"]) == 0
    for name in ("config.yaml", "metrics.csv", "eval.csv", "learner.csv", "status.json", "checkpoints/latest.pt"):
        assert (run / name).exists(), name
    header, *rows = read_rows(run / "learner.csv")
    last = dict(zip(header, rows[-1], strict=True))
    assert int(last["updates"]) > 0 and np.isfinite(float(last["qf_loss"]))
    eval_header = read_rows(run / "eval.csv")[0]
    if preset == "mario-press":
        assert_press_duration_eval_logs(run)
    else:
        assert not [n for n in eval_header if n.startswith("held_")]
        assert len([n for n in eval_header if n.startswith("action_")]) == 7  # the simple set's shares
    if video:
        assert main(["eval", str(run), "--episodes", "1", "--video"]) == 0
        assert list((run / "videos").glob("*.mp4"))


@needs_mario
@pytest.mark.slow
def test_sac_on_mario_resumes_exactly_after_kills(tmp_path, one_thread):
    """Discrete SAC (mario preset) killed twice and resumed writes the logs and weights of the uninterrupted run.
    Learning starts at step 20 and the first kill waits for the first checkpoint (step 40), so the killed run
    has updated its nets; 60-decision episodes are cut mid-way (the collector's replay), the 200-slot replay
    wraps, the target copies every 10 updates."""
    args = ["--algo", "sac", "--env", "SuperMarioBros-1-1-v0", "--preset", "mario", "--seed", "3",
            "--total-steps", "240", "--no-progress", "--set", "learning_starts=20", "--set", "buffer_size=200",
            "--set", "batch_size=8", "--set", "checkpoint_every=40", "--set", "target_network_frequency=10",
            "--set", "eval_every=120", "--set", "eval_episodes=1", "--set", "eval_max_steps=30",
            "--set", "env_options.max_episode_steps=60"]
    reference, run = assert_resume_equals_uninterrupted(args, tmp_path, 240)
    ours, theirs = RunDir(run).load_checkpoint()["agent"], RunDir(reference).load_checkpoint()["agent"]
    for part in ("actor", "encoder", "critic_target"):
        for key, value in theirs["learner"][part].items():
            assert torch.equal(ours["learner"][part][key], value), (part, key)
