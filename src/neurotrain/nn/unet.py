"""A dimension-agnostic U-Net (1D, 2D or 3D) with configurable depth, widths and normalisation.

Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015: an encoder of ``depth`` down-sampling stages (two 3-wide convolutions then a
2x max-pool) and a decoder that up-samples, concatenates the skip connection of the same
scale and applies two convolutions again. Inputs of any size work: decoder features are
resized to the skip connection's size, so odd sizes need no padding by the caller.

Cost and the lean options. The defaults are the classic layout above (every existing caller and checkpoint
keeps its modules): two convolutions of ``widths[0]`` channels at full resolution in the encoder, and in the
decoder the ``widths[1]``-channel map interpolated to full resolution and concatenated, so the top decoder block
convolves ``widths[1] + widths[0]`` channels at full resolution. At 512x512 that top level dominates both the
activations kept for the backward pass and the FLOPs. Three options cut it, each an argument:

* ``stem_stride=2``: the first convolution has stride 2, so every level runs at half the resolution (as MONAI's
  ``UNet`` does, whose first layer is a strided convolution); a transposed convolution (kernel 2, stride 2)
  brings the top decoder features back to the input size before the 1x1 head. About 4x fewer FLOPs and
  activations; the output is still per pixel.
* ``down="stride"``: a stride-2 first convolution per level instead of max-pool + convolution (no pooled copy,
  no int64 argmax indices kept for the backward pass).
* ``up_channels="skip"`` with ``upsample="transpose"``: the up-convolution of the original paper, halving the
  channels (``widths[i+1]`` -> ``widths[i]``) before the concatenation, so the decoder block convolves
  ``2 * widths[i]`` channels.

Activations ``relu``, ``leaky_relu`` and ``elu`` run in place (their backward needs only their output, and
batch normalisation's backward only its input): no second full-size map is allocated per convolution while the
forward pass runs, with no change of result or parameters (the tensors kept for the backward pass stay the same).

Measured on the CPU (``torch.utils.flop_counter`` and the bytes of the tensors autograd saves, fp32, one
512x512 RGB image, depth 4, widths 32..512): classic 111.6 GFLOP and 1196 MB; ``down="stride"`` +
``up_channels="skip"`` 96.6 GFLOP, 1085 MB; ``stem_stride=2`` 28.5 GFLOP, 693 MB; all three 24.7 GFLOP, 662 MB;
MONAI ``UNet`` of the same widths (2 residual units) 24.2 GFLOP, 607 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "instance", "group", "none"]
Act = Literal["relu", "elu", "gelu", "leaky_relu", "silu"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_IN = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def make_norm(norm: Norm, dims: int, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer for ``dims``-dimensional feature maps (``"none"`` gives identity)."""
    if norm == "batch":
        return _BN[dims](channels)
    if norm == "instance":
        return _IN[dims](channels, affine=True)
    if norm == "group":
        g = max(1, min(groups, channels))
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r} (expected batch, instance, group or none)")


_INPLACE_SAFE = ("relu", "leaky_relu", "elu")  # backward uses the output only: may overwrite their input


def make_act(act: Act, inplace: bool = False) -> nn.Module:
    """An activation module by name; ``inplace`` where it is safe (``relu``, ``leaky_relu``, ``elu``)."""
    table = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}
    if act not in table:
        raise ValueError(f"unknown activation {act!r} (expected one of {sorted(table)})")
    return table[act](inplace=True) if inplace and act in _INPLACE_SAFE else table[act]()


