"""Shared pieces of the fuzz suite: tiny valid files to damage, and the one-line-error assertion."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neurotrain.errors import NeurotrainError


def assert_one_line(exc: BaseException, path: str | Path, cls: type[BaseException] = NeurotrainError) -> None:
    """``exc`` is our error type, one line, naming ``path``'s file."""
    assert isinstance(exc, cls), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert "\n" not in text, text
    assert Path(path).name in text, text


def raises_one_line(fn: Any, path: str | Path, cls: type[BaseException] = NeurotrainError) -> str:
    """Call ``fn``; it must raise ``cls`` with one line naming ``path``. Returns the message."""
    with pytest.raises(cls) as info:
        fn()
    assert_one_line(info.value, path, cls)
    return str(info.value)


def no_output_left(folder: Path, before: set[str]) -> None:
    """Nothing new in ``folder`` (a failed read or write leaves no file, temp or part file behind)."""
    now = set(os.listdir(folder))
    assert now <= before, sorted(now - before)


def minimal_tiff(width: int, height: int, bits: int = 16, data: bytes = b"\0" * 64,
                 samples: int = 1, photometric: int = 1, sample_format: int = 1) -> bytes:
    """A classic little-endian TIFF with one strip and the declared size (whatever data follows):
    header ``II*\\0``, one IFD of baseline tags (TIFF 6.0: 256 width, 257 length, 258 bits, 259 compression,
    262 photometric, 273 strip offsets, 277 samples, 278 rows per strip, 279 strip bytes, 339 sample format)."""
    count = (width * height * bits // 8 * samples) & 0xFFFFFFFF
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 1), (262, 3, 1, photometric),
               (273, 4, 1, 0), (277, 3, 1, samples), (278, 4, 1, height), (279, 4, 1, count), (339, 3, 1, sample_format)]
    start = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, n, value in entries:
        value = start if tag == 273 else value
        out += struct.pack("<HHI", tag, typ, n) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
    return out + struct.pack("<I", 0) + data


def seeded_bytes(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def save_ckpt(path: Path, cfg, state: dict | None = None, **extra) -> Path:
    """A checkpoint as ``load_model`` reads it: ``state_dict`` (``model.*``) and the embedded config."""
    import torch

    from neurotrain.config import config_to_dict
    from neurotrain.registry import TASKS

    if state is None:
        torch.manual_seed(0)
        state = {f"model.{k}": v for k, v in TASKS.get(cfg.task).build_model(cfg).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": config_to_dict(cfg)}, **extra}, path)
    return path
