"""``SpectralResCNN``: the seed's residual convolutional network for stellar labels, and its builder.

Layout (the seed's "input conv, three residual groups, fully connected head"):

* input convolution (``kernel_size``, stride ``downsample``) + batch norm + ReLU on the (B, C, M) input
  (C = 1: continuum-normalised flux; C = 2: flux and its normalised inverse error, see
  ``preprocess.network_input``);
* three residual groups of ``blocks_per_group`` 1D residual blocks (He et al. 2016, ``nn.blocks``), widths
  ``base_channels`` x (1, 2, 4), each group's first block strided by ``downsample``;
* pooling to ``pool_size`` wavelength segments (``pool_size`` 1 = global average pooling). A spectrum's
  information is in *where* a line is as much as in its shape, and global pooling throws the position away;
  a few segments keep coarse position (which part of the spectrum) at the cost of
  ``4 base_channels x pool_size x hidden`` head weights;
* fully connected head with dropout (the layers MC dropout samples): ``hidden`` units, then ``2L`` outputs
  (normalised means, then log variances: the heteroscedastic head) or ``L`` (means only).

Labels are learned in normalised units, ``(label - label_mean) / label_std`` per label; the buffers
``label_mean`` / ``label_std`` (physical units: K, dex) travel with the checkpoint and
:meth:`SpectralResCNN.to_physical` converts the output back. The post-hoc sigma calibration
(``calibration.py``) travels the same way: a global factor per label (``sigma_scale``, (L,)) and an
S/N-dependent factor relative to it on the knots ``snr_knots`` (``sigma_scale_snr``, (K, L); ones until fitted),
looked up at the spectrum's own S/N (:meth:`SpectralResCNN.input_snr`). The forward pass has no data-dependent control
flow, so it exports to ONNX.

Size at the defaults (``base_channels`` 16, two blocks per group, kernel 7, ``pool_size`` 16, ``hidden``
256, 7 labels): about 0.40 M parameters, the size of the issue's reference net (0.43 M).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from neurotrain.errors import ConfigError
from neurotrain.nn.blocks import ResidualBlock

if TYPE_CHECKING:
    from neurotrain.tasks.stellar.config import StellarConfig

#: the log variance is clamped to this range before exp(): sigma stays within [e^-10, e^10] label std,
#: far outside anything a trained head predicts, so the clamp only guards against inf/NaN
LOGVAR_CLAMP = (-20.0, 20.0)

#: std of a uniform distribution on [a, b] is (b - a) / sqrt(12)
_UNIFORM_STD = 1.0 / math.sqrt(12.0)


class SegmentPool(nn.Module):
    """Average over ``segments`` equal wavelength segments: (B, C, N) -> (B, C, segments).

    Like ``AdaptiveAvgPool1d`` but exportable by both ONNX exporters for any N: the map is zero-padded on the
    right to ``segments x ceil(N / segments)`` and averaged in blocks (the last segment's few padded zeros
    are a fixed scale the head learns around). ``segments`` 1 is global average pooling.
    """

    def __init__(self, segments: int) -> None:
        super().__init__()
        self.segments = int(segments)

    def forward(self, x: Tensor) -> Tensor:
        b, c, n = x.shape
        # ceil(n / segments) with non-negative operands only: ONNX's Div truncates towards zero, so the
        # -(-n // s) idiom would round the wrong way in a traced graph
        k = (n + self.segments - 1) // self.segments
        x = nn.functional.pad(x, (0, k * self.segments - n))
        return x.reshape(b, c, self.segments, k).mean(-1)


class SpectralResCNN(nn.Module):
    """Residual 1D CNN: (B, C, M) spectra -> (B, 2L) [normalised means, log variances] or (B, L).

    Args:
        in_channels: input channels (1 flux, 2 flux + inverse error).
        n_labels: number of labels L.
        base_channels: width of the input conv and the first group; the groups are x1, x2, x4.
        blocks_per_group: residual blocks per group.
        kernel_size: odd convolution kernel (pixels; at LAMOST's 69 km/s per pixel, 7 px spans ~480 km/s,
            about 3 resolution elements at R 1800).
        downsample: stride of the input conv and of each group's first block.
        hidden: units of the fully connected layer.
        dropout: dropout before and after the hidden layer (MC dropout uses these).
        heteroscedastic: also predict a log variance per label.
        label_mean, label_std: per-label normalisation in physical units (defaults 0 and 1).
        pool_size: wavelength segments kept by the pooling (1 = global average pooling).
        se_reduction: squeeze-and-excitation ratio in the residual blocks (``None`` = off).
        min_sigma: floor of the predicted sigma in normalised units (added in quadrature, as the loss does).
        snr_knots: S/N per pixel of the S/N-dependent sigma factor (increasing; empty: global factor only).
        snr_pixel_scale: network input -> S/N per LAMOST pixel: ``inv_sigma_scale x sqrt(LAMOST pixel / grid
            pixel)`` (:func:`build_model`), so that the S/N does not depend on the rest grid's step.
    """

    def __init__(
        self,
        in_channels: int = 2,
        n_labels: int = 7,
        base_channels: int = 16,
        blocks_per_group: int = 2,
        kernel_size: int = 7,
        downsample: int = 2,
        hidden: int = 256,
        dropout: float = 0.1,
        heteroscedastic: bool = True,
        label_mean: Sequence[float] | Tensor | None = None,
        label_std: Sequence[float] | Tensor | None = None,
        pool_size: int = 16,
        se_reduction: int | None = None,
        min_sigma: float = 1e-3,
        snr_knots: Sequence[float] = (),
        snr_pixel_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size: expected an odd number (got {kernel_size})")
        self.n_labels = int(n_labels)
        self.heteroscedastic = bool(heteroscedastic)
        self.min_sigma = float(min_sigma)
        mean = torch.zeros(n_labels) if label_mean is None else torch.as_tensor(label_mean, dtype=torch.float32)
        std = torch.ones(n_labels) if label_std is None else torch.as_tensor(label_std, dtype=torch.float32)
        if mean.shape != (n_labels,) or std.shape != (n_labels,):
            raise ConfigError(
                f"labels.mean/std: expected {n_labels} values each (got {tuple(mean.shape)}, {tuple(std.shape)})"
            )
        if not bool(torch.all(std > 0)):
            raise ConfigError(f"labels.std: expected positive values (got {std.tolist()})")
        self.register_buffer("label_mean", mean.clone())
        self.register_buffer("label_std", std.clone())
        # post-hoc calibration of the predicted sigma (calibration.py): 1 until fitted on held-out spectra
        self.register_buffer("sigma_scale", torch.ones(n_labels))
        knots = torch.as_tensor(list(snr_knots), dtype=torch.float32)
        if knots.numel() and not bool(torch.all(knots > 0) and torch.all(knots[1:] > knots[:-1])):
            raise ConfigError(f"calibration.snr_knots: expected positive, increasing values (got {knots.tolist()})")
        self.snr_pixel_scale = float(snr_pixel_scale)
        self.register_buffer("snr_knots", knots)
        # factor relative to sigma_scale at each knot (ones: no S/N dependence), and whether it was fitted
        self.register_buffer("sigma_scale_snr", torch.ones(knots.numel(), n_labels))
        self.register_buffer("snr_calibrated", torch.zeros((), dtype=torch.bool))

        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, base_channels, kernel_size, stride=downsample, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(base_channels),
            nn.ReLU(inplace=True),
        )
        widths = [base_channels, 2 * base_channels, 4 * base_channels]
        groups: list[nn.Module] = []
        cin = base_channels
        for w in widths:
            blocks = [ResidualBlock(cin, w, 1, kernel_size, downsample, se_reduction)]
            blocks += [ResidualBlock(w, w, 1, kernel_size, 1, se_reduction) for _ in range(blocks_per_group - 1)]
            groups.append(nn.Sequential(*blocks))
            cin = w
        self.groups = nn.Sequential(*groups)
        self.pool = SegmentPool(pool_size)
        n_out = 2 * n_labels if heteroscedastic else n_labels
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(cin * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_out),
        )
        # start at the prior: mean = label_mean, sigma = label_std (log variance 0); gradients still reach
        # the zeroed layer through its non-zero input
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, M) network input -> (B, 2L) normalised means then log variances, or (B, L)."""
        return self.head(self.pool(self.groups(self.stem(x))))

    #: state that checkpoints older than the sigma calibration lack (``engine.checkpoint.check_weights``)
    optional_state = ("sigma_scale", "snr_knots", "sigma_scale_snr", "snr_calibrated")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before the sigma calibration (or before its S/N dependence) existed load as
        # uncalibrated (factor 1) or with the global factor alone (relative factors 1, not fitted)
        state_dict.setdefault(prefix + "sigma_scale", torch.ones_like(self.sigma_scale))
        state_dict.setdefault(prefix + "snr_knots", self.snr_knots.clone())
        knots = state_dict[prefix + "snr_knots"]
        state_dict.setdefault(prefix + "sigma_scale_snr", self.sigma_scale_snr.new_ones(knots.shape[0], self.n_labels))
        state_dict.setdefault(prefix + "snr_calibrated", torch.zeros((), dtype=torch.bool))
        if knots.shape != self.snr_knots.shape:
            # a table fitted on other knots (a recalibrated model): the checkpoint's knots win
            self.set_snr_table(knots, state_dict[prefix + "sigma_scale_snr"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_snr_table(self, knots: Tensor, table: Tensor, fitted: bool | None = None) -> None:
        """Set the S/N knots (K,) and relative factors (K, L). Same K: copied into the existing buffers (a
        wrapper such as DDP keeps its references to them); another K: the buffers are replaced."""
        if tuple(table.shape) != (knots.shape[0], self.n_labels):
            raise ConfigError(
                f"sigma_scale_snr: expected shape {[knots.shape[0], self.n_labels]} (got {list(table.shape)})")
        if knots.shape == self.snr_knots.shape:
            self.snr_knots.copy_(knots.detach())
            self.sigma_scale_snr.copy_(table.detach())
        else:
            dev = self.sigma_scale.device
            self.snr_knots = knots.detach().to(dev, torch.float32).clone()
            self.sigma_scale_snr = table.detach().to(dev, torch.float32).clone()
        if fitted is not None:
            self.snr_calibrated.fill_(bool(fitted))

    def input_snr(self, x: Tensor) -> Tensor | None:
        """(B,) median S/N per LAMOST pixel of a batch of network inputs (B, C, M), or None without an
        inverse-error channel (C = 1).

        The LAMOST definition (SNRG/SNRR: median of flux x sqrt(ivar) over good pixels), taken over the whole
        rest grid: channel 0 x channel 1 x ``snr_pixel_scale`` is the continuum-normalised flux times its
        normalised inverse error, which equals the un-normalised flux x sqrt(ivar) on the grid. Pixels
        without data (channel 1 = 0) are left out; a spectrum without any gets 0.
        """
        if x.shape[1] < 2:
            return None
        s = (x[:, 0].float() * x[:, 1].float()) * self.snr_pixel_scale
        s = torch.where(x[:, 1] > 0, s, torch.full_like(s, float("nan")))
        return torch.nan_to_num(torch.nanmedian(s, dim=-1).values, nan=0.0)

    def snr_factor(self, snr: Tensor) -> Tensor:
        """(B, L) S/N-dependent sigma factor relative to ``sigma_scale`` at S/N ``snr`` (B,): linear in
        log S/N between ``snr_knots``, constant outside them; ones without knots or before fitting (the
        table is then ones, so no host-device synchronisation is needed to tell)."""
        k = self.snr_knots.numel()
        if k == 0:
            return self.sigma_scale_snr.new_ones(snr.shape[0], self.n_labels)
        if k == 1:
            return self.sigma_scale_snr[0].expand(snr.shape[0], -1)
        logk = torch.log(self.snr_knots)
        # S/N 0 or NaN (a spectrum without good pixels) sits below the first knot
        u = torch.log(torch.nan_to_num(snr.float(), nan=0.0).clamp_min(1e-30)).clamp(logk[0], logk[-1])
        i = (torch.searchsorted(logk, u.contiguous(), right=True) - 1).clamp(0, k - 2)
        w = ((u - logk[i]) / (logk[i + 1] - logk[i])).unsqueeze(-1)
        return self.sigma_scale_snr[i] * (1 - w) + self.sigma_scale_snr[i + 1] * w

    def to_physical(self, out: Tensor, snr: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Network output -> (mean (B, L), sigma (B, L)) in physical units (K, dex).

        sigma = sqrt(exp(log_var) + min_sigma^2) x label_std x sigma_scale x snr_factor(snr) (the loss's
        floor, then the post-hoc calibration factors of :mod:`calibration`, 1 when none was fitted; without
        ``snr`` (B,) the global factor alone); the log variance is clamped to :data:`LOGVAR_CLAMP` first, so
        the result is finite for any finite output. A mean-only model returns sigma 0 (no aleatoric
        uncertainty predicted).
        """
        L = self.n_labels
        mean = out[:, :L].float() * self.label_std + self.label_mean
        if out.shape[1] >= 2 * L:
            logvar = out[:, L : 2 * L].float().clamp(*LOGVAR_CLAMP)
            sigma = torch.sqrt(torch.exp(logvar) + self.min_sigma**2) * self.label_std * self.sigma_scale
            if snr is not None:
                sigma = sigma * self.snr_factor(snr)
        else:
            sigma = torch.zeros_like(mean)
        return mean, sigma


def label_stats(cfg: StellarConfig) -> tuple[list[float], list[float]]:
    """Per-label normalisation (mean, std) in physical units for ``cfg.labels.names``.

    ``cfg.labels.mean``/``std`` when given; else those a prepared HDF5 file at ``data.path`` stores (its
    ``label_mean``/``label_std`` attributes); else the generator's uniform prior ``simulate.label_ranges``
    [a, b]: mean (a + b) / 2, std (b - a) / sqrt(12) (a zero-width range gets std 1). Model, loss and
    metrics all take their normalisation from here, so they agree.
    """
    names = cfg.labels.names
    if cfg.labels.mean or cfg.labels.std:
        if len(cfg.labels.mean) != len(names) or len(cfg.labels.std) != len(names):
            raise ConfigError(
                f"labels.mean/std: expected {len(names)} values each, one per label in labels.names "
                f"(got {len(cfg.labels.mean)}, {len(cfg.labels.std)})"
            )
        return [float(v) for v in cfg.labels.mean], [float(v) for v in cfg.labels.std]
    if cfg.data.path is not None:
        from neurotrain.tasks.stellar.task import prepared_label_stats

        stats = prepared_label_stats(cfg.data.path, names)
        if stats is not None:
            return stats
    ranges = cfg.simulate.label_ranges
    missing = [n for n in names if n not in ranges]
    if missing:
        raise ConfigError(
            f"labels.names: {', '.join(missing)} has no simulate.label_ranges entry and labels.mean/std are empty "
            f"(expected stats for every label)"
        )
    mean = [0.5 * (ranges[n][0] + ranges[n][1]) for n in names]
    std = [(ranges[n][1] - ranges[n][0]) * _UNIFORM_STD or 1.0 for n in names]
    return mean, std


def build_model(
    cfg: StellarConfig, label_mean: Sequence[float] | None = None, label_std: Sequence[float] | None = None
) -> SpectralResCNN:
    """The network of ``cfg.model`` for ``cfg.labels.names``; label stats default to :func:`label_stats`."""
    m = cfg.model
    if label_mean is None or label_std is None:
        dm, ds = label_stats(cfg)
        label_mean = dm if label_mean is None else label_mean
        label_std = ds if label_std is None else label_std
    return SpectralResCNN(
        in_channels=m.in_channels,
        n_labels=len(cfg.labels.names),
        base_channels=m.base_channels,
        blocks_per_group=m.blocks_per_group,
        kernel_size=m.kernel_size,
        downsample=m.downsample,
        hidden=m.hidden,
        dropout=m.dropout,
        heteroscedastic=m.heteroscedastic,
        label_mean=label_mean,
        label_std=label_std,
        pool_size=m.pool_size,
        se_reduction=m.se_reduction,
        min_sigma=cfg.loss.min_sigma,
        snr_knots=cfg.calibration.snr_knots,
        snr_pixel_scale=snr_pixel_scale(cfg),
    )


def snr_pixel_scale(cfg: StellarConfig) -> float:
    """Factor from channel 0 x channel 1 of the network input to S/N per LAMOST pixel: ``inv_sigma_scale``
    (channel 1 is sqrt(ivar) / inv_sigma_scale) x sqrt(``simulate.coeff1`` / ``preprocess.grid_step_log10``)
    (a rest-grid pixel wider than LAMOST's 1e-4 dex pixel sums more photons: S/N grows as the square root of
    the width). The quickstart's 2e-4 dex grid measured S/N 143 per grid pixel on spectra drawn at S/N 100.
    """
    return float(cfg.preprocess.inv_sigma_scale * math.sqrt(cfg.simulate.coeff1 / cfg.preprocess.grid_step_log10))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
