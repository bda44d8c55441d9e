"""Torsos policies can pick: feature sizes per kind and shape, Conv3d across the stack, cnn3d2d's concatenation,
frame differences, misfits as one-line user errors, and the fully connected layers' activation."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from gbmr.core.errors import GbmrError
from gbmr.nets.torsos import Concat, Scale, SmallBatchConv2d, make_torso

ATARI = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
MINATAR = gym.spaces.Box(0, 1, (4, 10, 10), np.uint8)
VECTOR = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

# Feature sizes with no fully connected layer (hidden=()), by hand: nature_cnn ends at 64 x 7 x 7 on 84x84, the
# 3-D one too (its depth 4 -> 3 -> 2 -> 1); minatar_cnn at 16 x 8 x 8, its 3-D analogue at 16 x (C - 1) x 8 x 8.
SIZES = {
    "atari": {"mlp": 4 * 84 * 84, "nature_cnn": 3136, "minatar_cnn": 16 * 82 * 82, "cnn": 3136, "cnn3d": 3136,
              "cnn3d2d": 3136 + 3136, "auto": 3136},
    "minatar": {"mlp": 400, "minatar_cnn": 1024, "cnn": 1024, "cnn3d": 16 * 3 * 64, "cnn3d2d": 16 * 3 * 64 + 1024,
                "auto": 1024},
    "vector": {"mlp": 4, "auto": 4},
}
SPACES = {"atari": ATARI, "minatar": MINATAR, "vector": VECTOR}
CASES = [(space, kind, size) for space, sizes in SIZES.items() for kind, size in sizes.items()]


def batch(space: gym.spaces.Box, n: int = 2, seed: int = 0) -> torch.Tensor:
    space.seed(seed)
    return torch.as_tensor(np.stack([space.sample() for _ in range(n)]))


@pytest.mark.parametrize(("space", "kind", "size"), CASES)
def test_feature_sizes(space, kind, size):
    torso, features = make_torso(kind, SPACES[space], ())
    assert features == size
    assert torso(batch(SPACES[space])).shape == (2, size)
    torso, features = make_torso(kind, SPACES[space], (32,))
    assert features == 32
    assert torso(batch(SPACES[space])).shape == (2, 32)


@pytest.mark.parametrize(("space", "kind", "size"), [
    ("atari", "mlp", 3 * 84 * 84), ("atari", "cnn", 3136), ("atari", "cnn3d", 3136), ("atari", "cnn3d2d", 6272),
    ("minatar", "mlp", 300), ("minatar", "cnn", 1024), ("minatar", "cnn3d", 16 * 2 * 64),
])
def test_frame_difference_sizes(space, kind, size):
    torso, features = make_torso(kind, SPACES[space], (), frame_difference=True)
    assert features == size
    assert torso(batch(SPACES[space])).shape == (2, size)


def test_cnn3d_convolves_across_the_stack():
    """Weights shared along the stack: with 5 frames the features have depth 2, the first from frames 0-3 and the
    second from frames 1-4, so dropping the oldest frame and adding a new one moves the second into the first."""
    torch.manual_seed(0)
    torso, features = make_torso("cnn3d", gym.spaces.Box(0, 255, (5, 84, 84), np.uint8), ())
    assert features == 64 * 2 * 7 * 7
    frames = torch.randint(0, 256, (1, 6, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        old = torso(frames[:, :5]).reshape(64, 2, 7, 7)
        new = torso(frames[:, 1:]).reshape(64, 2, 7, 7)
        reversed_ = torso(frames[:, :5].flip(1)).reshape(64, 2, 7, 7)
    assert torch.allclose(new[:, 0], old[:, 1], atol=1e-6)
    assert not torch.allclose(new[:, 1], old[:, 1], atol=1e-3)  # the new frame counts
    assert not torch.allclose(reversed_, old, atol=1e-3)  # and the frames' order


def test_cnn3d2d_concatenates_conv3d_and_conv2d_features():
    torso, features = make_torso("cnn3d2d", ATARI, ())
    assert features == make_torso("cnn3d", ATARI, ())[1] + make_torso("cnn", ATARI, ())[1]
    concat = next(layer for layer in torso if isinstance(layer, Concat))
    conv3d, conv2d = concat.branches
    assert any(isinstance(layer, nn.Conv3d) for layer in conv3d)
    assert any(isinstance(layer, nn.Conv2d) for layer in conv2d)
    x = batch(ATARI)
    with torch.no_grad():
        scaled = x.float() / 255
        joined = torch.cat([conv3d(scaled), conv2d(scaled)], dim=1)
        assert torch.allclose(torso(x), joined, atol=1e-6)  # ~1e-7 apart: conv kernels vary with the call


def test_frame_difference_by_hand():
    """hidden=() leaves the mlp torso a Flatten: its output is the differences themselves."""
    torso, features = make_torso("mlp", gym.spaces.Box(0, 255, (3, 1, 2), np.uint8), (), frame_difference=True)
    assert features == 4
    frames = torch.tensor([[[[0, 9]], [[1, 7]], [[3, 7]]]], dtype=torch.uint8)
    expected = torch.tensor([[1.0, -2.0, 2.0, 0.0]]) / 255  # uint8 frames scaled first, so 7 - 9 does not wrap
    assert torch.allclose(torso(frames), expected)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "cnn3d", "cnn3d2d"])
def test_constant_frames_differ_to_zeros(kind):
    torch.manual_seed(0)
    constant = batch(MINATAR, n=1)[:, :1].expand(1, 4, 10, 10).contiguous()
    zeros = torch.zeros_like(constant)
    torso, _ = make_torso(kind, MINATAR, (8,), frame_difference=True)
    plain, _ = make_torso(kind, MINATAR, (8,))
    with torch.no_grad():
        assert torch.equal(torso(constant), torso(zeros))
        assert not torch.equal(plain(constant), plain(zeros))  # without differences the frames count


@pytest.mark.parametrize(("kind", "space", "frame_difference", "words"), [
    ("cnn", VECTOR, False, ["'cnn'", "(4,)", "torsos that fit: mlp"]),
    ("cnn3d", VECTOR, False, ["'cnn3d'", "(4,)", "torsos that fit: mlp"]),
    ("cnn3d2d", gym.spaces.Box(0, 255, (4, 20, 20), np.uint8), False, ["'cnn3d2d'", "(4, 20, 20)", "minatar_cnn"]),
    ("nature_cnn", MINATAR, False, ["'nature_cnn'", "(4, 10, 10)", "empty", "cnn3d"]),
    ("mlp", VECTOR, True, ["frame_difference", "'mlp'", "(4,)"]),
    ("cnn3d", gym.spaces.Box(0, 255, (1, 84, 84), np.uint8), True, ["frame_difference", "(1, 84, 84)"]),
])
def test_misfits_are_one_line_user_errors(kind, space, frame_difference, words):
    with pytest.raises(GbmrError) as error:
        make_torso(kind, space, (8,), frame_difference=frame_difference)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_misfit_lists_only_torsos_that_fit():
    with pytest.raises(GbmrError, match=r"torsos that fit: mlp, minatar_cnn, cnn, cnn3d, cnn3d2d$"):
        make_torso("nature_cnn", MINATAR)


def test_unknown_torso():
    with pytest.raises(GbmrError, match="unknown torso 'cnn4d'"):
        make_torso("cnn4d", ATARI)


def test_activation_of_the_fully_connected_layers():
    torso, _ = make_torso("mlp", VECTOR, (8, 8), activation=nn.Tanh)
    kinds = [type(layer) for layer in torso]
    assert kinds.count(nn.Tanh) == 2 and nn.ReLU not in kinds
    assert torso(torch.full((1, 4), 100.0)).abs().max() < 1  # tanh bounds the features
    default, _ = make_torso("mlp", VECTOR, (8, 8))
    assert [type(layer) for layer in default].count(nn.ReLU) == 2
    cnn, _ = make_torso("cnn", MINATAR, (8,), activation=nn.Tanh)
    assert [type(layer) for layer in cnn] == [Scale, SmallBatchConv2d, nn.ReLU, nn.Flatten, nn.Linear, nn.Tanh]


def test_small_batch_conv_matches_conv2d_in_both_paths() -> None:
    """The native path for small inference batches gives nn.Conv2d's outputs; training batches and gradients
    go through nn.Conv2d itself."""
    torch.manual_seed(0)
    conv = SmallBatchConv2d(4, 16, 3)
    reference = torch.nn.Conv2d(4, 16, 3)
    reference.load_state_dict(conv.state_dict())
    for batch in (1, 4, SmallBatchConv2d.SMALL_BATCH, 64):
        x = torch.rand(batch, 4, 10, 10)
        with torch.inference_mode():
            assert torch.allclose(conv(x), reference(x), atol=1e-6)
    x = torch.rand(4, 4, 10, 10)
    conv(x).square().sum().backward()
    reference(x).square().sum().backward()
    assert torch.allclose(conv.weight.grad, reference.weight.grad, atol=1e-5)
