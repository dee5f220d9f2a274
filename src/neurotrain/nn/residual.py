"""Zero-initialised residual wrapper: ``y = x + f(x)`` with ``f`` starting at exactly zero.

A network that must change its input only a little (remove flare from an event voxel grid,
subtract background from a spectrum) learns best as a correction ``f(x)`` on top of the
identity. Zeroing the weights and bias of ``f``'s last convolution makes ``f(x) == 0`` at
initialisation, so the wrapped model starts as the exact identity and gradients reach
every layer of ``f`` through the non-zero earlier layers (He et al. 2016, "Identity
mappings in deep residual networks"; Goyal et al. 2017 zero-init the last BN/conv of each
residual branch for the same reason).
"""

from __future__ import annotations

import torch
from torch import nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def last_conv(module: nn.Module) -> nn.Module:
    """The last convolution (or linear) layer of ``module`` in registration order.

    Raises:
        ValueError: when ``module`` holds no convolution or linear layer.
    """
    found: nn.Module | None = None
    for sub in module.modules():
        if isinstance(sub, _CONV_TYPES):
            found = sub
    if found is None:
        raise ValueError(f"{type(module).__name__} has no convolution or linear layer to zero")
    return found


def zero_last_conv(module: nn.Module, layer: nn.Module | None = None) -> nn.Module:
    """Set the weight and bias of ``layer`` (default: :func:`last_conv` of ``module``) to zero.

    Returns the zeroed layer.
    """
    target = layer if layer is not None else last_conv(module)
    with torch.no_grad():
        target.weight.zero_()  # type: ignore[union-attr]
        bias = getattr(target, "bias", None)
        if bias is not None:
            bias.zero_()
    return target


class ZeroInitResidual(nn.Module):
    """``forward(x) = x + backbone(x)``, exactly the identity at initialisation.

    Args:
        backbone: maps a tensor to a tensor of the same shape (the residual).
        last_layer: the layer to zero; default the last convolution/linear of ``backbone``.
        zero_init: set ``False`` to keep the backbone's own initialisation.
    """

    def __init__(self, backbone: nn.Module, last_layer: nn.Module | None = None, zero_init: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        if zero_init:
            zero_last_conv(backbone, last_layer)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The learned correction ``backbone(x)`` alone."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.backbone(x)
        if r.shape != x.shape:
            raise ValueError(f"residual backbone changed the shape: input {tuple(x.shape)} -> {tuple(r.shape)}")
        return x + r
