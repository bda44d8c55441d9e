"""The VAE encoder (seed 001): the decoder mirrors every torso, training lowers the loss, the file loads with
weights_only=True and keys the memories, and every unusable file is a clear user error (exit 2)."""

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

from gbmr.agents.gq import GQAgent, GQConfig
from gbmr.agents.mfec import MFECAgent, MFECConfig
from gbmr.agents.nec import NECAgent, NECConfig
from gbmr.cli import main
from gbmr.core.errors import GbmrError
from gbmr.experiment.pretraining import Pretraining, train_vae
from gbmr.nets.encoders import make_encoder
from gbmr.nets.pretrained import load_pretrained, save_pretrained
from gbmr.nets.vae import VAE

PLANES = gym.spaces.Box(0, 1, shape=(2, 10, 10), dtype=np.uint8)  # MinAtar-like


@pytest.mark.parametrize("space", [
    PLANES,
    gym.spaces.Box(0, 255, shape=(4, 84, 84), dtype=np.uint8),  # Atari: nature_cnn
    gym.spaces.Box(0, 255, shape=(1, 50, 61), dtype=np.uint8),  # sizes that need output padding
    gym.spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float32),  # mlp with a reshape
])
def test_decoder_mirrors_the_torso(space):
    vae = VAE(space, latent_dim=5, hidden=(16,))
    obs = torch.as_tensor(space.sample()[None].repeat(3, 0))
    recon, value, mu, logvar = vae(obs)
    assert recon.shape == obs.shape and value.shape == (3,) and mu.shape == logvar.shape == (3, 5)
    assert isinstance(vae.decoder[-1], (torch.nn.ConvTranspose2d, torch.nn.Unflatten, torch.nn.Linear))


def test_vae_loss_decreases_on_a_tiny_dataset(one_thread):
    """64 MinAtar-like frames: a ball at (r, c) on plane 0 and a paddle at column p of the last row on plane 1;
    the value is the ball's height. Random-noise frames would not do: their entropy is a floor on the loss."""
    rng = np.random.default_rng(0)
    r, c, p = rng.integers(10, size=(3, 64))
    obs = np.zeros((64, *PLANES.shape), dtype=np.uint8)
    obs[np.arange(64), 0, r, c] = 1
    obs[np.arange(64), 1, 9, p] = 1
    returns = (9 - r).astype(np.float32)
    cfg = Pretraining(env="-", seed=0, latent_dim=8, hidden=(32,), epochs=40, batch_size=16, lr=3e-3)
    torch.manual_seed(0)
    history = train_vae(VAE(PLANES, 8, (32,)), obs, returns, cfg)
    first, last = history[0], history[-1]
    assert last["total"] < 0.2 * first["total"], (first, last)  # measured: 159 -> 15.8
    assert last["reconstruction"] < 0.2 * first["reconstruction"] and last["value"] < 0.3 * first["value"]


def test_saved_vae_loads_with_weights_only_and_keys_the_agents(tmp_path):
    torch.manual_seed(0)
    vae = VAE(PLANES, latent_dim=6, hidden=(16,)).eval()
    path = tmp_path / "vae.pt"
    save_pretrained(vae, PLANES, path, env="test", steps=1)
    data = torch.load(path, weights_only=True)
    assert data["format"] == "gbmr-vae/2" and data["latent_dim"] == 6 and data["info"]["env"] == "test"
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind
    encoder = make_encoder("vae", PLANES, dim=64, encoder_path=str(path))
    obs = torch.as_tensor(PLANES.sample()[None])
    assert encoder.dim == 6 and not encoder.trainable and not any(p.requires_grad for p in encoder.parameters())
    torch.testing.assert_close(encoder(obs), vae.encode(obs)[0])  # the posterior mean
    for cls, cfg in ((GQAgent, GQConfig(encoder="vae", encoder_path=str(path), capacity=8)),
                     (NECAgent, NECConfig(encoder="vae", encoder_path=str(path), capacity=8)),
                     (MFECAgent, MFECConfig(encoder="vae", encoder_path=str(path), capacity=8))):
        agent = cls(cfg, PLANES, gym.spaces.Discrete(3), 1, torch.device("cpu"), 0, 100)
        assert agent.encoder.dim == 6
    assert GQAgent(GQConfig(encoder="vae", encoder_path=str(path), capacity=8), PLANES, gym.spaces.Discrete(3), 1,
                   torch.device("cpu"), 0, 100).learner is None  # frozen: nothing to train


