"""Shared residual / SE blocks in 1D, 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from neurotrain.nn.blocks import ResidualBlock, SEBlock, UpBlock


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_residual_block_shapes(dims: int) -> None:
    size = (16,) * dims if dims < 3 else (8, 8, 8)
    x = torch.rand(2, 4, *size)
    same = ResidualBlock(4, 4, dims=dims)
    assert same(x).shape == x.shape
    down = ResidualBlock(4, 8, dims=dims, stride=2)
    y = down(x)
    assert y.shape == (2, 8, *[s // 2 for s in size])
    up = UpBlock(8, 4, dims=dims)
    assert up(y, x).shape == x.shape


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_se_block_gates_channels(dims: int) -> None:
    se = SEBlock(8, reduction=2, dims=dims)
    x = torch.rand(3, 8, *([5] * dims)) + 0.1
    y = se(x)
    ratio = y / x
    # one gate in (0, 1) per sample and channel, constant over positions
    flat = ratio.flatten(2)
    assert torch.allclose(flat, flat[..., :1].expand_as(flat), atol=1e-6)
    assert torch.all((flat > 0) & (flat < 1))


def test_bad_dims() -> None:
    with pytest.raises(ValueError, match="dims"):
        ResidualBlock(2, 2, dims=4)


def test_residual_block_identity_shortcut_passes_gradients() -> None:
    b = ResidualBlock(4, 4, dims=1, se_reduction=None)
    x = torch.rand(2, 4, 32, requires_grad=True)
    b(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [2, 4])
def test_up_block_kernels_double_exactly(k: int) -> None:
    up = UpBlock(8, 4, dims=1, up_kernel=k)
    assert up(torch.rand(2, 8, 13)).shape == (2, 4, 26)
    with pytest.raises(ValueError, match="up_kernel"):
        UpBlock(8, 4, up_kernel=3)
