"""Spectral residual U-Nets: the seed system's (``models/resnet1d_improved.py`` there) and the default
:class:`FastSpectralUNet1D`, which runs the same design on a grid ``stem_stride`` times coarser; built from
``nn.blocks``.

All networks map (B, C_in, N) normalised input spectra to (B, 1, N) enhanced spectra (same normalisation,
non-negative through softplus):

* encoder: stem convolution, then ``depth`` strided (x1/2) residual stages doubling the width (up to
  ``max_channels``);
* bottleneck: ``bottleneck_blocks`` residual blocks, FiLM-conditioned on the input detector's FWHM law
  (r662, power) when ``condition`` is set - one model serves LYSO, NaI and CsI spectra;
* decoder: ConvTranspose1d up-sampling (kernel ``up_kernel``, 4 = overlapping) with *additive* skip
  connections;
* head: ``SpectralResNet1D`` uses one 1x1 convolution; ``ImprovedSpectralResNet1D`` the seed's progressive
  head (C -> C/2 -> C/4 -> 1 with activations) and SE attention in every block; ``FastSpectralUNet1D``
  depth-to-space back to the full grid and one residual block there.

``N`` must be divisible by 2**depth (``FastSpectralUNet1D``: by stem_stride * 2**depth). The seed networks
stay available by name (``model.name``) so that their checkpoints load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurotrain.errors import ConfigError
from neurotrain.nn.blocks import ResidualBlock, UpBlock
from neurotrain.registry import MODELS


class FiLM(nn.Module):
    """Feature-wise affine modulation from a conditioning vector (Perez et al., AAAI 2018)."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cond_dim, 64), nn.SiLU(), nn.Linear(64, 2 * channels))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.net(cond).chunk(2, dim=1)
        return x * (1 + gamma.unsqueeze(2)) + beta.unsqueeze(2)


