import gymnasium as gym
import numpy as np
import pytest
import torch

from gbmr.core.errors import GbmrError
from gbmr.nets.encoders import make_encoder

VECTOR = gym.spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float32)
PIXELS = gym.spaces.Box(0, 255, shape=(2, 10, 10), dtype=np.uint8)


def test_random_projection_is_fixed_and_seeded():
    a = make_encoder("random_projection", VECTOR, dim=8, seed=3)
    b = make_encoder("random_projection", VECTOR, dim=8, seed=3)
    c = make_encoder("random_projection", VECTOR, dim=8, seed=4)
    assert torch.equal(a.matrix, b.matrix)
    assert not torch.allclose(a.matrix, c.matrix)
    assert a.matrix.shape == (6, 8) and a.dim == 8
    assert not a.trainable and not list(a.parameters())
    assert 0.5 < a.matrix.std().item() * np.sqrt(8) < 1.5  # N(0, 1/dim) entries
    obs = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)
    torch.testing.assert_close(a(obs), obs.reshape(2, 6) @ a.matrix)
    assert "matrix" in a.state_dict()  # checkpoints carry the projection


def test_random_projection_scales_pixels():
    enc = make_encoder("random_projection", PIXELS, dim=4, seed=0)
    obs = torch.full((1, 2, 10, 10), 255, dtype=torch.uint8)
    torch.testing.assert_close(enc(obs), enc.matrix.sum(0, keepdim=True))


def test_identity_gives_flattened_obs():
    space = gym.spaces.Box(0, 9, shape=(2,), dtype=np.int64)
    enc = make_encoder("identity", space)
    out = enc(torch.tensor([[3, 7], [0, 9]]))
    assert enc.dim == 2 and out.dtype == torch.float32
    assert out.tolist() == [[3.0, 7.0], [0.0, 9.0]]
    assert make_encoder("identity", VECTOR).dim == 6


def test_learned_encoder_has_gradients_and_seeded_init():
    enc = make_encoder("learned", VECTOR, dim=5, seed=1, hidden=(16,))
    assert enc.trainable and enc.dim == 5
    out = enc(torch.randn(4, 2, 3))
    assert out.shape == (4, 5)
    out.square().sum().backward()
    grads = [p.grad for p in enc.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    same = make_encoder("learned", VECTOR, dim=5, seed=1, hidden=(16,))
    other = make_encoder("learned", VECTOR, dim=5, seed=2, hidden=(16,))
    assert all(torch.equal(p, q) for p, q in zip(enc.parameters(), same.parameters(), strict=True))
    assert not torch.equal(enc.head.weight, other.head.weight)
    cnn = make_encoder("learned", PIXELS, dim=7, seed=0, hidden=(32,))
    assert cnn(torch.zeros(3, 2, 10, 10, dtype=torch.uint8)).shape == (3, 7)


def test_unknown_kind_is_a_user_error():
    with pytest.raises(GbmrError, match="Did you mean 'identity'"):
        make_encoder("identiy", VECTOR)
    with pytest.raises(GbmrError, match="Box"):
        make_encoder("identity", gym.spaces.Discrete(3))
