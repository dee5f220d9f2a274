"""Payne-format spectrum emulators (The Payne, Ting et al. 2019, ApJ 879, 69; DD-Payne, Xiang et al. 2019,
ApJS 245, 34) evaluated in torch, on the GPU when there is one.

The ``.npz`` holds a small MLP: ``w_array_0 .. w_array_K`` (each (out, in), as The Payne's
``einsum('ij,j->i', w, x)``), ``b_array_0 .. b_array_K`` (out,), ``x_min``/``x_max`` (n_labels,) and
``wavelength`` (n_pixels,). Labels are scaled to [-0.5, 0.5] as (x - x_min) / (x_max - x_min) - 0.5; hidden
layers use The Payne's leaky ReLU, z for z > 0 and 0.01 z otherwise (``spectral_model.leaky_relu``); the
output layer is linear and gives the continuum-normalised flux at ``wavelength``. The Payne's published nets
have two hidden layers; any depth K + 1 >= 1 is accepted here. The wavelengths are taken as vacuum Angstrom
(The Payne's APOGEE nets are vacuum; convert an air-wavelength net with ``lines.air_to_vacuum`` first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from neurotrain.errors import DataError

#: negative-side slope of The Payne's leaky ReLU
LEAKY_SLOPE = 0.01


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file: expected a Payne .npz emulator (got no such file)") from None
    except Exception as e:  # zip/pickle/format errors of a corrupt or foreign file
        raise DataError(f"{path}: file: expected a Payne .npz emulator (got {type(e).__name__}: {e})") from None


class PayneEmulator(nn.Module):
    """The MLP of a Payne ``.npz``: ``forward(labels (B, n_labels) physical) -> (B, n_wave)`` normalised flux."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], x_min: torch.Tensor,
                 x_max: torch.Tensor, wavelength: torch.Tensor) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for w, b in zip(weights, biases):
            lin = nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            lin.requires_grad_(False)
            self.layers.append(lin)
        self.register_buffer("x_min", x_min)
        self.register_buffer("x_max", x_max)
        self.register_buffer("wavelength", wavelength)

    @property
    def n_labels(self) -> int:
        return int(self.x_min.numel())

    @classmethod
    def from_npz(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "PayneEmulator":
        """Read The Payne's ``.npz``; a missing array or a shape that does not chain is a ``DataError``
        naming the file and the array."""
        path = Path(path)
        arrs = _load(path)
        n = 0
        while f"w_array_{n}" in arrs:
            n += 1
        need = ["w_array_0", "b_array_0", "x_min", "x_max", "wavelength"] + [f"b_array_{k}" for k in range(n)]
        for k in need:
            if k not in arrs:
                raise DataError(f"{path}: {k}: expected this array in a Payne emulator (got {sorted(arrs)})")
        x_min, x_max = arrs["x_min"].ravel(), arrs["x_max"].ravel()
        wave = arrs["wavelength"].ravel()
        if x_max.shape != x_min.shape:
            raise DataError(f"{path}: x_max: expected shape {x_min.shape} like x_min (got {x_max.shape})")
        if np.any(x_max <= x_min):
            raise DataError(f"{path}: x_max: expected x_max > x_min for every label (got {x_max} vs {x_min})")
        width = x_min.size
        ws, bs = [], []
        for k in range(n):
            w, b = arrs[f"w_array_{k}"], arrs[f"b_array_{k}"].ravel()
            if w.ndim != 2 or w.shape[1] != width:
                raise DataError(f"{path}: w_array_{k}: expected shape (n_out, {width}) (got {w.shape})")
            if b.shape != (w.shape[0],):
                got = arrs[f"b_array_{k}"].shape
                raise DataError(f"{path}: b_array_{k}: expected shape ({w.shape[0]},) (got {got})")
            ws.append(torch.as_tensor(w, dtype=dtype))
            bs.append(torch.as_tensor(b, dtype=dtype))
            width = w.shape[0]
        if width != wave.size:
            raise DataError(f"{path}: wavelength: expected {width} values, one per output pixel (got {wave.size})")
        if wave.size < 2 or np.any(np.diff(wave) <= 0):
            raise DataError(f"{path}: wavelength: expected >= 2 strictly increasing values "
                            f"(got {wave.size} values or a non-increasing step)")
        return cls(ws, bs, torch.as_tensor(x_min, dtype=dtype), torch.as_tensor(x_max, dtype=dtype),
                   torch.as_tensor(wave, dtype=torch.float64))

    def scale(self, labels: torch.Tensor) -> torch.Tensor:
        """Physical labels -> The Payne's scaled labels in [-0.5, 0.5]."""
        return (labels - self.x_min) / (self.x_max - self.x_min) - 0.5

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        h = self.scale(labels.to(self.x_min.dtype))
        for i, lin in enumerate(self.layers):
            h = lin(h)
            if i < len(self.layers) - 1:
                h = torch.nn.functional.leaky_relu(h, LEAKY_SLOPE)
        return h

    def resample(self, grid: torch.Tensor) -> "ResampledEmulator":
        """This emulator with its output linearly interpolated onto ``grid`` (M,) (vacuum A); pixels outside
        the emulator's wavelength range are continuum (1.0) and flagged False in ``covered``."""
        return ResampledEmulator(self, torch.as_tensor(grid, dtype=torch.float64))


class ResampledEmulator(nn.Module):
    """A ``PayneEmulator`` whose output lies on another wavelength grid (a fixed sparse linear map)."""

    def __init__(self, emulator: PayneEmulator, grid: torch.Tensor) -> None:
        super().__init__()
        self.emulator = emulator
        src = emulator.wavelength.to(grid.device)
        j = torch.searchsorted(src, grid).clamp(1, max(src.numel() - 1, 1))
        lo, hi = src[j - 1], src[j]
        frac = ((grid - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1)
        covered = (grid >= src[0]) & (grid <= src[-1])
        self.register_buffer("idx", j)
        self.register_buffer("frac", frac)  # float64; cast to the flux dtype in forward
        self.register_buffer("covered", covered)
        self.register_buffer("grid", grid)

    @property
    def n_labels(self) -> int:
        return self.emulator.n_labels

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        flux = self.emulator(labels)
        f = self.frac.to(flux.dtype)
        out = flux[:, self.idx - 1] * (1 - f) + flux[:, self.idx] * f
        return torch.where(self.covered, out, torch.ones_like(out))
