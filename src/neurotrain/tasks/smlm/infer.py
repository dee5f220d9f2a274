"""Movie -> localisations with the network or the baseline, chunked under a memory cap.

Frames are read in slices (memory-mapped TIFF or an in-memory tensor), converted from ADU to
photons on the device, and the frame window is built per slice with a halo of ``window // 2``
frames (movie ends repeat the edge frame). Double U-Nets encode every frame once per slice and
reuse the cached per-frame features for the three windows that contain it. Every table carries
the PSF model's width at each localisation (``PSF_COLUMNS``); with ``mc_samples`` (Monte-Carlo
dropout, see :class:`NetworkLocaliser`) also ``MC_COLUMNS``.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurotrain.errors import ConfigError
from neurotrain.tasks.smlm.camera import camera_backward
from neurotrain.tasks.smlm.postprocess import (
    LOC_COLUMNS,
    MC_COLUMNS,
    PSF_COLUMNS,
    localise,
    locs_to_frame,
    with_psf_widths,
)


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


class NetworkLocaliser(nn.Module):
    """ADU frames with halo ``[n + 2h, H, W]`` -> localisations of the ``n`` centre frames.

    An ``nn.Module`` wrapping the network, so that :func:`neurotrain.engine.inference.run_batched`
    sizes batches by the memory of every submodule's output (on the CPU) or by measuring (CUDA),
    which includes the ``mc_samples``-fold head activations of Monte-Carlo dropout.

    With ``mc_samples >= 2`` (a :class:`SigmaMUNetWithUncertainty`) the frame features and the union
    U-Net run once, its output is repeated ``mc_samples`` times along the batch axis and the heads
    (after the dropout layer) run in one call with independent masks per copy; the localisations come from the
    mean maps and carry the samples' standard deviation (``MC_COLUMNS``).
    """

    def __init__(self, model: nn.Module, cfg: Any, threshold: float | None = None, mc_samples: int = 0) -> None:
        super().__init__()
        self.model, self.cfg, self.threshold = model, cfg, threshold
        self.mc_samples = check_mc_samples(model, cfg, mc_samples)
        self.train(model.training)  # run_batched restores the wrapper's mode onto the network afterwards

    def forward(self, adu: torch.Tensor) -> dict[str, torch.Tensor]:
        from neurotrain.engine.inference import autocast

        cfg, model, window = self.cfg, self.model, self.cfg.simulate.window
        x = camera_backward(adu.float(), cfg.camera) / cfg.model.input_scale
        spread = None
        with autocast(x.device, cfg.inference.precision):
            if hasattr(model, "frame_features"):
                feats = model.frame_features(x[None])[0]  # [T, C, H, W], each frame encoded once
                win = feats.unfold(0, window, 1).permute(0, 4, 1, 2, 3)  # [n, window, C, H, W]
                if self.mc_samples:
                    out, spread = self._mc(win)
                else:
                    out = model.from_features(win)
            else:
                out = model(x.unfold(0, window, 1).permute(0, 3, 1, 2))
        return with_psf_widths(localise(out.float(), cfg, threshold=self.threshold, spread=spread), cfg)

    def _mc(self, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the union U-Net is deterministic: computed once, only the heads are sampled
        return self.model.sample_heads(self.model.union_features(win), self.mc_samples)


def check_mc_samples(model: nn.Module, cfg: Any, mc_samples: int) -> int:
    """``mc_samples`` if MC dropout can run on ``model`` (0 = off); else a one-line ConfigError."""
    from neurotrain.tasks.smlm.models import SigmaMUNetWithUncertainty

    if mc_samples == 0:
        return 0
    if mc_samples < 2:
        raise ConfigError(f"config error: predict.mc_samples: expected 0 (off) or >= 2 (got {mc_samples})")
    if not isinstance(model, SigmaMUNetWithUncertainty):
        raise ConfigError(f"config error: predict.mc_samples={mc_samples} needs model.name "
                          f"SigmaMUNetWithUncertainty (got {type(model).__name__})")
    if not any(isinstance(m, nn.Dropout2d) and m.p > 0 for m in model.modules()):
        raise ConfigError(f"config error: predict.mc_samples={mc_samples}: the network has no dropout "
                          f"(model.dropout={cfg.model.dropout}), MC samples would all be equal")
    return mc_samples


def network_fn(model: nn.Module, cfg: Any, threshold: float | None = None, mc_samples: int = 0) -> NetworkLocaliser:
    """A callable module: ADU frames with halo ``[n + 2h, H, W]`` -> localisations of the ``n``
    centre frames (see :class:`NetworkLocaliser`)."""
    return NetworkLocaliser(model, cfg, threshold, mc_samples)


def baseline_fn(cfg: Any) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """A function: ADU frames ``[n, H, W]`` -> baseline localisations (frames relative to the slice)."""
    from neurotrain.tasks.smlm.baseline import localise_baseline

    def fn(adu: torch.Tensor) -> dict[str, torch.Tensor]:
        return localise_baseline(camera_backward(adu.float(), cfg.camera), cfg)

    return fn


_COMPILED_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def compiled_for_inference(model: nn.Module, mode: str = "default") -> nn.Module:
    """A module sharing ``model``'s weights with its U-Nets (or, for single-U-Net models, itself) wrapped
    by ``torch.compile`` (``mode`` as torch.compile's; bench/smlm.py times the others): predict calls
    ``frame_features`` / ``from_features``, which run the compiled submodules. ``model`` itself is left
    as it was, so its state dict keeps its keys (no ``_orig_mod.``) for saving or loading elsewhere."""
    def compiled(m: nn.Module) -> nn.Module:
        return m if hasattr(m, "_orig_mod") else torch.compile(m, dynamic=False, mode=mode)  # type: ignore[return-value]

    parts = [n for n in ("shared_unet", "union_unet") if isinstance(getattr(model, n, None), nn.Module)]
    if not parts:
        return compiled(model)
    if all(hasattr(getattr(model, n), "_orig_mod") for n in parts):
        return model
    # evaluate localises several times with one model: one compiled copy per model and mode, held
    # outside the model (an attribute would travel into deepcopy / pickling of it)
    cache = _COMPILED_COPIES.setdefault(model, {})
    if mode not in cache:
        out = copy.copy(model)
        out._modules = dict(model._modules)
        for n in parts:
            out._modules[n] = compiled(model._modules[n])  # type: ignore[assignment]
        cache[mode] = out
    return cache[mode]


def localise_movie(frames: Any, cfg: Any, model: nn.Module | None = None, *, threshold: float | None = None,
                   device: str | torch.device | None = None, sink: Callable[[pd.DataFrame], None] | None = None,
                   progress: bool = False, mc_samples: int = 0) -> pd.DataFrame | None:
    """Localise a whole movie (``frames`` sliceable, ADU) with ``model`` or, when ``None``, the baseline.

    Batches are sized by ``run_batched`` under ``inference.max_memory_gb``. ``mc_samples`` >= 2
    runs Monte-Carlo dropout (network only; see :class:`NetworkLocaliser`). Returns the table
    (``LOC_COLUMNS`` + ``PSF_COLUMNS`` [+ ``MC_COLUMNS``]), or streams chunk tables to ``sink``
    and returns ``None``.
    """
    from neurotrain.engine.inference import resolve_device, run_batched

    dev = resolve_device(device or cfg.inference.device, model if model is not None else (lambda x: x))
    if model is not None:
        model = model.to(dev).eval()
        if dev.type == "cuda":
            # NHWC weights let cuDNN pick tensor-core kernels for the 48-channel convolutions:
            # 3.9x (64x64) and 1.2x (256x256) more frames/s on the H200 (bench/smlm.py)
            model = model.to(memory_format=torch.channels_last)
        if cfg.inference.compile:
            model = compiled_for_inference(model)
        fn: Any = network_fn(model, cfg, threshold, mc_samples)
        src: Any = WindowSource(frames, cfg.simulate.window // 2)
    else:
        if mc_samples:
            raise ConfigError(f"config error: predict.mc_samples={mc_samples} needs a network "
                              "(the baseline has no dropout)")
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
    if parts:
        return pd.concat(parts, ignore_index=True)
    cols = LOC_COLUMNS + PSF_COLUMNS + (MC_COLUMNS if mc_samples and model is not None else ())
    return locs_to_frame({c: torch.zeros(0, dtype=torch.long if c == "frame" else torch.float32) for c in cols})
