"""Batched inference over inputs of any length under a memory cap.

:func:`run_batched` runs a model (or any callable) over ``inputs`` — a torch tensor, a
NumPy array or memmap, an h5py dataset, or a tuple/dict of those sharing axis 0 — in
batches whose size is chosen to fit ``max_memory_gb`` of working memory, moving each
slice to the device, and either streams each output batch to a ``sink`` (flat memory,
for files larger than RAM) or returns the concatenation.

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

On CUDA the next batch is read and copied (from page-locked memory, asynchronously)
while the current one computes (``prefetch``), so file reads and host-to-device
transfers overlap with the kernels; its input bytes are counted against the cap.

If a batch still runs out of memory (``torch.cuda.OutOfMemoryError``, or a
``RuntimeError`` whose message contains "out of memory", as CPU allocators and other
backends raise), the batch size is halved and the same slice retried, down to 1.

``max_memory_gb`` counts decimal gigabytes (1 GB = 1e9 bytes) of memory used by one
batch on the device: the input slice, the intermediate activations and the output. The
model's own weights and, without a ``sink``, the concatenated result on the host are
not part of it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

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


# --------------------------------------------------------------------------- helpers


def autocast(device: torch.device | str, precision: str = "fp32") -> Any:
    """A context for inference arithmetic: ``bf16``/``fp16`` autocast on ``device``, or nothing
    for ``fp32``. On CUDA it also sets process-wide flags for inference: TF32 matmuls and
    convolutions (10-bit mantissa, the Ampere/Hopper default for cuDNN convolutions anyway)
    and cuDNN autotuning (``cudnn.benchmark``; the speeds in README "Measured" use it)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if precision == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and dtype is torch.float16:
        return nullcontext()  # CPU fp16 autocast is slower than fp32 and loses range
    return torch.autocast(device_type=device.type, dtype=dtype)


def optimise_for_inference(
    model: nn.Module, example: torch.Tensor, precision: str = "bf16", compile: bool = True
) -> Callable[[torch.Tensor], Any]:
    """A fast inference callable for ``model`` on ``example``'s device: a frozen copy in eval mode, its
    weights cast to bf16/fp16 on CUDA (no per-call autocast casts), compiled by torch.compile with
    Inductor's freezing (batch-norm folded into the convolutions, weights as constants). The first call
    compiles for ``example``'s shape; other batch sizes compile once more each. The model itself is not
    changed; outputs come back as float32."""
    device = example.device
    fast = copy.deepcopy(model).eval().to(device)
    for p in fast.parameters():
        p.requires_grad_(False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if device.type == "cuda" else None
    if dtype is not None:
        fast = fast.to(dtype)
    fn: Callable[..., Any] = fast
    if compile:
        fn = torch.compile(fast, dynamic=False)

    def run(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            out = fn(x.to(dtype) if dtype is not None else x)
        return _map(out, lambda t: t.float()) if dtype is not None else out

    if compile:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            run(example)
    return run


def _is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _length(inputs: Any) -> int:
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


def _to_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = np.array(arr, order="C", copy=True)
    return torch.from_numpy(arr)


def _slice_to(inputs: Any, start: int, stop: int, device: torch.device, pin: bool = False) -> Any:
    """Slice rows ``start:stop`` of ``inputs`` and move them to ``device``.

    With ``pin`` (CUDA targets) a host slice is first copied to page-locked memory so the
    host-to-device copy is asynchronous and overlaps with kernels already queued."""

    def one(x: Any) -> torch.Tensor:
        t = _to_tensor(x[start:stop])
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


def _input_row_bytes(inputs: Any) -> int:
    """Bytes of one input row (all arrays of a tuple/dict input together)."""
    if isinstance(inputs, tuple):
        parts = [_to_tensor(x[0:1]) for x in inputs]
    elif isinstance(inputs, Mapping):
        parts = [_to_tensor(x[0:1]) for x in inputs.values()]
    else:
        parts = [_to_tensor(inputs[0:1])]
    return sum(t.numel() * t.element_size() for t in parts)


def _call(fn: Callable[..., Any], batch: Any) -> Any:
    return fn(*batch) if isinstance(batch, tuple) else fn(batch)


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _map(obj: Any, f: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return f(obj)
    if isinstance(obj, Mapping):
        return {k: _map(v, f) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map(v, f) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, f) for v in obj)
    return obj


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        if first.ndim == 0:
            raise ValueError("run_batched: fn returned a 0-d tensor; outputs need a leading batch axis")
        return torch.cat(parts, dim=0)
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_concat([p[i] for p in parts]) for i in range(len(first))))
    if isinstance(first, (list, tuple)):
        return type(first)(_concat([p[i] for p in parts]) for i in range(len(first)))
    raise TypeError(f"run_batched: cannot concatenate outputs of type {type(first).__name__}")


