"""Choosing the batch size of inference under a memory cap (:func:`choose_batch_size`), the device to run
on (:func:`resolve_device`), and the out-of-memory back-off (:func:`halve_after_oom`).

How the batch size is chosen (:func:`choose_batch_size`):

* CUDA: the cap is first lowered to what the device can still give (free memory plus
  the caching allocator's unused reserve). One unmeasured warm-up call (so that one-off
  allocations such as cuBLAS workspaces are not mistaken for per-sample cost), then two
  probe calls (halving ``k`` if the probe itself runs out of memory) at batch 1 and
  batch ``k`` measuring ``torch.cuda.max_memory_allocated`` minus the memory allocated
  before the call; a straight line ``fixed + per_sample * b`` through the two points
  gives the largest ``b`` with ``fixed + per_sample * b <= 0.9 * cap`` (10 % headroom for
  allocator fragmentation).
* CPU with an ``nn.Module``: a probe call with forward hooks on every submodule sums
  the bytes of the probe input and of every distinct module output (outputs covering the
  same memory, as in-place ops and ``flatten`` give, are counted once). That is the memory the
  forward pass would hold if nothing were freed early, so it is an upper bound.
* CPU with a plain callable: (input bytes + output bytes) x ``CALLABLE_SAFETY_FACTOR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neurotrain.engine.batching import call, input_row_bytes, length_of, new_bytes, slice_to, tensors_in
from neurotrain.errors import NeurotrainError

BYTES_PER_GB = 1e9
CUDA_HEADROOM = 0.9
"""Fraction of the cap a CUDA batch may use by the linear probe model."""
CALLABLE_SAFETY_FACTOR = 4.0
"""Multiplier on (input + output) bytes when ``fn`` is not an ``nn.Module`` on CPU."""
DEFAULT_PROBE_SIZE = 4
VERIFY_ROUNDS = 3
"""CUDA: how many times the chosen batch size is measured and shrunk to fit the cap."""


class InferenceMemoryError(NeurotrainError):
    """Even a batch of one sample does not fit in memory."""


@dataclass(frozen=True)
class BatchPlan:
    """The outcome of :func:`choose_batch_size`.

    ``per_sample_bytes`` and ``fixed_bytes`` are the measured cost model (bytes),
    ``method`` says how they were measured: ``"given"``, ``"cuda-probe"``,
    ``"module-hooks"`` or ``"io-estimate"``.
    """

    batch_size: int
    per_sample_bytes: float
    fixed_bytes: float
    cap_bytes: float
    method: str


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA's, or a ``RuntimeError`` saying "out of memory")."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def resolve_device(device: str | torch.device | None, fn: Callable[..., Any], inputs: Any = None) -> torch.device:
    """``None``: the device of ``fn``'s parameters, else of a tensor input, else CPU.
    ``"auto"``: CUDA when available, else CPU. Anything else: ``torch.device(device)``."""
    if device is None:
        if isinstance(fn, nn.Module):
            for p in fn.parameters():
                return p.device
            for b in fn.buffers():
                return b.device
        if isinstance(inputs, torch.Tensor):
            return inputs.device
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cuda_available_bytes(device: torch.device) -> float:
    """Bytes a batch can still get on ``device``: free device memory plus memory that
    PyTorch's caching allocator has reserved but not handed out."""
    free, _total = torch.cuda.mem_get_info(device)
    unused_reserved = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return float(free + max(0, unused_reserved))


