import pytest
import torch
from torch import nn

from neurotrain.nn.residual import ZeroInitResidual, last_conv, zero_last_conv


def _backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))


def test_identity_at_init_and_gradients_reach_every_layer():
    torch.manual_seed(0)
    m = ZeroInitResidual(_backbone())
    x = torch.randn(3, 2, 9, 7)
    y = m(x)
    assert torch.equal(y, x)
    (y * torch.randn_like(y)).sum().backward()
    last = m.backbone[2]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    # the first layer gets no gradient through the zero last layer at step 0, but after one
    # update of the last layer it does
    with torch.no_grad():
        last.weight.add_(0.1)
    m.zero_grad()
    m(x).sum().backward()
    assert m.backbone[0].weight.grad.abs().sum() > 0


def test_zero_last_conv_finds_the_last_layer():
    b = _backbone()
    layer = zero_last_conv(b)
    assert layer is b[2] and last_conv(b) is b[2]
    assert torch.count_nonzero(b[2].weight) == 0 and torch.count_nonzero(b[2].bias) == 0
    assert torch.count_nonzero(b[0].weight) > 0


def test_without_zero_init_is_not_identity_and_shape_change_is_an_error():
    torch.manual_seed(0)
    m = ZeroInitResidual(_backbone(), zero_init=False)
    x = torch.randn(1, 2, 5, 5)
    assert not torch.equal(m(x), x)
    bad = ZeroInitResidual(nn.Conv2d(2, 3, 1))
    with pytest.raises(ValueError, match="changed the shape"):
        bad(x)
    with pytest.raises(ValueError, match="no convolution"):
        last_conv(nn.ReLU())
