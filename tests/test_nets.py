"""Torsos are picked from the observation shape and scale uint8 inputs by the space's bound."""

import gymnasium as gym
import numpy as np
import torch

from gbmr.nets.q_networks import QNetwork
from gbmr.nets.torsos import make_torso, pick_torso


def test_pick_torso_by_shape():
    assert pick_torso((4,)) == "mlp"
    assert pick_torso((4, 84, 84)) == "nature_cnn"
    assert pick_torso((6, 10, 10)) == "minatar_cnn"


def test_uint8_inputs_scaled_by_their_bound():
    atari = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    torso, features = make_torso("auto", atari, (32,))
    assert features == 32
    assert torso[0].scale == 1 / 255
    minatar = gym.spaces.Box(0, 1, (4, 10, 10), np.uint8)
    torso, _ = make_torso("auto", minatar, (32,))
    assert torso[0].scale == 1.0


def test_dueling_head_mean_advantage_is_zero():
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    net = QNetwork(space, 4, hidden=(8,), dueling=True)
    x = torch.randn(5, 3)
    q = net(x)
    features = net.torso(x)
    # Q - V = A - mean(A) has zero mean over actions
    assert torch.allclose((q - net.value(features)).mean(dim=1), torch.zeros(5), atol=1e-6)
