"""Spectral residual U-Nets of the seed system (``models/resnet1d_improved.py`` there), built from ``nn.blocks``.

Both networks map (B, C_in, N) normalised input spectra to (B, 1, N) enhanced spectra (same normalisation,
non-negative through softplus):

* encoder: stem convolution, then ``depth`` strided (x1/2) residual stages doubling the width (up to
  ``max_channels``);
* bottleneck: ``bottleneck_blocks`` residual blocks, FiLM-conditioned on the input detector's FWHM law
  (r662, power) when ``condition`` is set - one model serves LYSO, NaI and CsI spectra;
* decoder: ConvTranspose1d up-sampling (kernel ``up_kernel``, 4 = overlapping) with *additive* skip
  connections;
* head: ``SpectralResNet1D`` uses one 1x1 convolution; ``ImprovedSpectralResNet1D`` the seed's progressive
  head (C -> C/2 -> C/4 -> 1 with activations) and SE attention in every block.

``N`` must be divisible by 2**depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurotrain.errors import ConfigError
from neurotrain.nn.blocks import ResidualBlock, UpBlock


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


def build_model(cfg: object) -> nn.Module:
    """The network named by ``cfg.model.name``."""
    m = cfg.model  # type: ignore[attr-defined]
    n = cfg.simulate.n_channels  # type: ignore[attr-defined]
    if n % (2**m.depth):
        raise ConfigError(
            f"config error: simulate.n_channels: must be divisible by 2**model.depth = {2**m.depth} (got {n})"
        )
    cls = {"SpectralResNet1D": SpectralResNet1D, "ImprovedSpectralResNet1D": ImprovedSpectralResNet1D}[m.name]
    return cls(
        in_channels=3, base_channels=m.base_channels, depth=m.depth, blocks_per_level=m.blocks_per_level,
        bottleneck_blocks=m.bottleneck_blocks, kernel_size=m.kernel_size, se_reduction=m.se_reduction,
        condition=m.condition, up_kernel=m.up_kernel, max_channels=m.max_channels,
    )
