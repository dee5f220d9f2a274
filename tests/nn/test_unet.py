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


LEAN = dict(stem_stride=2, down="stride", upsample="transpose", up_channels="skip")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_lean_layout_any_size(dims: int) -> None:
    net = UNet(dims, 2, 3, depth=2, base_channels=4, **LEAN)
    for n in (11, 16):
        assert net(torch.randn(2, 2, *([n] * dims))).shape == (2, 3, *([n] * dims))


def test_lean_layout_costs_a_quarter() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 64, 64)
    flops = {}
    for name, kw in (("classic", {}), ("lean", LEAN)):
        with FlopCounterMode(display=False) as fc:
            UNet(2, 3, 2, depth=3, base_channels=8, **kw)(x)
        flops[name] = fc.get_total_flops()
    assert 3.5 < flops["classic"] / flops["lean"] < 5.5


def test_classic_parameters_unchanged() -> None:
    """The default layout keeps its module names and shapes: checkpoints written before the lean options load."""
    shapes = {k: tuple(v.shape) for k, v in UNet(2, 1, 2, depth=1, base_channels=4).state_dict().items()
              if k.endswith("weight")}
    assert shapes == {"enc.0.0.weight": (4, 1, 3, 3), "enc.0.1.weight": (4,), "enc.0.3.weight": (4, 4, 3, 3),
                      "enc.0.4.weight": (4,), "enc.1.0.weight": (8, 4, 3, 3), "enc.1.1.weight": (8,),
                      "enc.1.3.weight": (8, 8, 3, 3), "enc.1.4.weight": (8,), "dec.0.0.weight": (4, 12, 3, 3),
                      "dec.0.1.weight": (4,), "dec.0.3.weight": (4, 4, 3, 3), "dec.0.4.weight": (4,),
                      "head.weight": (2, 4, 1, 1)}


def test_in_place_activations_keep_gradients() -> None:
    torch.manual_seed(0)
    for act in ("relu", "elu", "silu"):
        net = UNet(2, 1, 1, depth=1, base_channels=4, act=act)
        x = torch.randn(2, 1, 8, 8, requires_grad=True)
        net(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="up_channels"):
        UNet(2, 1, 1, up_channels="skip")
    with pytest.raises(ValueError, match="down"):
        UNet(2, 1, 1, down="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stem_stride"):
        UNet(2, 1, 1, stem_stride=4)  # type: ignore[arg-type]
