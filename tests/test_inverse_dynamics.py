"""The inverse-dynamics encoder: its keys measure what the actions change and ignore what changes by itself;
ez data holds actions; the file loads with weights_only=True, keys the agents, and bad input is a clear error."""

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

from gbmr.agents.gq import GQAgent, GQConfig
from gbmr.cli import main
from gbmr.core.errors import GbmrError
from gbmr.experiment.pretraining import EZ_MAX_HOLD, Pretraining, Transitions, collect, ez_holds, train_inverse
from gbmr.nets.encoders import make_encoder
from gbmr.nets.inverse_dynamics import InverseDynamics
from gbmr.nets.pretrained import load_pretrained, save_pretrained
from gbmr.nets.vae import VAE

PLANES = gym.spaces.Box(0, 1, shape=(2, 10, 10), dtype=np.uint8)  # MinAtar-like


def dot_world(steps: int, seed: int) -> tuple[Transitions, np.ndarray]:
    """Plane 0: the agent, a dot in column 4 whose row the action moves (0 stays, 1 up, 2 down, clipped);
    plane 1: five distractor dots drawn afresh every step, far more pixels than the agent (Freeway's cars).
    Returns the transitions and the agent's row in each observation."""
    rng = np.random.default_rng(seed)
    rows = np.zeros(steps + 1, dtype=np.int64)
    rows[0] = 5
    actions = rng.integers(3, size=steps)
    for t, a in enumerate(actions):
        rows[t + 1] = np.clip(rows[t] + (0, -1, 1)[a], 0, 9)
    obs = np.zeros((steps + 1, *PLANES.shape), dtype=np.uint8)
    obs[np.arange(steps + 1), 0, rows, 4] = 1
    distractors = rng.integers(100, size=(steps + 1, 5))
    obs[np.arange(steps + 1)[:, None], 1, distractors // 10, distractors % 10] = 1
    return Transitions(obs, actions, np.ones(steps, dtype=bool), np.zeros(steps, dtype=np.float32)), rows


def same_row_fraction(keys: np.ndarray, rows: np.ndarray, k: int = 5) -> float:
    """Of each key's k nearest other keys, the fraction whose agent is in the same row."""
    d = ((keys[:, None] - keys[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    return float((rows[nearest] == rows[:, None]).mean())


def test_inverse_keys_measure_what_the_agent_controls(one_thread):
    data, _ = dot_world(3000, seed=0)
    cfg = Pretraining(env="-", kind="inverse", seed=0, latent_dim=8, hidden=(32,), epochs=8, batch_size=64)
    torch.manual_seed(0)
    model = InverseDynamics(PLANES, 3, 8, (32,))
    history = train_inverse(model, data, cfg)
    # clipped moves at rows 0 and 9 cannot be told from staying, so 1.0 is out of reach
    assert history[0]["accuracy"] < 0.5 and history[-1]["accuracy"] > 0.85, history  # measured: 0.35 -> 0.95
    test, rows = dot_world(400, seed=1)
    with torch.no_grad():
        inverse = model.embed(torch.from_numpy(test.obs)).numpy()
        projection = make_encoder("random_projection", PLANES, dim=8, seed=0)(torch.from_numpy(test.obs)).numpy()
    # the distractors (5 pixels against the agent's 1) decide a random projection's neighbours, not the agent
    assert same_row_fraction(inverse, rows) > 0.9  # measured: 1.00
    assert same_row_fraction(projection, rows) < 0.4  # measured: 0.22 (chance ~0.1)


def test_ez_holds_follow_a_capped_zeta_distribution():
    holds = ez_holds(np.random.default_rng(0), 100_000)
    assert holds.min() == 1 and holds.max() == EZ_MAX_HOLD
    assert abs((holds == 1).mean() - 6 / np.pi ** 2) < 0.01  # P(n = 1) = 1 / zeta(2)
    assert abs((holds == 2).mean() - 6 / np.pi ** 2 / 4) < 0.01


def mean_run_length(actions: np.ndarray, continues: np.ndarray) -> float:
    """Mean length of runs of one repeated action, a run also ending where an episode ends."""
    breaks = (actions[1:] != actions[:-1]) | ~continues[:-1]
    return len(actions) / (1 + breaks.sum())


def test_collect_marks_episode_ends_and_ez_holds_its_actions():
    env = gym.make("CartPole-v1")
    random = collect(env, 3000, seed=1, gamma=0.9, policy="random")
    ez = collect(env, 3000, seed=1, gamma=0.9, policy="ez")
    for data in (random, ez):
        assert data.obs.shape == (3001, 4) and data.actions.shape == data.continues.shape == (3000,)
        ends = np.flatnonzero(~data.continues)
        assert ends.size > 5
        np.testing.assert_allclose(data.returns[ends], 1.0)  # the last step of an episode returns its reward
        np.testing.assert_allclose(data.returns[ends - 1], 1.9)  # and the one before r + gamma r
        # a step that continues its episode is followed by its next observation: CartPole's x moves by tau x_dot
        t = np.flatnonzero(data.continues)[:50]
        np.testing.assert_allclose(data.obs[t + 1, 0], data.obs[t, 0] + 0.02 * data.obs[t, 1], rtol=1e-5, atol=1e-6)
    assert mean_run_length(random.actions, random.continues) < 2.2  # two actions: 2 on average (1.94)
    assert mean_run_length(ez.actions, ez.continues) > 3  # measured 4.0: holds of 3.15 on average, merged


def test_saved_inverse_loads_with_weights_only_and_keys_the_agents(tmp_path):
    torch.manual_seed(0)
    model = InverseDynamics(PLANES, 3, latent_dim=6, hidden=(16,)).eval()
    path = tmp_path / "inverse.pt"
    save_pretrained(model, PLANES, path, env="test")
    data = torch.load(path, weights_only=True)
    assert data["format"] == "gbmr-inverse/1" and data["num_actions"] == 3 and data["info"]["env"] == "test"
    encoder = make_encoder("inverse", PLANES, dim=64, encoder_path=str(path))
    obs = torch.as_tensor(PLANES.sample()[None])
    assert encoder.dim == 6 and not any(p.requires_grad for p in encoder.parameters())
    torch.testing.assert_close(encoder(obs), model.embed(obs))
    agent = GQAgent(GQConfig(encoder="inverse", encoder_path=str(path), capacity=8), PLANES,
                    gym.spaces.Discrete(3), 1, torch.device("cpu"), 0, 100)
    assert agent.encoder.dim == 6 and agent.learner is None  # frozen: nothing to train
    with pytest.raises(GbmrError, match="holds a 'inverse' encoder, not 'vae'; use encoder=inverse"):
        make_encoder("vae", PLANES, encoder_path=str(path))
    save_pretrained(VAE(PLANES, latent_dim=4, hidden=(8,)), PLANES, tmp_path / "vae.pt")
    with pytest.raises(GbmrError, match="holds a 'vae' encoder, not 'inverse'; use encoder=vae"):
        load_pretrained(tmp_path / "vae.pt", PLANES, "inverse")
    with pytest.raises(GbmrError, match="was trained on observations"):
        load_pretrained(path, gym.spaces.Box(0, 1, shape=(3, 10, 10), dtype=np.uint8), "inverse")


def test_pretrain_inverse_then_train_gbmr_sweep(tmp_path, capsys):
    encoder = tmp_path / "inverse.pt"
    assert main(["pretrain-inverse", "--env", "CartPole-v1", "--steps", "600", "--epochs", "2", "--hidden", "16",
                 "--out", str(encoder)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "inverse encoder saved" in out
    saved = torch.load(encoder, weights_only=True)
    assert saved["info"]["policy"] == "ez" and saved["latent_dim"] == 16
    run = tmp_path / "run"
    assert main(["train", "--algo", "gbmr-sweep", "--env", "CartPole-v1", "--total-steps", "600", "--no-progress",
                 "--run-dir", str(run), "--set", "encoder=inverse", "--set", f"encoder_path={encoder}",
                 "--set", "k=5", "--set", "dist_th=0.01", "--set", "eval_every=0", "--set", "eval_episodes=1"]) == 0
    assert pd.read_csv(run / "metrics.csv")["nodes"].iloc[-1] > 5
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    torch.testing.assert_close(checkpoint["agent"]["encoder"]["head.weight"], saved["state_dict"]["head.weight"])


@pytest.mark.parametrize(("argv", "message"), [
    (["pretrain-inverse", "--env", "CartPole-v1", "--out", "X.pt", "--policy", "walk"],
     "unknown data policy 'walk'. Valid choices: ez, random"),
    (["pretrain-inverse", "--env", "MountainCarContinuous-v0", "--out", "X.pt", "--steps", "10"],
     "classifies discrete actions"),
    (["pretrain-inverse", "--env", "CartPole-v1", "--out", "X.pt", "--latent-dim", "0"],
     "latent_dim must be at least 1"),
    (["train", "--algo", "gq", "--env", "CartPole-v1", "--set", "encoder=inverse"], "needs encoder_path"),
])
def test_bad_inverse_input_exits_2(tmp_path, capsys, argv, message):
    argv = [a.replace("X.pt", str(tmp_path / "x.pt")) for a in argv]
    assert main([*argv, "--run-dir", str(tmp_path / "run")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_inverse_keys_let_gbmr_sweep_learn_freeway(tmp_path):
    """MinAtar Freeway in 10k steps (4 episodes): keyed by the inverse encoder (20k steps of ez data), gbmr-sweep
    crosses the road many times per greedy episode; keyed by the random projection it barely leaves the bottom
    (measured, seed 1, 5 episodes: 14.0 vs 0.6, per episode 0-30 by the car speeds; at 450k steps ~20 vs 1.5)."""
    encoder = tmp_path / "inverse.pt"
    assert main(["pretrain-inverse", "--env", "MinAtar/Freeway-v1", "--steps", "20000", "--seed", "1",
                 "--out", str(encoder)]) == 0
    finals = {}
    for name, keys in (("inverse", ["--preset", "minatar-inverse", "--set", f"encoder_path={encoder}"]),
                       ("random", ["--preset", "minatar"])):
        run = tmp_path / name
        assert main(["train", "--algo", "gbmr-sweep", "--env", "MinAtar/Freeway-v1", "--seed", "1", "--total-steps",
                     "10000", "--no-progress", "--run-dir", str(run), *keys, "--set", "eval_every=10000",
                     "--set", "checkpoint_every=10000", "--set", "eval_episodes=5"]) == 0
        finals[name] = pd.read_csv(run / "eval.csv")["mean_return"].iloc[-1]
    assert finals["inverse"] >= 8 and finals["random"] <= 3, finals
