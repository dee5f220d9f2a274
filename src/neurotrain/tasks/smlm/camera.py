"""Camera models: expected photons per pixel -> ADU like a real camera, and back.

EMCCD (Hirsch et al., PLoS ONE 8:e53671, 2013; Mortensen et al., Nat. Methods 7:377, 2010):
photo-electrons n ~ Poisson(QE * photons + spurious charge); the multiplication register gives
Gamma(n, EM gain) electrons (excess-noise factor 2 at high gain); Gaussian read noise is added;
ADU = electrons / (e-/ADU) + baseline. Mean ADU = baseline + g (QE lambda + c) / k and variance
(2 g^2 (QE lambda + c) + sigma_read^2) / k^2.

sCMOS (Huang et al., Nat. Methods 10:653, 2013): n ~ Poisson(QE * photons), per-pixel
Gaussian read noise, per-pixel gain (e-/ADU) and offset (ADU), maps loadable from files.

Presets: DECODE's SMLM-challenge EMCCD (baseline 100 ADU, 45 e-/ADU, EM gain 300, read noise
74.4 e-, spurious charge 0.002, QE 0.9 of the challenge data) are the schema defaults.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from neurotrain.errors import ConfigError, DataError
from neurotrain.tasks.smlm.tensors import sample_gamma

if TYPE_CHECKING:
    from neurotrain.tasks.smlm.config import CameraSection


@lru_cache(maxsize=16)
def _load_map(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config error: camera map {p}: file not found")
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(p)
        elif p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
        else:
            raise DataError(f"{p}: camera map must be .npy or .tif (got {p.suffix!r})")
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: cannot read camera map: {exc}") from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"{p}: camera map must be a 2D image (got shape {arr.shape})")
    return arr


def camera_map(cam: CameraSection, field: str, value: float, height: int, width: int,
               device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A per-pixel parameter map (top-left ``height x width`` crop of the file) or the scalar ``value``."""
    path = getattr(cam, field)
    if path is None:
        return torch.tensor(value, device=device, dtype=dtype)
    arr = _load_map(str(path))
    if arr.shape[0] < height or arr.shape[1] < width:
        raise DataError(f"{path}: camera.{field} is {arr.shape}, smaller than the frames ({height}, {width})")
    return torch.as_tensor(arr[:height, :width], device=device, dtype=dtype)


def camera_forward(photons: torch.Tensor, cam: CameraSection, generator: torch.Generator | None) -> torch.Tensor:
    """Expected photons per pixel (``[..., H, W]``) -> one noisy camera read-out in ADU."""
    dev, dt = photons.device, photons.dtype
    h, w = photons.shape[-2:]
    lam = photons.clamp(min=0)
    if cam.kind == "ideal":
        return torch.poisson(lam, generator=generator)
    if cam.kind == "emccd":
        n = torch.poisson(lam * cam.qe + cam.spurious_charge, generator=generator)
        amp = sample_gamma(n.clamp(min=1), generator) * cam.em_gain
        e = torch.where(n > 0, amp, torch.zeros_like(amp))
        e = e + cam.read_noise_e * torch.randn(lam.shape, generator=generator, device=dev, dtype=dt)
        adu = e / cam.e_per_adu + cam.baseline_adu
    else:  # scmos
        n = torch.poisson(lam * cam.qe, generator=generator)
        sig = camera_map(cam, "read_noise_map", cam.read_noise_e, h, w, dev, dt)
        gain = camera_map(cam, "gain_map", cam.e_per_adu, h, w, dev, dt)
        off = camera_map(cam, "offset_map", cam.baseline_adu, h, w, dev, dt)
        e = n + sig * torch.randn(lam.shape, generator=generator, device=dev, dtype=dt)
        adu = e / gain + off
    if cam.quantize:
        adu = torch.round(adu).clamp(0, 65535)
    return adu


def camera_backward(adu: torch.Tensor, cam: CameraSection) -> torch.Tensor:
    """ADU -> photon estimate per pixel: (ADU - baseline) * e-/ADU / EM gain / QE."""
    if cam.kind == "ideal":
        return adu
    h, w = adu.shape[-2:]
    dev, dt = adu.device, adu.dtype
    if cam.kind == "emccd":
        return (adu - cam.baseline_adu) * cam.e_per_adu / cam.em_gain / cam.qe
    gain = camera_map(cam, "gain_map", cam.e_per_adu, h, w, dev, dt)
    off = camera_map(cam, "offset_map", cam.baseline_adu, h, w, dev, dt)
    return (adu - off) * gain / cam.qe


def excess_noise_factor(cam: CameraSection) -> float:
    """Variance inflation of the photon signal: 2 for an EMCCD at high gain, 1 otherwise."""
    return 2.0 if cam.kind == "emccd" else 1.0
