"""The seed's ``EventVoxelDataset``: paired H5 files -> (input, target) voxel segments.

Noisy and clean files are paired by name (``composed_00001_bg_flare.h5`` <->
``composed_00001_bg_light.h5``, or identical names). Every segment of
``segment_duration_us`` (on the absolute grid) that holds events in the noisy file is one
sample. Only the current file pair is cached (the seed's "smart single-file cache"), so
memory stays at one file pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from neurotrain.errors import DataError
from neurotrain.tasks.deflare.events import EventChunk
from neurotrain.tasks.deflare.h5read import inspect_events, list_h5, read_events
from neurotrain.tasks.deflare.simulate import light_mask_from_attrs
from neurotrain.tasks.deflare.voxel import events_to_voxel


def clean_name_for(noisy_name: str) -> list[str]:
    """Candidate clean-file names for a noisy file name (seed naming first)."""
    cands = []
    if "bg_flare" in noisy_name:
        cands.append(noisy_name.replace("bg_flare", "bg_light"))
    if "flare" in noisy_name:
        cands.append(noisy_name.replace("flare", "light"))
    cands.append(noisy_name)
    return cands


def pair_files(noisy_dir: Path, clean_dir: Path) -> list[tuple[Path, Path]]:
    """(noisy, clean) pairs; a noisy file without a clean partner is an error."""
    pairs = []
    for f in list_h5(noisy_dir):
        for name in clean_name_for(f.name):
            c = Path(clean_dir) / name
            if c.is_file():
                pairs.append((f, c))
                break
        else:
            raise DataError(f"{f}: no clean partner in {clean_dir} (expected one of {clean_name_for(f.name)})")
    return pairs


class EventVoxelDataset(Dataset):
    """Items: ``{"input": (1, B, H, W), "target": (1, B, H, W), "light_mask": (1, 1, H, W)}``."""

    def __init__(self, noisy_dir: Path, clean_dir: Path, cfg: Any) -> None:
        self.cfg = cfg
        self.pairs = pair_files(Path(noisy_dir), Path(clean_dir))
        if not self.pairs:
            raise DataError(f"{noisy_dir}: no .h5 files")
        D = cfg.voxel.segment_duration_us
        self.index: list[tuple[int, int]] = []
        self.sizes: list[tuple[int, int]] = []
        for i, (f, _) in enumerate(self.pairs):
            info = inspect_events(f)
            self.sizes.append(tuple(info.sensor_size) if info.sensor_size else tuple(cfg.voxel.sensor_size))
            ev = read_events(f)
            for k in np.unique(ev.t // D).tolist():
                self.index.append((i, int(k)))
        if len(set(self.sizes)) > 1:
            raise DataError(f"{noisy_dir}: files have different sensor sizes {sorted(set(self.sizes))}; batch them separately")
        self._cur: int | None = None
        self._cache: tuple[EventChunk, EventChunk, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def _load(self, i: int) -> tuple[EventChunk, EventChunk, dict[str, Any]]:
        if self._cur != i:
            self._cache = None
            f, c = self.pairs[i]
            size = self.sizes[i]
            self._cache = (read_events(f, size), read_events(c, size), inspect_events(f).attrs)
            self._cur = i
        assert self._cache is not None
        return self._cache

    def _voxel(self, ev: EventChunk, start: int, size: tuple[int, int]) -> torch.Tensor:
        D = self.cfg.voxel.segment_duration_us
        a, b = np.searchsorted(ev.t, [start, start + D], side="left")
        tt = ev.slice(int(a), int(b)).to_torch()
        v = events_to_voxel(
            tt["t"], tt["x"], tt["y"], tt["p"], num_bins=self.cfg.voxel.num_bins, sensor_size=size,
            duration_us=D, t_start=start, method=self.cfg.voxel.method,
        )
        return v.unsqueeze(0)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        i, k = self.index[j]
        noisy, clean, attrs = self._load(i)
        size = self.sizes[i]
        start = k * self.cfg.voxel.segment_duration_us
        m = light_mask_from_attrs(attrs, size)
        mask = (m if m is not None else torch.zeros(size, dtype=torch.bool)).float()[None, None]
        return {"input": self._voxel(noisy, start, size), "target": self._voxel(clean, start, size), "light_mask": mask}
