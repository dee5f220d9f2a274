"""Movie -> localisations with the network or the baseline, chunked under a memory cap.

Frames are read in slices (memory-mapped TIFF or an in-memory tensor), converted from ADU to
photons on the device, and the frame window is built per slice with a halo of ``window // 2``
frames (movie ends repeat the edge frame). Double U-Nets encode every frame once per slice and
reuse the cached per-frame features for the three windows that contain it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurotrain.tasks.smlm.camera import camera_backward
from neurotrain.tasks.smlm.postprocess import localise, locs_to_frame


class WindowSource:
    """Slices ``[a:b]`` of a frame source returned with ``halo`` extra frames on each side."""

    def __init__(self, frames: Any, halo: int) -> None:
        self.frames, self.halo = frames, halo

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, idx: slice) -> np.ndarray | torch.Tensor:
        start, stop, _ = idx.indices(len(self))
        n, h = len(self), self.halo
        lo, hi = max(start - h, 0), min(stop + h, n)
        chunk = self.frames[lo:hi]
        pad_lo, pad_hi = lo - (start - h), (stop + h) - hi
        if pad_lo == 0 and pad_hi == 0:
            return chunk
        if isinstance(chunk, torch.Tensor):
            idx_t = torch.cat([torch.zeros(pad_lo, dtype=torch.long), torch.arange(len(chunk)),
                               torch.full((pad_hi,), len(chunk) - 1, dtype=torch.long)])
            return chunk[idx_t]
        return np.pad(np.asarray(chunk), ((pad_lo, pad_hi), (0, 0), (0, 0)), mode="edge")


def network_fn(model: nn.Module, cfg: Any, threshold: float | None = None) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """A function: ADU frames with halo ``[n + 2h, H, W]`` -> localisations of the ``n`` centre frames."""
    from neurotrain.engine.inference import autocast

    window = cfg.simulate.window

    def fn(adu: torch.Tensor) -> dict[str, torch.Tensor]:
        x = camera_backward(adu.float(), cfg.camera) / cfg.model.input_scale
        with autocast(x.device, cfg.inference.precision):
            if hasattr(model, "frame_features"):
                feats = model.frame_features(x[None])[0]  # [T, C, H, W], each frame encoded once
                win = feats.unfold(0, window, 1).permute(0, 4, 1, 2, 3)  # [n, window, C, H, W]
                out = model.from_features(win)
            else:
                out = model(x.unfold(0, window, 1).permute(0, 3, 1, 2))
        return localise(out.float(), cfg, threshold=threshold)

    return fn


def baseline_fn(cfg: Any) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """A function: ADU frames ``[n, H, W]`` -> baseline localisations (frames relative to the slice)."""
    from neurotrain.tasks.smlm.baseline import localise_baseline

    def fn(adu: torch.Tensor) -> dict[str, torch.Tensor]:
        return localise_baseline(camera_backward(adu.float(), cfg.camera), cfg)

    return fn


def localise_movie(frames: Any, cfg: Any, model: nn.Module | None = None, *, threshold: float | None = None,
                   device: str | torch.device | None = None, sink: Callable[[pd.DataFrame], None] | None = None,
                   progress: bool = False) -> pd.DataFrame | None:
    """Localise a whole movie (``frames`` sliceable, ADU) with ``model`` or, when ``None``, the baseline.

    Batches are sized by ``run_batched`` under ``inference.max_memory_gb``. Returns the table
    (canonical columns), or streams chunk tables to ``sink`` and returns ``None``.
    """
    from neurotrain.engine.inference import resolve_device, run_batched

    dev = resolve_device(device or cfg.inference.device, model if model is not None else (lambda x: x))
    if model is not None:
        model = model.to(dev).eval()
        fn = network_fn(model, cfg, threshold)
        src: Any = WindowSource(frames, cfg.simulate.window // 2)
    else:
        fn = baseline_fn(cfg)
        src = frames
    parts: list[pd.DataFrame] = []

    def collect(out: dict[str, torch.Tensor], start: int) -> None:
        out = dict(out)
        out["frame"] = out["frame"] + start
        df = locs_to_frame(out)
        if sink is not None:
            sink(df)
        else:
            parts.append(df)

    run_batched(fn, src, max_memory_gb=cfg.inference.max_memory_gb, device=dev,
                batch_size=cfg.inference.batch_size, sink=collect, progress=progress)
    if sink is not None:
        return None
    return pd.concat(parts, ignore_index=True) if parts else locs_to_frame(localise(
        torch.zeros(0, 6, 1, 1), cfg))
