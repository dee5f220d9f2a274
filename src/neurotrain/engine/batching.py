"""Inputs and outputs of batched inference, whatever their structure: the shared length of a tensor, NumPy
array/memmap or h5py dataset (or a tuple/dict of them), slices of it moved (pinned, asynchronously) to the
device, the tensors inside an output, and the outputs put back together along axis 0. Also the byte
counting (views of the same memory counted once) that the batch-size planner uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

def length_of(inputs: Any) -> int:
    """The shared leading length of ``inputs`` (one array, or a tuple/dict of arrays of equal length)."""
    if isinstance(inputs, tuple):
        lengths = [len(x) for x in inputs]
    elif isinstance(inputs, Mapping):
        lengths = [len(x) for x in inputs.values()]
    else:
        return len(inputs)
    if not lengths:
        raise ValueError("run_batched: inputs is empty (no arrays given)")
    if len(set(lengths)) != 1:
        raise ValueError(f"run_batched: inputs must share the leading length (got {lengths})")
    return lengths[0]


def to_tensor(x: Any) -> torch.Tensor:
    """A tensor of ``x`` (NumPy/h5py slices copied only when not C-contiguous or read-only)."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = np.array(arr, order="C", copy=True)
    return torch.from_numpy(arr)


def slice_to(inputs: Any, start: int, stop: int, device: torch.device, pin: bool = False) -> Any:
    """Slice rows ``start:stop`` of ``inputs`` and move them to ``device``.

    With ``pin`` (CUDA targets) a host slice is first copied to page-locked memory so the
    host-to-device copy is asynchronous and overlaps with kernels already queued."""

    def one(x: Any) -> torch.Tensor:
        t = to_tensor(x[start:stop])
        if pin and device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
            t = t.pin_memory()
        if t.device != device:
            t = t.to(device, non_blocking=t.device.type == "cpu" and t.is_pinned())
        return t

    if isinstance(inputs, tuple):
        return tuple(one(x) for x in inputs)
    if isinstance(inputs, Mapping):
        return {k: one(v) for k, v in inputs.items()}
    return one(inputs)


def input_row_bytes(inputs: Any) -> int:
    """Bytes of one input row (all arrays of a tuple/dict input together)."""
    if isinstance(inputs, tuple):
        parts = [to_tensor(x[0:1]) for x in inputs]
    elif isinstance(inputs, Mapping):
        parts = [to_tensor(x[0:1]) for x in inputs.values()]
    else:
        parts = [to_tensor(inputs[0:1])]
    return sum(t.numel() * t.element_size() for t in parts)


def call(fn: Callable[..., Any], batch: Any) -> Any:
    """``fn(*batch)`` for a tuple input, else ``fn(batch)``."""
    return fn(*batch) if isinstance(batch, tuple) else fn(batch)


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside ``obj`` (nested dicts, lists and tuples), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_in(v)]
    return []


def map_tensors(obj: Any, f: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with ``f`` applied to every tensor inside it; the structure (dict, list, tuple, namedtuple) kept."""
    if isinstance(obj, torch.Tensor):
        return f(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, f) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(map_tensors(v, f) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, f) for v in obj)
    return obj


def concat(parts: list[Any]) -> Any:
    """Output batches of the same structure concatenated along axis 0, tensor by tensor."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        if first.ndim == 0:
            raise ValueError("run_batched: fn returned a 0-d tensor; outputs need a leading batch axis")
        return torch.cat(parts, dim=0)
    if isinstance(first, Mapping):
        return {k: concat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(concat([p[i] for p in parts]) for i in range(len(first))))
    if isinstance(first, (list, tuple)):
        return type(first)(concat([p[i] for p in parts]) for i in range(len(first)))
    raise TypeError(f"run_batched: cannot concatenate outputs of type {type(first).__name__}")


def new_bytes(tensors: list[torch.Tensor], seen: set[tuple[int, int]]) -> int:
    """Bytes of ``tensors`` not counted before: a tensor and its views that cover the same
    memory (in-place ops, ``flatten``, ``view``) are counted once."""
    total = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        try:
            key = (t.data_ptr(), nbytes)
        except RuntimeError:
            key = (id(t), nbytes)
        if key in seen or nbytes == 0:
            continue
        seen.add(key)
        total += nbytes
    return total


def to_cpu(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached on the CPU (no copy when it is there already)."""
    return t.detach().to("cpu")


def to_cpu_owned(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy that is an ordinary tensor (not an inference tensor)."""
    t = t.detach()
    return t.clone() if t.device.type == "cpu" else t.to("cpu")