def _new_bytes(tensors: list[torch.Tensor], seen: set[tuple[int, int]]) -> int:
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


def _to_cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu")


def _to_cpu_owned(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy that is an ordinary tensor (not an inference tensor)."""
    t = t.detach()
    return t.clone() if t.device.type == "cpu" else t.to("cpu")


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


# --------------------------------------------------------------------------- planning


def cuda_available_bytes(device: torch.device) -> float:
    """Bytes a batch can still get on ``device``: free device memory plus memory that
    PyTorch's caching allocator has reserved but not handed out."""
    free, _total = torch.cuda.mem_get_info(device)
    unused_reserved = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return float(free + max(0, unused_reserved))


def _halve_after_oom(exc: BaseException, size: int, dev: torch.device, max_memory_gb: float, where: str = "") -> int:
    """The batch size to retry with after ``exc``; re-raises anything that is not out-of-memory,
    and gives up with one line when a single sample did not fit."""
    if not (_is_oom(exc) or isinstance(exc, MemoryError)):
        raise exc
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    if size <= 1:
        raise InferenceMemoryError(
            f"inference: one sample does not fit in memory on {dev}{where} "
            f"(max_memory_gb={max_memory_gb}); use a smaller input or another device"
        ) from None
    return max(1, size // 2)


def _probe_cuda(fn: Callable[..., Any], inputs: Any, sizes: list[int], device: torch.device) -> list[int]:
    peaks = []
    for b in sizes:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = _call(fn, _slice_to(inputs, 0, b, device))
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
    n = _length(inputs)
    cap = float(max_memory_gb) * BYTES_PER_GB
    if n == 0:
        return BatchPlan(1, 0.0, 0.0, cap, "empty")
    dev = resolve_device(device, fn, inputs)
    k = max(1, min(n, probe_size))
    if prefetch is None:
        prefetch = dev.type == "cuda"
    # with prefetching, the next batch's input sits on the device next to the current batch
    extra = float(_input_row_bytes(inputs)) if prefetch else 0.0

    def clamp(b: float) -> int:
        return int(max(1, min(n, math.floor(b))))

    with torch.inference_mode():
        if dev.type == "cuda":
            cap = min(cap, cuda_available_bytes(dev))
            while True:
                try:
                    _call(fn, _slice_to(inputs, 0, 1, dev))  # warm-up: one-off workspaces, lazy inits
                    sizes = [1, k] if k > 1 else [1]
                    peaks = _probe_cuda(fn, inputs, sizes, dev)
                    break
                except (RuntimeError, MemoryError) as exc:
                    k = _halve_after_oom(exc, k, dev, max_memory_gb, " while probing")
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
                    (peak,) = _probe_cuda(fn, inputs, [b], dev)
                except (RuntimeError, MemoryError) as exc:
                    b = _halve_after_oom(exc, b, dev, max_memory_gb, " while probing")
                    continue
                used = peak + extra * b
                if used <= CUDA_HEADROOM * cap:
                    break
                b = clamp(b * CUDA_HEADROOM * cap / used)
            return BatchPlan(b, per, fixed, cap, "cuda-probe")

        batch = _slice_to(inputs, 0, k, dev)
        seen: set[tuple[int, int]] = set()
        in_bytes = _new_bytes(_tensors(batch), seen)
        if isinstance(fn, nn.Module):
            acts: list[int] = [0]

            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                acts[0] += _new_bytes(_tensors(out), seen)

            handles = [m.register_forward_hook(hook) for m in fn.modules()]
            try:
                out = _call(fn, batch)
            finally:
                for h in handles:
                    h.remove()
            total = in_bytes + acts[0] + _new_bytes(_tensors(out), seen)
            method = "module-hooks"
        else:
            out = _call(fn, batch)
            total = (in_bytes + _new_bytes(_tensors(out), seen)) * CALLABLE_SAFETY_FACTOR
            method = "io-estimate"
        per = max(total / k, 1.0) + extra
        return BatchPlan(clamp(cap / per), per, 0.0, cap, method)


# --------------------------------------------------------------------------- running


def run_batched(
    fn: Callable[..., Any],
    inputs: Any,
    *,
    max_memory_gb: float,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    sink: Callable[[Any, int], None] | None = None,
    progress: bool = False,
    prefetch: bool | None = None,
) -> Any:
    """Run ``fn`` over ``inputs`` in memory-capped batches.

    Args:
        fn: an ``nn.Module`` (moved to ``device`` and put in eval mode for the call; its
            training flag is restored afterwards) or any callable on tensors.
        inputs: sliceable along axis 0 with ``len()``: tensor, NumPy array/memmap, h5py
            dataset; a tuple of those is passed as ``fn(*slices)``, a dict as ``fn(dict)``.
        max_memory_gb: working-memory cap of one batch in GB (1e9 bytes).
        device: ``None`` (where ``fn`` lives), ``"auto"``, ``"cpu"``, ``"cuda:0"``, ...
        batch_size: skip the probe and start from this size (still halved on OOM).
        sink: ``sink(output_batch_on_cpu, start_index)`` called for each batch in order;
            then nothing is kept and ``None`` is returned.
        progress: show a rich progress bar.
        prefetch: while the device computes batch ``i``, read batch ``i + 1`` and start
            its (pinned, asynchronous) copy to the device, so file reads and transfers
            overlap with compute. Default: on for CUDA, off for CPU (where nothing runs
            asynchronously). The extra input batch is counted against the cap.

    Returns:
        The outputs concatenated along axis 0 on the CPU, with ``fn``'s structure (tensor,
        tuple/list or dict of tensors), or ``None`` when ``sink`` is given.
    """
    n = _length(inputs)
    dev = resolve_device(device, fn, inputs)
    if prefetch is None:
        prefetch = dev.type == "cuda"
    module = fn if isinstance(fn, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.to(dev)
        module.eval()
    try:
        if batch_size is None:
            bs = choose_batch_size(
                fn, inputs, max_memory_gb=max_memory_gb, device=dev, prefetch=prefetch
            ).batch_size
        else:
            if batch_size < 1:
                raise ValueError(f"batch_size: expected >= 1 (got {batch_size})")
            bs = min(batch_size, max(n, 1))
        parts: list[Any] = []
        bar_ctx: Any = nullcontext(None)
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar_ctx = Progress(
                TextColumn("inference"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
            )
        with bar_ctx as bar:
            task_id = bar.add_task("inference", total=n) if bar is not None else None
            start = 0
            ahead: tuple[int, int, Any] | None = None  # (start, stop, batch already on the device)
            while start < n:
                stop = min(n, start + bs)
                try:
                    if ahead is not None and ahead[:2] == (start, stop):
                        batch = ahead[2]
                    else:
                        batch = _slice_to(inputs, start, stop, dev, pin=prefetch)
                    ahead = None
                    with torch.inference_mode():
                        out = _call(fn, batch)  # on CUDA this only queues the kernels
                        del batch
                        if prefetch and stop < n:
                            nxt = min(n, stop + bs)
                            ahead = (stop, nxt, _slice_to(inputs, stop, nxt, dev, pin=True))
                except (RuntimeError, MemoryError) as exc:
                    batch = out = ahead = None  # free this batch before the cache is emptied
                    bs = _halve_after_oom(exc, bs, dev, max_memory_gb)
                    continue
                # outside inference mode, so the sink gets ordinary tensors it may modify in place
                out = _map(out, _to_cpu if sink is None else _to_cpu_owned)
                if sink is not None:
                    sink(out, start)
                else:
                    parts.append(out)
                if bar is not None:
                    bar.advance(task_id, stop - start)
                start = stop
    finally:
        if module is not None:
            module.train(was_training)
    if sink is not None:
        return None
    if not parts:
        return None
    return _concat(parts)
