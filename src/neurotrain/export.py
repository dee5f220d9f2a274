"""ONNX export with an onnxruntime equivalence check and optional int8 quantisation.

:func:`export_onnx` exports a model with ``torch.onnx.export`` (the ``torch.export``
based exporter that is the default since PyTorch 2.9, through onnxscript; the legacy
TorchScript exporter is the fallback when ``exporter="auto"`` and the first one fails),
loads the file in an onnxruntime CPU session and compares its outputs with PyTorch's on
the example inputs and on a batch of another size (which also proves the batch axis is
dynamic). Files are written under a temporary folder next to the target and renamed into
place only after the check passed, so a failed export never replaces a good model.
Optionally the model is quantised with onnxruntime's dynamic int8 quantisation
(weights int8, activations quantised on the fly) into ``<name>.int8.onnx``; its own
error against PyTorch is reported (not checked against ``atol``: int8 is lossy).
``dynamic_spatial`` also frees the axes after the channel axis (fully convolutional
networks run on images of any size). Static (calibrated) int8 and quantisation-aware
training live in ``quantize.py``; the exporters and the onnxruntime run/compare helpers in
``onnx_exporters.py``; ``neurotrain export`` as a whole (int8 per the config's
``export`` section, sidecar JSON, before/after report) in ``export_report.py``.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from neurotrain.onnx_exporters import (  # noqa: F401  (re-exported: the old import paths keep working)
    ExportCheckError,
    ExportError,
    _check,
    _export_dynamo,
    _export_torchscript,
    _max_abs,
    _opset_of,
    _ort_run,
    _quiet,
    _run_exporter,
)

EXTERNAL_DATA_BYTES = 1_500_000_000
"""Above this many parameter bytes the weights go to ``<name>.onnx.data`` (protobuf's
limit for one file is 2 GiB)."""
OTHER_BATCH_SIZE = 3
"""Batch size of the second check input; the example's batch size + 2 when that is 3."""
OTHER_SPATIAL_GROW = 32
"""With ``dynamic_spatial`` the second check input is this much longer along each spatial axis
(32 keeps the divisibility that networks down-sampling up to 32x need)."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` did; errors are max absolute differences to PyTorch."""

    path: Path
    exporter: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool
    file_bytes: int
    max_abs_error: float | None = None
    other_batch_size: int | None = None
    max_abs_error_other_batch: float | None = None
    atol: float | None = None
    quantized_path: Path | None = None
    quantized_file_bytes: int | None = None
    quantized_max_abs_error: float | None = None
    notes: list[str] = field(default_factory=list)
    dynamic_spatial: bool = False
    other_input_shape: list[int] | None = None  # shape of the second check input (first input)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("path", "quantized_path"):
            d[k] = None if d[k] is None else str(d[k])
        return d

    def summary(self) -> str:
        """A few human-readable lines (what the CLI prints)."""
        lines = [f"wrote {self.path} ({_size(self.file_bytes)}, {self.exporter} exporter, opset {self.opset})"]
        if self.max_abs_error is not None:
            lines.append(f"  onnxruntime vs torch, example: max |diff| = {self.max_abs_error:.3g} (atol {self.atol:g})")
        if self.max_abs_error_other_batch is not None:
            shape = self.other_input_shape if self.dynamic_spatial else None
            lines.append(
                f"  onnxruntime vs torch, batch of {self.other_batch_size}"
                + (f" (input {tuple(shape)})" if shape else "")
                + f": max |diff| = {self.max_abs_error_other_batch:.3g}"
            )
        if self.quantized_path is not None:
            lines.append(f"wrote {self.quantized_path} ({_size(self.quantized_file_bytes or 0)}, int8 dynamic)")
            if self.quantized_max_abs_error is not None:
                lines.append(f"  int8 vs torch: max |diff| = {self.quantized_max_abs_error:.3g}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __rich__(self) -> str:
        from rich.markup import escape

        return escape(self.summary())


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes} B"


def quantized_path_for(path: str | Path) -> Path:
    """Where ``quantize=True`` writes the int8 model: ``model.onnx`` -> ``model.int8.onnx``."""
    path = Path(path)
    return path.with_name(_int8_name(path))


# --------------------------------------------------------------------------- helpers