def test_unusable_vae_files_are_user_errors(tmp_path):
    path = tmp_path / "vae.pt"
    save_pretrained(VAE(PLANES, latent_dim=4, hidden=(8,)), PLANES, path)
    with pytest.raises(GbmrError, match="does not exist"):
        load_pretrained(tmp_path / "missing.pt", PLANES, "vae")
    with pytest.raises(GbmrError, match="was trained on observations"):
        load_pretrained(path, gym.spaces.Box(0, 1, shape=(3, 10, 10), dtype=np.uint8), "vae")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(GbmrError, match="not a readable encoder file"):
        load_pretrained(tmp_path / "junk.pt", PLANES, "vae")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(GbmrError, match="not a gbmr encoder file"):
        load_pretrained(tmp_path / "other.pt", PLANES, "vae")
    with pytest.raises(GbmrError, match="needs encoder_path"):
        make_encoder("vae", PLANES)
    with pytest.raises(GbmrError, match="only used by the pretrained encoders"):
        make_encoder("random_projection", PLANES, encoder_path=str(path))


def test_pretrain_then_train_gq_with_the_vae(tmp_path, capsys):
    vae = tmp_path / "vae.pt"
    assert main(["pretrain-vae", "--env", "CartPole-v1", "--steps", "400", "--epochs", "2", "--hidden", "16",
                 "--out", str(vae)]) == 0
    assert "vae encoder saved" in capsys.readouterr().out
    assert torch.load(vae, weights_only=True)["info"]["steps"] == 400
    run = tmp_path / "run"
    assert main(["train", "--algo", "gq", "--env", "CartPole-v1", "--total-steps", "600", "--no-progress",
                 "--run-dir", str(run), "--set", "encoder=vae", "--set", f"encoder_path={vae}", "--set", "k=5",
                 "--set", "dist_th=0.01", "--set", "eval_every=0", "--set", "eval_episodes=1"]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["nodes"].iloc[-1] > 5 and metrics["encoder_loss"].isna().all()
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    saved = torch.load(vae, weights_only=True)["state_dict"]
    torch.testing.assert_close(checkpoint["agent"]["encoder"]["head.weight"], saved["mu.weight"])


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--algo", "gq", "--env", "CartPole-v1", "--set", "encoder=vae", "--set", "encoder_path=NOFILE"],
     "vae encoder file 'NOFILE' does not exist"),
    (["train", "--algo", "gbmr", "--env", "CartPole-v1", "--set", "encoder=vae"], "needs encoder_path"),
    (["train", "--algo", "gq", "--env", "MinAtar/Breakout-v1", "--preset", "minatar-vae"], "needs encoder_path"),
    (["train", "--algo", "gq", "--env", "Acrobot-v1", "--set", "encoder=vae", "--set", "encoder_path=CARTPOLE"],
     "was trained on observations"),
    (["pretrain-vae", "--env", "CartPole-v1", "--out", "NODIR/vae.pt"], "of --out does not exist"),
    (["pretrain-vae", "--env", "CartPole-v1", "--out", "X.pt", "--epochs", "0"], "epochs must be at least 1"),
])
def test_bad_vae_input_exits_2(tmp_path, capsys, argv, message):
    cartpole = tmp_path / "cartpole.pt"
    space = gym.make("CartPole-v1").observation_space
    save_pretrained(VAE(space, latent_dim=4, hidden=(8,)), space, cartpole)
    paths = {"NOFILE": str(tmp_path / "missing.pt"), "CARTPOLE": str(cartpole), "NODIR": str(tmp_path / "nodir"),
             "X.pt": str(tmp_path / "x.pt")}
    for key, value in paths.items():
        argv, message = [a.replace(key, value) for a in argv], message.replace(key, value)
    assert main([*argv, "--run-dir", str(tmp_path / "run")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was created