class ConvBlock(nn.Sequential):
    """``n_convs`` x (convolution, normalisation, activation) at one scale."""

    def __init__(self, dims: int, cin: int, cout: int, *, norm: Norm = "batch", act: Act = "relu",
                 kernel_size: int = 3, n_convs: int = 2, dropout: float = 0.0, stride: int = 1) -> None:
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers.append(_CONV[dims](cin if i == 0 else cout, cout, kernel_size, padding=kernel_size // 2,
                                      stride=stride if i == 0 else 1, bias=norm == "none"))
            layers.append(make_norm(norm, dims, cout))
            layers.append(make_act(act, inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net for ``dims`` = 1, 2 or 3 spatial dimensions.

    Args:
        dims: number of spatial dimensions of the input (1, 2 or 3).
        in_channels: input channels.
        out_channels: output channels (a 1x1 convolution after the last decoder stage);
            ``None`` returns the last decoder features (``widths[0]`` channels).
        depth: number of down-sampling stages (0 is a plain convolution stack).
        base_channels: width at full resolution; stage ``i`` has ``base_channels * 2**i``
            unless ``widths`` (length ``depth + 1``) is given.
        norm, act: normalisation and activation of every convolution block.
        upsample: ``"interp"`` (interpolation, then the block convolves) or ``"transpose"``.
        dropout: dropout after each decoder block (used for Monte-Carlo dropout).
        down: ``"maxpool"`` (2x max-pool, then the level's block) or ``"stride"`` (the block's first
            convolution has stride 2).
        up_channels: ``"same"`` (the up-sampler keeps ``widths[i+1]`` channels) or ``"skip"`` (a transposed
            convolution to ``widths[i]`` channels; needs ``upsample="transpose"``).
        stem_stride: 1 (full resolution from the first convolution) or 2 (every level at half resolution,
            a transposed convolution back to the input size before the head); see the module docstring.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int | None, *, depth: int = 3,
                 base_channels: int = 32, widths: Sequence[int] | None = None, norm: Norm = "batch",
                 act: Act = "relu", upsample: Literal["interp", "transpose"] = "interp",
                 kernel_size: int = 3, dropout: float = 0.0, down: Literal["maxpool", "stride"] = "maxpool",
                 up_channels: Literal["same", "skip"] = "same", stem_stride: Literal[1, 2] = 1) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"dims must be 1, 2 or 3 (got {dims})")
        if depth < 0:
            raise ValueError(f"depth must be >= 0 (got {depth})")
        w = list(widths) if widths is not None else [base_channels * 2**i for i in range(depth + 1)]
        if len(w) != depth + 1:
            raise ValueError(f"widths must have depth + 1 = {depth + 1} entries (got {len(w)})")
        if down not in ("maxpool", "stride"):
            raise ValueError(f"down must be 'maxpool' or 'stride' (got {down!r})")
        if up_channels not in ("same", "skip") or (up_channels == "skip" and upsample != "transpose"):
            raise ValueError(f"up_channels must be 'same', or 'skip' with upsample='transpose' (got {up_channels!r}, "
                             f"upsample={upsample!r})")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2 (got {stem_stride})")
        self.dims, self.depth, self.widths, self.upsample_mode = dims, depth, w, upsample
        self.down, self.stem_stride = down, stem_stride
        kw = dict(norm=norm, act=act, kernel_size=kernel_size)
        strides = [stem_stride] + [2 if down == "stride" else 1] * depth
        self.enc = nn.ModuleList([ConvBlock(dims, in_channels if i == 0 else w[i - 1], w[i], stride=strides[i], **kw)
                                  for i in range(depth + 1)])
        self.pool = _POOL[dims](2, ceil_mode=True) if down == "maxpool" else nn.Identity()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        tconv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        for i in reversed(range(depth)):
            up_w = w[i] if up_channels == "skip" else w[i + 1]
            if upsample == "transpose":
                self.up.append(tconv(w[i + 1], up_w, 2, stride=2))
            else:
                self.up.append(nn.Identity())
            self.dec.append(ConvBlock(dims, up_w + w[i], w[i], dropout=dropout, **kw))
        # stem_stride 2: back to the input resolution (kernel 2, stride 2: each input pixel gets its own weights)
        self.stem_up = tconv(w[0], w[0], 2, stride=2) if stem_stride == 2 else None
        self.out_channels = out_channels if out_channels is not None else w[0]
        self.head = _CONV[dims](w[0], out_channels, 1) if out_channels is not None else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last decoder features, ``widths[0]`` channels at the input's resolution."""
        size = x.shape[2:]
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.dec):
            skip = skips.pop()
            x = up(x)
            if x.shape[2:] != skip.shape[2:]:
                x = F.interpolate(x, size=skip.shape[2:], mode=_MODE[self.dims], align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        if self.stem_up is not None:
            x = self.stem_up(x)
            if x.shape[2:] != size:  # odd input sizes: the half-resolution grid was rounded up
                x = F.interpolate(x, size=size, mode=_MODE[self.dims], align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
