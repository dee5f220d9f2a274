"""TrueResidualUNet3D: the seed's flare-removal network, ``output = input + residual``.

Backbone: pytorch3dunet's ``ResidualUNet3D`` (Lee et al. 2017, arXiv:1706.00120) on a
``(N, 1, B, H, W)`` voxel grid, with the seed's knobs: ``f_maps`` as an explicit list (one
entry per level), ``layer_order="gcr"`` (GroupNorm + Conv + ReLU), ``num_groups``,
``conv_padding`` and ``dropout_prob``. As in the seed, the backbone's final activation is
replaced by the identity (the voxel residual is a real number, Sigmoid/Softmax would clip
it) and its last 1x1x1 convolution is zero-initialised, so the network is the exact
identity at initialisation (seed: "初始完美恒等映射").

Parameter counts with one input and one output channel (counted from the built model,
see ``tests/tasks/deflare/test_models.py``): ``[32, 64, 128]`` 1 725 985 (1.7M),
``[32, 64, 128, 256]`` 7 068 961 (7.07M), ``[64, 128, 256, 512]`` 28 269 121 (28.3M).

The U-Net pools by 2 along time, height and width ``levels - 1`` times, so the number of
bins must be divisible by ``2**(levels-1)`` (the seed's "5 levels break with 8 bins") and
H, W are zero-padded to multiples of ``2**(levels-1)`` and cropped back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch3dunet.unet3d.model import ResidualUNet3D
from pytorch3dunet.unet3d.utils import number_of_features_per_level
from torch import nn
from torch.utils.checkpoint import checkpoint

from neurotrain.nn.residual import ZeroInitResidual


def resolve_f_maps(f_maps: int | list[int], num_levels: int) -> list[int]:
    """``f_maps`` as the explicit per-level list (an int grows geometrically, as in pytorch3dunet)."""
    if isinstance(f_maps, int):
        return list(number_of_features_per_level(f_maps, num_levels=num_levels))
    return [int(f) for f in f_maps]


class _UNetBackbone(nn.Module):
    """pytorch3dunet ``ResidualUNet3D`` with identity final activation and optional
    gradient checkpointing of each encoder/decoder stage."""

    def __init__(
        self,
        in_channels: int,
        f_maps: list[int],
        layer_order: str,
        num_groups: int,
        conv_padding: int,
        dropout_prob: float,
        gradient_checkpointing: bool,
    ) -> None:
        super().__init__()
        self.net = ResidualUNet3D(
            in_channels=in_channels,
            out_channels=in_channels,
            final_sigmoid=True,
            f_maps=f_maps,
            layer_order=layer_order,
            num_groups=num_groups,
            num_levels=len(f_maps),
            is_segmentation=True,
            conv_padding=conv_padding,
            dropout_prob=dropout_prob,
        )
        self.net.final_activation = nn.Identity()
        self.gradient_checkpointing = gradient_checkpointing

    def _run(self, fn: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for enc in self.net.encoders:
            x = self._run(enc, x)
            feats.insert(0, x)
        for dec, skip in zip(self.net.decoders, feats[1:]):
            x = self._run(dec, skip, x)
        return self.net.final_activation(self.net.final_conv(x))


class TrueResidualUNet3D(ZeroInitResidual):
    """``forward(x) = x + backbone(x)`` on voxel grids ``(N, C, B, H, W)`` of any H, W.

    Args:
        in_channels: voxel channels (1 in the seed).
        f_maps: feature maps per level (list) or the first level's (int, doubled per level).
        num_levels: levels when ``f_maps`` is an int; must equal ``len(f_maps)`` otherwise.
        layer_order, num_groups, conv_padding, dropout_prob: pytorch3dunet knobs.
        gradient_checkpointing: recompute each U-Net stage in the backward pass.
    """

    def __init__(
        self,
        in_channels: int = 1,
        f_maps: int | list[int] = (32, 64, 128, 256),  # type: ignore[assignment]
        num_levels: int = 4,
        layer_order: str = "gcr",
        num_groups: int = 8,
        conv_padding: int = 1,
        dropout_prob: float = 0.1,
        gradient_checkpointing: bool = False,
    ) -> None:
        fm = resolve_f_maps(list(f_maps) if isinstance(f_maps, tuple) else f_maps, num_levels)
        backbone = _UNetBackbone(in_channels, fm, layer_order, num_groups, conv_padding, dropout_prob, gradient_checkpointing)
        super().__init__(backbone, last_layer=backbone.net.final_conv)
        self.f_maps = fm
        self.multiple = 2 ** (len(fm) - 1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The learned correction (≈ minus the flare voxel), same shape as ``x``."""
        d, h, w = x.shape[-3:]
        m = self.multiple
        if d % m:
            raise ValueError(f"TrueResidualUNet3D: {d} time bins not divisible by 2**(levels-1) = {m}")
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x
        r = self.backbone(xp)
        return r[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


def build_model(model_cfg: Any) -> TrueResidualUNet3D:
    """Build from the ``model`` config section (see ``task.ModelSection``)."""
    return TrueResidualUNet3D(
        in_channels=model_cfg.in_channels,
        f_maps=model_cfg.f_maps,
        num_levels=model_cfg.num_levels,
        layer_order=model_cfg.layer_order,
        num_groups=model_cfg.num_groups,
        conv_padding=model_cfg.conv_padding,
        dropout_prob=model_cfg.dropout_prob,
        gradient_checkpointing=model_cfg.gradient_checkpointing,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
