"""Batched inference over inputs of any length under a memory cap.

:func:`run_batched` runs a model (or any callable) over ``inputs`` — a torch tensor, a
NumPy array or memmap, an h5py dataset, or a tuple/dict of those sharing axis 0 — in
batches whose size is chosen to fit ``max_memory_gb`` of working memory, moving each
slice to the device, and either streams each output batch to a ``sink`` (flat memory,
for files larger than RAM) or returns the concatenation.

The batch size is measured, not guessed: ``batch_plan.py`` says how (a CUDA probe with a linear
memory model, forward hooks on CPU, or an input/output estimate for a plain callable).

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

Modules: ``batch_plan.py`` (the batch size, the device, the out-of-memory back-off), ``batching.py``
(slicing inputs, gathering outputs), ``inference_precision.py`` (:func:`autocast`,
:func:`optimise_for_inference`); their public names are importable from here.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from neurotrain.engine.batch_plan import (
    BYTES_PER_GB,
    CALLABLE_SAFETY_FACTOR,
    CUDA_HEADROOM,
    DEFAULT_PROBE_SIZE,
    VERIFY_ROUNDS,
    BatchPlan,
    InferenceMemoryError,
    choose_batch_size,
    cuda_available_bytes,
    halve_after_oom,
    resolve_device,
)
from neurotrain.engine.batching import call, concat, length_of, map_tensors, slice_to, to_cpu, to_cpu_owned
from neurotrain.engine.inference_precision import autocast, optimise_for_inference

__all__ = [
    "BYTES_PER_GB", "CALLABLE_SAFETY_FACTOR", "CUDA_HEADROOM", "DEFAULT_PROBE_SIZE", "VERIFY_ROUNDS", "BatchPlan",
    "InferenceMemoryError", "autocast", "choose_batch_size", "cuda_available_bytes", "optimise_for_inference",
    "resolve_device", "run_batched",
]


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
    n = length_of(inputs)
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
                        batch = slice_to(inputs, start, stop, dev, pin=prefetch)
                    ahead = None
                    with torch.inference_mode():
                        out = call(fn, batch)  # on CUDA this only queues the kernels
                        del batch
                        if prefetch and stop < n:
                            nxt = min(n, stop + bs)
                            ahead = (stop, nxt, slice_to(inputs, stop, nxt, dev, pin=True))
                except (RuntimeError, MemoryError) as exc:
                    batch = out = ahead = None  # free this batch before the cache is emptied
                    bs = halve_after_oom(exc, bs, dev, max_memory_gb)
                    continue
                # outside inference mode, so the sink gets ordinary tensors it may modify in place
                out = map_tensors(out, to_cpu if sink is None else to_cpu_owned)
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
    return concat(parts)