def halve_after_oom(exc: BaseException, size: int, dev: torch.device, max_memory_gb: float, where: str = "") -> int:
    """The batch size to retry with after ``exc``; re-raises anything that is not out-of-memory,
    and gives up with one line when a single sample did not fit."""
    if not (is_oom(exc) or isinstance(exc, MemoryError)):
        raise exc
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    if size <= 1:
        raise InferenceMemoryError(
            f"inference: one sample does not fit in memory on {dev}{where} "
            f"(max_memory_gb={max_memory_gb}); use a smaller input or another device"
        ) from None
    return max(1, size // 2)


def probe_cuda(fn: Callable[..., Any], inputs: Any, sizes: list[int], device: torch.device) -> list[int]:
    """Peak CUDA bytes allocated by one call of ``fn`` on the first ``b`` rows, for each ``b`` in ``sizes``."""
    peaks = []
    for b in sizes:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = call(fn, slice_to(inputs, 0, b, device))
        torch.cuda.synchronize(device)
        peaks.append(int(torch.cuda.max_memory_allocated(device) - base))
        del out
    return peaks


def choose_batch_size(
    fn: Callable[..., Any],
    inputs: Any,
    *,
    max_memory_gb: float,
    device: str | torch.device | None = None,
    probe_size: int = DEFAULT_PROBE_SIZE,
    prefetch: bool | None = None,
) -> BatchPlan:
    """Measure the memory one sample costs and pick the largest batch that fits the cap.

    Runs ``fn`` on the first rows of ``inputs`` (under ``torch.inference_mode``). See the
    module docstring for the three measuring methods. With ``prefetch`` (default: on for
    CUDA, as in :func:`run_batched`) one more input row per sample is counted, for the
    next batch that is already on the device. The batch size is clamped to
    ``[1, len(inputs)]``.
    """
    if max_memory_gb <= 0:
        raise ValueError(f"max_memory_gb: expected > 0 (got {max_memory_gb})")
    n = length_of(inputs)
    cap = float(max_memory_gb) * BYTES_PER_GB
    if n == 0:
        return BatchPlan(1, 0.0, 0.0, cap, "empty")
    dev = resolve_device(device, fn, inputs)
    k = max(1, min(n, probe_size))
    if prefetch is None:
        prefetch = dev.type == "cuda"
    # with prefetching, the next batch's input sits on the device next to the current batch
    extra = float(input_row_bytes(inputs)) if prefetch else 0.0

    def clamp(b: float) -> int:
        return int(max(1, min(n, math.floor(b))))

    with torch.inference_mode():
        if dev.type == "cuda":
            cap = min(cap, cuda_available_bytes(dev))
            while True:
                try:
                    call(fn, slice_to(inputs, 0, 1, dev))  # warm-up: one-off workspaces, lazy inits
                    sizes = [1, k] if k > 1 else [1]
                    peaks = probe_cuda(fn, inputs, sizes, dev)
                    break
                except (RuntimeError, MemoryError) as exc:
                    k = halve_after_oom(exc, k, dev, max_memory_gb, " while probing")
            if len(peaks) == 2 and peaks[1] > peaks[0]:
                per = (peaks[1] - peaks[0]) / (k - 1)
                fixed = max(0.0, peaks[0] - per)
            else:
                per, fixed = peaks[-1] / sizes[-1], 0.0
            per = max(per, 1.0) + extra
            b = clamp((CUDA_HEADROOM * cap - fixed) / per)
            # Kernels pick workspaces by batch size (cuDNN), so the line through small probes
            # can undershoot: measure the chosen size itself and shrink until it fits.
            for _ in range(VERIFY_ROUNDS):
                if b <= k:
                    break
                try:
                    (peak,) = probe_cuda(fn, inputs, [b], dev)
                except (RuntimeError, MemoryError) as exc:
                    b = halve_after_oom(exc, b, dev, max_memory_gb, " while probing")
                    continue
                used = peak + extra * b
                if used <= CUDA_HEADROOM * cap:
                    break
                b = clamp(b * CUDA_HEADROOM * cap / used)
            return BatchPlan(b, per, fixed, cap, "cuda-probe")

        batch = slice_to(inputs, 0, k, dev)
        seen: set[tuple[int, int]] = set()
        in_bytes = new_bytes(tensors_in(batch), seen)
        if isinstance(fn, nn.Module):
            acts: list[int] = [0]

            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                acts[0] += new_bytes(tensors_in(out), seen)

            handles = [m.register_forward_hook(hook) for m in fn.modules()]
            try:
                out = call(fn, batch)
            finally:
                for h in handles:
                    h.remove()
            total = in_bytes + acts[0] + new_bytes(tensors_in(out), seen)
            method = "module-hooks"
        else:
            out = call(fn, batch)
            total = (in_bytes + new_bytes(tensors_in(out), seen)) * CALLABLE_SAFETY_FACTOR
            method = "io-estimate"
        per = max(total / k, 1.0) + extra
        return BatchPlan(clamp(cap / per), per, 0.0, cap, method)
