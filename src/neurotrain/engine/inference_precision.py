"""Inference arithmetic: :func:`autocast` (bf16/fp16 autocast, TF32 and cuDNN autotuning on CUDA) and
:func:`optimise_for_inference` (a frozen, low-precision, torch.compile'd copy of a model)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from neurotrain.engine.batching import map_tensors

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
        return map_tensors(out, lambda t: t.float()) if dtype is not None else out

    if compile:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            run(example)
    return run