class SpectralResNet1D(nn.Module):
    """U-Net shaped 1D residual network (seed design), optionally FWHM-conditioned."""

    progressive_head = False
    use_se = False

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 32,
        depth: int = 4,
        blocks_per_level: int = 1,
        bottleneck_blocks: int = 2,
        kernel_size: int = 7,
        se_reduction: int = 8,
        condition: bool = True,
        cond_dim: int = 2,
        up_kernel: int = 2,
        max_channels: int | None = None,
    ) -> None:
        super().__init__()
        se = se_reduction if self.use_se else None
        self.depth = depth
        self.condition = condition
        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, base_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(base_channels),
            nn.ReLU(inplace=True),
        )
        widths = [min(base_channels * 2**i, max_channels or base_channels * 2**depth) for i in range(depth + 1)]
        self.down = nn.ModuleList()
        for i in range(depth):
            stage = [ResidualBlock(widths[i], widths[i + 1], 1, kernel_size, 2, se)]
            stage += [ResidualBlock(widths[i + 1], widths[i + 1], 1, kernel_size, 1, se) for _ in range(blocks_per_level - 1)]
            self.down.append(nn.Sequential(*stage))
        self.bottleneck = nn.ModuleList(
            [ResidualBlock(widths[-1], widths[-1], 1, 3, 1, se) for _ in range(bottleneck_blocks)]
        )
        self.film = FiLM(cond_dim, widths[-1]) if condition else None
        self.film_out = FiLM(cond_dim, base_channels) if condition else None
        self.up = nn.ModuleList(
            [UpBlock(widths[i + 1], widths[i], 1, kernel_size, se, up_kernel) for i in reversed(range(depth))]
        )
        if self.progressive_head:
            c = base_channels
            self.head = nn.Sequential(
                nn.Conv1d(c, c // 2, 5, padding=2), nn.ReLU(inplace=True),
                nn.Conv1d(c // 2, max(4, c // 4), 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv1d(max(4, c // 4), 1, 1),
            )
        else:
            self.head = nn.Conv1d(base_channels, 1, 1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        n = x.shape[-1]
        if n % (2**self.depth):
            raise ValueError(f"spectrum length {n} is not divisible by 2**depth = {2**self.depth}")
        if self.condition and cond is None:
            cond = torch.tensor([[0.10, 0.5]], device=x.device, dtype=x.dtype).expand(x.shape[0], 2)
        h = self.stem(x)
        skips = [h]
        for stage in self.down:
            h = stage(h)
            skips.append(h)
        skips.pop()
        for block in self.bottleneck:
            h = block(h)
        if self.film is not None and cond is not None:
            h = self.film(h, self._cond(cond))
        for up in self.up:
            h = up(h, skips.pop())
        if self.film_out is not None and cond is not None:
            h = self.film_out(h, self._cond(cond))
        return F.softplus(self.head(h))

    @staticmethod
    def _cond(cond: Tensor) -> Tensor:
        """Centre the FWHM law (r662 ~ 0.1, power ~ 0.5) for the FiLM MLP."""
        return torch.stack([(cond[:, 0] - 0.09) / 0.03, (cond[:, 1] - 0.55) / 0.1], dim=1)


class ImprovedSpectralResNet1D(SpectralResNet1D):
    """:class:`SpectralResNet1D` with SE attention in every block and the progressive output head."""

    progressive_head = True
    use_se = True


def pixel_unshuffle_1d(x: Tensor, factor: int) -> Tensor:
    """(B, C, N) -> (B, C * factor, N / factor): channel ``c * factor + j`` at position ``p`` holds sample
    ``p * factor + j`` of channel ``c``. A lossless re-arrangement (1D space-to-depth, Shi et al., CVPR 2016)."""
    b, c, n = x.shape
    return x.reshape(b, c, n // factor, factor).permute(0, 1, 3, 2).reshape(b, c * factor, n // factor)


def pixel_shuffle_1d(x: Tensor, factor: int) -> Tensor:
    """(B, C * factor, L) -> (B, C, L * factor), the inverse of :func:`pixel_unshuffle_1d`."""
    b, cf, length = x.shape
    c = cf // factor
    return x.reshape(b, c, factor, length).permute(0, 1, 3, 2).reshape(b, c, length * factor)


def _round8(c: int) -> int:
    """Widths in multiples of 8: bf16 tensor-core GEMMs (and cuDNN's implicit-GEMM convolutions) tile by 8."""
    return max(8, 8 * round(c / 8))


class FastSpectralUNet1D(nn.Module):
    """The seed's residual U-Net run where the information is: at 1/``stem_stride`` of the channel grid, with
    one thin level at full resolution.

    A scintillator's lines are broad (LYSO FWHM 10 % at 662 keV = 66 keV = 90 channels of a 4096-channel
    20-3000 keV grid), yet the seed networks spent their widest convolutions at full and half resolution
    (2.36 GMAC per 4096-channel spectrum at train.yaml's size; 0.33 GMAC here). Here:

    * full-resolution level: one convolution to ``full_channels`` (16) features per channel, kept as a skip;
    * stem: lossless 1D space-to-depth (:func:`pixel_unshuffle_1d`) of those features by ``stem_stride`` (8:
      16 x 4096 -> 128 x 512) and a convolution to ``base_channels``;
    * encoder / bottleneck / decoder as in :class:`SpectralResNet1D` (strided residual stages doubling the
      width up to ``max_channels``, FiLM on the FWHM law at the bottleneck and at the top of the decoder,
      transposed-convolution up-sampling, additive skips), without SE attention (its global pool over every
      position splits each block into two memory passes);
    * head: a convolution to ``full_channels * stem_stride`` channels, depth-to-space
      (:func:`pixel_shuffle_1d`) back to the full grid, the full-resolution skip added, one residual block
      at full resolution and a 1x1 convolution to the spectrum. The full-resolution block is the same filter
      at every channel, so a line is sharpened the same way whatever its position within a stem block
      (depth-to-space alone has ``stem_stride`` separate output filters, one per position in the block); the
      output keeps full channel resolution (HPGe FWHM 1.3 keV at 662 keV = 1.8 channels).

    ``full_channels`` 0 drops the full-resolution level (space-to-depth of the input, depth-to-space of the
    output). Widths are rounded to multiples of 8 (tensor-core tiles). Input length ``N`` must be divisible by
    ``stem_stride * 2**depth``. The forward pass has static shapes and no data-dependent branch
    (one graph for torch.compile, CUDA graphs possible).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 32,
        depth: int = 5,
        stem_stride: int = 8,
        full_channels: int = 16,
        blocks_per_level: int = 1,
        bottleneck_blocks: int = 2,
        kernel_size: int = 7,
        condition: bool = True,
        cond_dim: int = 2,
        up_kernel: int = 2,
        max_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.stem_stride = stem_stride
        self.condition = condition
        cap = max_channels or base_channels * 2**depth
        widths = [_round8(min(base_channels * 2**i, cap)) for i in range(depth + 1)]
        self.widths = widths
        k = kernel_size
        fc = _round8(full_channels) if full_channels > 0 else 0
        self.full_in: nn.Module = (
            nn.Sequential(
                nn.Conv1d(in_channels, fc, k, padding=k // 2, bias=False), nn.BatchNorm1d(fc), nn.ReLU(inplace=True)
            )
            if fc else nn.Identity()
        )
        self.stem = nn.Sequential(
            nn.Conv1d((fc or in_channels) * stem_stride, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
            *[ResidualBlock(widths[0], widths[0], 1, k, 1, None) for _ in range(blocks_per_level)],
        )
        self.down = nn.ModuleList()
        for i in range(depth):
            stage = [ResidualBlock(widths[i], widths[i + 1], 1, k, 2, None)]
            stage += [ResidualBlock(widths[i + 1], widths[i + 1], 1, k, 1, None) for _ in range(blocks_per_level - 1)]
            self.down.append(nn.Sequential(*stage))
        self.bottleneck = nn.Sequential(
            *[ResidualBlock(widths[-1], widths[-1], 1, 3, 1, None) for _ in range(bottleneck_blocks)]
        )
        self.film = FiLM(cond_dim, widths[-1]) if condition else None
        self.film_out = FiLM(cond_dim, widths[0]) if condition else None
        self.up = nn.ModuleList(
            [UpBlock(widths[i + 1], widths[i], 1, k, None, up_kernel) for i in reversed(range(depth))]
        )
        self.to_full = nn.Conv1d(widths[0], (fc or 1) * stem_stride, 3, padding=1)
        self.full_out: nn.Module = (
            nn.Sequential(ResidualBlock(fc, fc, 1, k, 1, None), nn.Conv1d(fc, 1, 1)) if fc else nn.Identity()
        )
        # Start from a flat spectrum, softplus(0) = 0.69 per channel: with the default initialisation the first
        # steps at the quickstart's lr 3e-3 swung the output to 7x the target's area and then to exactly zero,
        # where softplus has no gradient left (the network stayed dead; the seed network survived the swing).
        last = self.full_out[-1] if fc else self.to_full
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        # the FWHM law the FiLM layers see when a caller gives none (LYSO, r662 = 0.10, power 0.5)
        self.register_buffer("default_cond", torch.tensor([[0.10, 0.5]]), persistent=False)

    @property
    def multiple(self) -> int:
        """Input lengths must be multiples of this."""
        return self.stem_stride * 2**self.depth

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.shape[-1] % self.multiple:
            raise ValueError(
                f"spectrum length {x.shape[-1]} is not divisible by stem_stride * 2**depth = {self.multiple}"
            )
        if cond is None:
            cond = self.default_cond.to(x.dtype).expand(x.shape[0], -1)
        c = SpectralResNet1D._cond(cond)
        full = self.full_in(x)
        h = self.stem(pixel_unshuffle_1d(full, self.stem_stride))
        skips = [h]
        for stage in self.down:
            h = stage(h)
            skips.append(h)
        h = self.bottleneck(skips.pop())
        if self.film is not None:
            h = self.film(h, c)
        for up in self.up:
            h = up(h, skips.pop())
        if self.film_out is not None:
            h = self.film_out(h, c)
        h = pixel_shuffle_1d(self.to_full(h), self.stem_stride)
        if isinstance(self.full_out, nn.Sequential):
            h = self.full_out(h + full)
        return F.softplus(h)


def build_model(cfg: object) -> nn.Module:
    """The network named by ``cfg.model.name`` for ``cfg.simulate.n_channels`` channels."""
    m = cfg.model  # type: ignore[attr-defined]
    n = cfg.simulate.n_channels  # type: ignore[attr-defined]
    fast = m.name == "FastSpectralUNet1D"
    multiple = (m.stem_stride if fast else 1) * 2**m.depth
    if n % multiple:
        what = "model.stem_stride * 2**model.depth" if fast else "2**model.depth"
        raise ConfigError(f"config error: simulate.n_channels: must be divisible by {what} = {multiple} (got {n})")
    common = dict(
        in_channels=3, base_channels=m.base_channels, depth=m.depth, blocks_per_level=m.blocks_per_level,
        bottleneck_blocks=m.bottleneck_blocks, kernel_size=m.kernel_size, condition=m.condition,
        up_kernel=m.up_kernel, max_channels=m.max_channels,
    )
    extra = (
        {"stem_stride": m.stem_stride, "full_channels": m.full_channels} if fast else {"se_reduction": m.se_reduction}
    )
    return MODELS.build(f"gamma:{m.name}", **common, **extra)


# the networks by name (``model.name``), so that a checkpoint of any of them loads
for _cls in (FastSpectralUNet1D, SpectralResNet1D, ImprovedSpectralResNet1D):
    MODELS.register(f"gamma:{_cls.__name__}")(_cls)
