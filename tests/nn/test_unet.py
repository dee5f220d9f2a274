import pytest
import torch

from neurotrain.nn.unet import UNet


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_unet_shapes_any_size(dims: int, norm: str) -> None:
    net = UNet(dims, 2, 3, depth=2, base_channels=4, norm=norm)
    x = torch.randn(2, 2, *([11] * dims))  # odd size: decoder resizes to the skip connection
    assert net(x).shape == (2, 3, *([11] * dims))


def test_unet_features_and_widths() -> None:
    net = UNet(2, 1, None, depth=2, widths=[4, 6, 8], upsample="transpose", act="elu")
    assert net(torch.randn(1, 1, 16, 16)).shape == (1, 4, 16, 16)
    with pytest.raises(ValueError):
        UNet(2, 1, 1, depth=2, widths=[4, 8])
    with pytest.raises(ValueError):
        UNet(4, 1, 1)


def test_unet_learns_identity_quickly() -> None:
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=1, base_channels=4, norm="none")
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x = torch.randn(4, 1, 8, 8)
    first = None
    for _ in range(60):
        loss = ((net(x) - x) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