def _flatten(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flatten(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flatten(v)]
    raise ExportError(f"export: model outputs must be tensors or tuples/lists/dicts of tensors (got {type(obj).__name__})")


def _as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    items = tuple(example_inputs)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise ExportError("export: example_inputs must be a tensor or a non-empty tuple of tensors")
    return items


def _other_batch(
    inputs: tuple[torch.Tensor, ...], size: int, seed: int = 0, grow: int = 0
) -> tuple[torch.Tensor, ...]:
    """A batch of ``size`` rows made from the example: rows repeated, float inputs perturbed
    by 10 % of their standard deviation so the rows differ; with ``grow`` > 0 every axis after
    the channel axis is ``grow`` longer (the example tiled), to check dynamic spatial axes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        reps = -(-size // t.shape[0])
        big = t.repeat(reps, *([1] * (t.ndim - 1)))[:size].clone()
        if grow > 0 and big.ndim > 2:
            big = big.repeat(1, 1, *([2] * (big.ndim - 2)))
            big = big[(slice(None), slice(None), *(slice(0, n + grow) for n in t.shape[2:]))].contiguous()
        if big.is_floating_point():
            scale = float(t.float().std()) if t.numel() > 1 else 1.0
            big = big + (0.1 * (scale or 1.0)) * torch.randn(big.shape, generator=g, dtype=big.dtype)
        out.append(big)
    return tuple(out)


# --------------------------------------------------------------------------- main


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    quantize: bool = False,
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_spatial: bool = False,
) -> ExportReport:
    """Export ``model`` to ONNX at ``path`` and check it against PyTorch with onnxruntime.

    Args:
        model: the network (exported in eval mode on the CPU; the caller's model is not
            moved, and its training flag is restored).
        example_inputs: a tensor or tuple of tensors (the ``forward`` arguments).
        path: the ``.onnx`` file to write (parent folders are created).
        opset: ONNX opset; the dynamo exporter builds at its lowest supported opset and
            converts down when ``opset`` is lower (the report gives the opset written).
        dynamic_batch: make axis 0 of every input and output dynamic.
        check: run the file in onnxruntime (CPU) on the example and on a batch of
            ``OTHER_BATCH_SIZE`` rows (when ``dynamic_batch``) and compare with PyTorch.
        atol: largest max-abs difference accepted; above it :class:`ExportError` is raised
            and nothing is written.
        quantize: also write ``<stem>.int8.onnx`` (onnxruntime dynamic int8 quantisation).
        exporter: ``"dynamo"`` (torch.export), ``"torchscript"`` (legacy) or ``"auto"``
            (dynamo, falling back to torchscript if it fails).
        input_names, output_names: ONNX names; default ``input``/``output`` (``input_0``,
            ... when there are several).
        dynamic_spatial: also make every input axis after the channel axis dynamic (a fully
            convolutional network run on images of any size); the second check input is then
            ``OTHER_SPATIAL_GROW`` longer along those axes.
    """
    path = Path(path)
    args = _as_tuple(example_inputs)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    net = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = net.training
    net.eval()
    args = tuple(a.detach().cpu() for a in args)
    try:
        with torch.no_grad():
            ref = _flatten(net(*args))
        in_names = list(input_names) if input_names else (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))])
        out_names = list(output_names) if output_names else (["output"] if len(ref) == 1 else [f"output_{i}" for i in range(len(ref))])
        if len(in_names) != len(args) or len(out_names) != len(ref):
            raise ExportError(
                f"export: got {len(in_names)} input / {len(out_names)} output names for "
                f"{len(args)} inputs / {len(ref)} outputs"
            )
        n_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
        n_bytes += sum(b.numel() * b.element_size() for b in net.buffers())
        external = n_bytes > EXTERNAL_DATA_BYTES

        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmpdir.mkdir()
        try:
            dest = tmpdir / path.name
            notes: list[str] = []
            # torch.export specialises an axis of size 1 to the constant 1: trace two rows
            trace_args = tuple(torch.cat([a, a]) if dynamic_batch and a.shape[0] == 1 else a for a in args)
            used = _run_exporter(net, trace_args, dest, opset, dynamic_batch, in_names, out_names, external, exporter,
                                 notes, dynamic_spatial)
            report = ExportReport(
                path=path, exporter=used, opset=_opset_of(dest), input_names=in_names, output_names=out_names,
                dynamic_batch=dynamic_batch, file_bytes=dest.stat().st_size, notes=notes,
                dynamic_spatial=dynamic_spatial,
            )
            n_other = OTHER_BATCH_SIZE if args[0].shape[0] != OTHER_BATCH_SIZE else OTHER_BATCH_SIZE + 2
            grow = OTHER_SPATIAL_GROW if dynamic_spatial else 0
            if not dynamic_batch:
                n_other = args[0].shape[0]
            other = _other_batch(args, n_other, grow=grow) if (dynamic_batch or dynamic_spatial) else None
            ref_other = None
            if other is not None and (check or quantize):
                with torch.no_grad():
                    ref_other = _flatten(net(*other))
            if check:
                report.atol = atol
                report.max_abs_error = _check(dest, in_names, args, ref, "the example")
                if other is not None and ref_other is not None:
                    report.other_batch_size = n_other
                    report.other_input_shape = list(other[0].shape)
                    report.max_abs_error_other_batch = _check(
                        dest, in_names, other, ref_other, f"a batch of {n_other}"
                    )
                worst = max(report.max_abs_error, report.max_abs_error_other_batch or 0.0)
                if not worst <= atol:
                    raise ExportCheckError(
                        f"{path}: ONNX output differs from PyTorch by {worst:.3g} (max abs), "
                        f"above atol={atol:g}; nothing was written"
                    )
            qdest = None
            if quantize:
                qdest = tmpdir / _int8_name(path)
                _quantize(dest, qdest)
                report.quantized_path = path.with_name(qdest.name)
                report.quantized_file_bytes = qdest.stat().st_size
                q_inputs, q_ref = (other, ref_other) if ref_other is not None else (args, ref)
                report.quantized_max_abs_error = _check(qdest, in_names, q_inputs, q_ref, "int8 model")
            # publish: external data first, the .onnx files last
            produced = sorted(tmpdir.iterdir(), key=lambda p: p.suffix == ".onnx")
            for f in produced:
                os.replace(f, path.parent / f.name)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    finally:
        net.train(was_training)
    report.file_bytes = path.stat().st_size
    return report


def _int8_name(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return f"{stem}.int8.onnx"


def _quantize(src: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet():
            quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{dest.name}: int8 quantisation failed: {msg}") from exc
