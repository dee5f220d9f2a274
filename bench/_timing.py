"""Timing helpers shared by the bench scripts (``run_all.py`` skips files that start with ``_``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (compilation, cuDNN autotuning)."""
    for _ in range(warmup):
        fn()
    sync(device)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - t0)
    runs.sort()
    return runs[len(runs) // 2]


def peak_mem_gb(device: torch.device) -> float | None:
    """Peak allocated device memory since the last :func:`reset_mem`, GiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def reset_mem(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def write_report(res: dict, out: Path | None) -> None:
    """Print ``res`` as JSON and as a markdown table; also write the JSON to ``out`` when given."""
    print(json.dumps(res, indent=2))
    print()
    print("| quantity | value |")
    print("| --- | --- |")
    for k, v in res.items():
        print(f"| {k} | {v} |")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
