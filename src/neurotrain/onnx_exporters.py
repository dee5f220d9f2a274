"""The exporters and the onnxruntime checks behind :func:`neurotrain.export.export_onnx` (importable from
``neurotrain.export`` too).

* :func:`_run_exporter`: ``torch.onnx.export`` with the ``torch.export`` based exporter (the default since
  PyTorch 2.9, through onnxscript; dynamic batch and spatial axes as ``torch.export.Dim``) or the legacy
  TorchScript exporter (``dynamic_axes``); ``"auto"`` falls back from the first to the second and says so in
  a note. :func:`_quiet` silences their progress prints and warnings.
* :func:`_ort_run` runs an ONNX file in an onnxruntime CPU session; :func:`_check` compares it with PyTorch's
  outputs (:func:`_max_abs`: max absolute difference, shapes and output counts must match).
* :class:`ExportError` / :class:`ExportCheckError`: what every export step raises.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotrain.errors import NeurotrainError


class ExportError(NeurotrainError):
    """The export failed, or onnxruntime cannot load or run the exported model."""


class ExportCheckError(ExportError):
    """The exported model's outputs differ from PyTorch's by more than ``atol``."""



def _ort_run(path: Path, input_names: list[str], inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {name: t.detach().cpu().numpy() for name, t in zip(input_names, inputs)}
    return sess.run(None, feed)


def _max_abs(ref: list[torch.Tensor], got: list[np.ndarray]) -> float:
    if len(ref) != len(got):
        raise ExportCheckError(f"export: the ONNX model returns {len(got)} outputs, PyTorch {len(ref)}")
    err = 0.0
    for r, g in zip(ref, got):
        r_np = r.detach().cpu().numpy()
        if r_np.shape != g.shape:
            raise ExportCheckError(f"export: output shape differs: PyTorch {r_np.shape}, ONNX {g.shape}")
        if r_np.size:
            err = max(err, float(np.max(np.abs(r_np.astype(np.float64) - g.astype(np.float64)))))
    return err


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporters' progress prints, warnings and onnxruntime's root-logger hints."""
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "onnxscript", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(
    model: nn.Module, args: tuple[torch.Tensor, ...], dest: Path, opset: int, dynamic_batch: bool,
    input_names: list[str], output_names: list[str], external: bool, dynamic_spatial: bool = False,
) -> None:
    dyn = None
    if dynamic_batch or dynamic_spatial:
        batch = torch.export.Dim("batch")
        dyn = tuple(
            {**({0: batch} if dynamic_batch else {}),
             **({d: torch.export.Dim.DYNAMIC for d in range(2, a.ndim)} if dynamic_spatial else {})}
            for a in args
        )
    program = torch.onnx.export(
        model, args, None, dynamo=True, opset_version=opset, dynamic_shapes=dyn,
        input_names=input_names, output_names=output_names, verbose=False,
    )
    if program is None:
        raise ExportError("export: torch.onnx.export returned no program")
    program.save(str(dest), external_data=external)


def _export_torchscript(
    model: nn.Module, args: tuple[torch.Tensor, ...], dest: Path, opset: int, dynamic_batch: bool,
    input_names: list[str], output_names: list[str], dynamic_spatial: bool = False,
) -> None:
    axes: dict[str, dict[int, str]] | None = None
    if dynamic_batch or dynamic_spatial:
        axes = {n: ({0: "batch"} if dynamic_batch else {}) for n in (*input_names, *output_names)}
        if dynamic_spatial:
            for n, a in zip(input_names, args):
                axes[n].update({d: f"{n}_dim{d}" for d in range(2, a.ndim)})
    torch.onnx.export(
        model, args, str(dest), dynamo=False, opset_version=opset, dynamic_axes=axes,
        input_names=input_names, output_names=output_names, do_constant_folding=True,
    )


def _opset_of(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=-1)


def _run_exporter(
    net: nn.Module, args: tuple[torch.Tensor, ...], dest: Path, opset: int, dynamic_batch: bool,
    in_names: list[str], out_names: list[str], external: bool, exporter: str, notes: list[str],
    dynamic_spatial: bool = False,
) -> str:
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ExportError(f"export: exporter: expected 'auto', 'dynamo' or 'torchscript' (got {exporter!r})")
    if exporter in ("auto", "dynamo"):
        try:
            with _quiet():
                _export_dynamo(net, args, dest, opset, dynamic_batch, in_names, out_names, external, dynamic_spatial)
            return "dynamo"
        except Exception as exc:  # noqa: BLE001  (any exporter failure: report or fall back)
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if exporter == "dynamo":
                raise ExportError(f"{dest.name}: torch.onnx (dynamo) export failed: {msg}") from exc
            notes.append(f"dynamo exporter failed ({msg}); used the TorchScript exporter")
            for f in dest.parent.iterdir():
                f.unlink()
    try:
        with _quiet():
            _export_torchscript(net, args, dest, opset, dynamic_batch, in_names, out_names, dynamic_spatial)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{dest.name}: torch.onnx (TorchScript) export failed: {msg}") from exc
    return "torchscript"


def _check(dest: Path, names: list[str], inputs: tuple[torch.Tensor, ...], ref: list[torch.Tensor], what: str) -> float:
    try:
        got = _ort_run(dest, names, inputs)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{dest.name}: onnxruntime cannot run the exported model on {what}: {msg}") from exc
    return _max_abs(ref, got)


