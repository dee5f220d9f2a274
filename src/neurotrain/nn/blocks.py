"""Residual blocks and squeeze-and-excitation for 1D, 2D and 3D feature maps (``dims`` = 1, 2 or 3).

* :class:`SEBlock` - squeeze-and-excitation channel attention (Hu, Shen & Sun, "Squeeze-and-Excitation
  Networks", CVPR 2018): global average pool, bottleneck MLP with ratio ``reduction``, sigmoid gates.
* :class:`ResidualBlock` - the basic two-convolution residual block of He et al., "Deep Residual Learning
  for Image Recognition" (CVPR 2016): conv-norm-ReLU-conv-norm, optional SE on the branch, projection
  shortcut (1x1 conv + norm) when the stride or the width changes, ReLU after the sum.
* :class:`UpBlock` - transposed-convolution up-sampling by 2 followed by a residual block.
"""

from __future__ import annotations

from torch import Tensor, nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _check_dims(dims: int) -> None:
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3 (got {dims})")


def conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, bias: bool = False) -> nn.Module:
    """A ``dims``-D convolution with 'same' padding for odd kernels."""
    _check_dims(dims)
    return _CONV[dims](cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)


def norm(dims: int, channels: int) -> nn.Module:
    """Batch normalisation for ``dims``-D maps."""
    _check_dims(dims)
    return _BN[dims](channels)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(W2 relu(W1 mean(x)))`` per channel (Hu et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 8, dims: int = 1) -> None:
        super().__init__()
        _check_dims(dims)
        hidden = max(1, channels // reduction)
        self.pool = _POOL[dims](1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        w = self.fc(self.pool(x).view(b, c))
        return x * w.view(b, c, *([1] * (x.dim() - 2)))


class ResidualBlock(nn.Module):
    """Two convolutions with a skip connection (He et al. 2016), optional SE attention on the branch.

    Args:
        cin, cout: input and output channels.
        dims: 1, 2 or 3.
        kernel: odd kernel size.
        stride: stride of the first convolution (2 halves the size).
        se_reduction: SE bottleneck ratio; ``None`` disables SE.
    """

    def __init__(
        self, cin: int, cout: int, dims: int = 1, kernel: int = 3, stride: int = 1, se_reduction: int | None = 8
    ) -> None:
        super().__init__()
        self.conv1 = conv(dims, cin, cout, kernel, stride)
        self.bn1 = norm(dims, cout)
        self.conv2 = conv(dims, cout, cout, kernel)
        self.bn2 = norm(dims, cout)
        self.act = nn.ReLU(inplace=True)
        self.se = SEBlock(cout, se_reduction, dims) if se_reduction else nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(conv(dims, cin, cout, 1, stride), norm(dims, cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.se(self.bn2(self.conv2(y)))
        return self.act(y + self.shortcut(x))


class UpBlock(nn.Module):
    """Transposed convolution (x2 up-sampling) followed by a :class:`ResidualBlock`.

    ``up_kernel`` 4 (stride 2, padding 1) gives overlapping kernels, which avoids the blocky output of the
    non-overlapping kernel 2 (Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016); both
    double the size exactly.
    """

    def __init__(
        self, cin: int, cout: int, dims: int = 1, kernel: int = 3, se_reduction: int | None = 8, up_kernel: int = 2
    ) -> None:
        super().__init__()
        _check_dims(dims)
        if up_kernel not in (2, 4):
            raise ValueError(f"up_kernel must be 2 or 4 (got {up_kernel})")
        self.up = _TCONV[dims](cin, cout, up_kernel, stride=2, padding=(up_kernel - 2) // 2)
        self.block = ResidualBlock(cout, cout, dims, kernel, 1, se_reduction)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        y = self.up(x)
        if skip is not None:
            y = y + skip
        return self.block(y)
