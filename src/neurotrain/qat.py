"""Quantisation-aware training (QAT) and the QDQ ONNX export of the fake-quant model, with the graph fixes
that export needs (scalar quantisation parameters, int8 weight initializers); importable from
``neurotrain.quantize`` too. Static int8 and the int8 ranges shared with it are in ``quantize_static.py``.

Quantisation-aware training (:func:`qat_finetune`, :func:`export_qat`): PyTorch's FX graph-mode QAT
(``torch.ao.quantization.quantize_fx.prepare_qat_fx``: Conv+BN(+ReLU) fused, fake-quantised weights and
activations; works on torch 2.14, whose PT2E flow moved to ``torchao``, not installed) fine-tunes the trained
network for a few epochs. The fake-quant model is then exported with the TorchScript exporter, which writes
each fake-quant node as a QuantizeLinear/DequantizeLinear pair: a QDQ ONNX whose scales are the ones learned
in training. Where the network cannot be FX-traced or that export fails, the fallback is eager-mode QAT
(fake-quantised weights of every Conv/Linear and every leaf module's output), after which the fine-tuned float
weights are copied back into the network and quantised by static calibration; :class:`QATResult` says which
route was taken.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotrain.onnx_exporters import ExportError, _quiet
from neurotrain.quantize_static import (
    ACT_QMAX,
    ACT_QMIN,
    W_QMAX,
    W_QMAX_REDUCED,
    W_QMIN,
    W_QMIN_REDUCED,
    _first_line,
    _tmpdir_next_to,
)

QAT_TOLERANCE_STEPS = 4.0
"""The QDQ export of a QAT model must reproduce the fake-quant torch model within this many steps of the
output's quantisation grid (rounding ties and fused kernels move outputs by about one step)."""


def qat_qconfig(per_channel: bool = True, reduce_range: bool = False) -> Any:
    """Fake-quant settings that match the int8 ONNX: uint8 asymmetric activations (moving-average min-max),
    int8 symmetric weights (7-bit with ``reduce_range``), per output channel or per tensor. Plain
    ``FakeQuantize`` (not the fused kernel of PyTorch's default QAT qconfig, which has no ONNX form)."""
    import torch.ao.quantization as tq

    wmin, wmax = (W_QMIN_REDUCED, W_QMAX_REDUCED) if reduce_range else (W_QMIN, W_QMAX)

    act = tq.FakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver, quant_min=ACT_QMIN, quant_max=ACT_QMAX, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine, reduce_range=False,
    )
    if per_channel:
        wt = tq.FakeQuantize.with_args(
            observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=wmin, quant_max=wmax,
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
        )
    else:
        wt = tq.FakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver, quant_min=wmin, quant_max=wmax, dtype=torch.qint8,
            qscheme=torch.per_tensor_symmetric,
        )
    return tq.QConfig(activation=act, weight=wt)


@dataclass
class QATResult:
    """What :func:`qat_finetune` did: the fake-quant model, how it was prepared (``fx`` or ``eager``) and the
    mean training loss of each epoch."""

    model: nn.Module
    mode: str
    losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def prepare_qat(model: nn.Module, example: tuple[torch.Tensor, ...], per_channel: bool = True,
                mode: str = "auto", reduce_range: bool = False) -> tuple[nn.Module, str, list[str]]:
    """A fake-quant copy of ``model`` (in training mode): ``fx`` graph mode (fused Conv+BN+ReLU), or ``eager``
    (every Conv/Linear with fake-quant weights, every leaf module's output fake-quantised; no tracing).
    ``auto`` tries FX first. Returns (model, mode used, notes)."""
    import torch.ao.quantization as tq

    qconfig = qat_qconfig(per_channel, reduce_range)
    notes: list[str] = []
    net = copy.deepcopy(model).cpu().train()
    if mode in ("auto", "fx"):
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        try:
            with _quiet():
                prepared = prepare_qat_fx(net, tq.QConfigMapping().set_global(qconfig), example)
            return prepared, "fx", notes
        except Exception as exc:  # noqa: BLE001  (symbolic tracing fails on data-dependent Python)
            if mode == "fx":
                raise ExportError(f"qat: FX graph-mode preparation failed: {_first_line(exc)}") from exc
            notes.append(f"FX graph-mode QAT failed ({_first_line(exc)}); used eager-mode QAT")
            net = copy.deepcopy(model).cpu().train()
    net.qconfig = qconfig
    with _quiet():
        tq.prepare_qat(net, inplace=True)
    return net, "eager", notes


def qat_finetune(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    forward: Callable[[nn.Module, dict[str, Any]], Any],
    loss_fn: Callable[[Any, dict[str, Any]], Any],
    example: tuple[torch.Tensor, ...],
    *,
    epochs: int = 2,
    lr: float = 1e-4,
    per_channel: bool = True,
    mode: str = "auto",
    reduce_range: bool = False,
    on_batch: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> QATResult:
    """Fine-tune a fake-quant copy of ``model`` for ``epochs`` passes over ``batches`` (CPU, Adam at ``lr``;
    ``loss_fn(pred, batch)`` returns a scalar or a dict with ``"loss"``). The observers keep tracking the
    activation ranges during the first epoch and are frozen after it (and BatchNorm statistics with them), as
    usual in QAT, so the last epochs train against fixed quantisation grids."""
    import torch.ao.quantization as tq

    if not batches:
        raise ExportError("qat: no training batches to fine-tune on")
    prepared, used, notes = prepare_qat(model, example, per_channel, mode, reduce_range)
    opt = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    prepared.train()
    for epoch in range(epochs):
        if epoch == 1:
            import torch.ao.nn.intrinsic.qat as nniqat

            prepared.apply(tq.disable_observer)
            prepared.apply(nniqat.freeze_bn_stats)  # fused Conv+BN (FX): use the running statistics from now on
        total = 0.0
        for batch in batches:
            b = on_batch(batch) if on_batch is not None else batch
            out = loss_fn(forward(prepared, b), b)
            loss = out["loss"] if isinstance(out, dict) else out
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / len(batches))
    prepared.eval()
    prepared.apply(tq.disable_observer)
    return QATResult(prepared, used, losses, notes)


def export_qat(
    qat: nn.Module, example: tuple[torch.Tensor, ...], dest: str | Path, *, opset: int = 17,
    input_names: Sequence[str] = ("input",), output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True, dynamic_spatial: bool = False,
) -> float:
    """Export a fine-tuned fake-quant model as a QDQ ONNX (TorchScript exporter: each fake-quant node becomes
    QuantizeLinear + DequantizeLinear) at ``dest`` and check it in onnxruntime against the fake-quant torch
    model. Returns that max |difference|; :class:`ExportError` if the graph has no QDQ pairs, onnxruntime
    cannot run it, or it differs by more than :data:`QAT_TOLERANCE_STEPS` output grid steps."""
    import onnx

    from neurotrain.onnx_exporters import _ort_run

    dest = Path(dest)
    qat.eval()
    _widen_weight_ranges(qat)
    args = tuple(a.detach().cpu() for a in example)
    if dynamic_batch:
        args = tuple(torch.cat([a, a]) if a.shape[0] == 1 else a for a in args)
    axes: dict[str, dict[int, str]] = {
        n: ({0: "batch"} if dynamic_batch else {}) for n in (*input_names, *output_names)}
    if dynamic_spatial:  # the same axis names as export_onnx's TorchScript path
        for n, a in zip(input_names, args):
            axes[n].update({d: f"{n}_dim{d}" for d in range(2, a.ndim)})
    with _tmpdir_next_to(dest) as tmp:
        out = tmp / dest.name
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(qat, args, str(out), dynamo=False, opset_version=max(opset, 13),
                                  input_names=list(input_names), output_names=list(output_names),
                                  dynamic_axes=axes or None, do_constant_folding=True)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"{dest.name}: QAT model export to QDQ ONNX failed: {_first_line(exc)}") from exc
        _scalar_qparams(out)
        _fold_weight_quantize(out)
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        if "QuantizeLinear" not in ops or "DequantizeLinear" not in ops:
            raise ExportError(f"{dest.name}: QAT export: expected QuantizeLinear/DequantizeLinear nodes (got none)")
        with torch.no_grad():
            ref = qat(*args)
        refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
        try:
            got = _ort_run(out, list(input_names), args)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"{dest.name}: onnxruntime cannot run the QAT model: {_first_line(exc)}") from exc
        err = max(float(np.abs(r.numpy() - g).max()) for r, g in zip(refs, got))
        step = max(_output_step(qat), 1e-12)
        if not err <= QAT_TOLERANCE_STEPS * step + 1e-5:
            raise ExportError(
                f"{dest.name}: QAT QDQ ONNX differs from the fake-quant model by {err:.3g} "
                f"(more than {QAT_TOLERANCE_STEPS:g} grid steps of {step:.3g})"
            )
        os.replace(out, dest)
    return err


def _scalar_qparams(path: Path) -> None:
    """Rewrite per-tensor QuantizeLinear/DequantizeLinear scales and zero points of shape ``[1]`` (what the
    TorchScript exporter writes) as scalars: onnxruntime fuses QDQ pairs into QLinear kernels (average pooling,
    ...) that require scalar quantisation parameters."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    made: dict[str, str] = {}
    for node in g.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k in (1, 2):
            if k >= len(node.input):
                continue
            name = node.input[k]
            while name not in inits and name in producer and producer[name].op_type == "Identity":
                name = producer[name].input[0]
            init = inits.get(name)
            if init is None or list(init.dims) != [1]:
                continue
            if name not in made:
                scalar = numpy_helper.from_array(numpy_helper.to_array(init).reshape(()), f"{name}__scalar")
                g.initializer.append(scalar)
                made[name] = scalar.name
            node.input[k] = made[name]
    if made:
        onnx.save(model, str(path))


def _fold_weight_quantize(path: Path) -> None:
    """Store quantised weights as int8: every QuantizeLinear whose input, scale and zero point are constants
    (the weights) becomes an int8 initializer (round half to even, as QuantizeLinear), so the QDQ file holds
    one byte per weight, as onnxruntime's own static quantisation writes it."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def const(name: str) -> np.ndarray | None:
        while name not in inits and name in producer and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        return numpy_helper.to_array(inits[name]) if name in inits else None

    keep, folded = [], []
    for node in g.node:
        if node.op_type == "QuantizeLinear" and len(node.input) == 3:
            x, scale, zp = (const(n) for n in node.input)
            if x is not None and scale is not None and zp is not None and x.ndim >= 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * x.ndim
                if scale.size > 1:
                    shape[axis % x.ndim] = scale.size
                info = np.iinfo(zp.dtype)
                q = np.rint(x / scale.reshape(shape)) + zp.reshape(shape).astype(np.int64)
                folded.append(numpy_helper.from_array(np.clip(q, info.min, info.max).astype(zp.dtype),
                                                      node.output[0]))
                continue
        keep.append(node)
    if not folded:
        return
    outputs = {o.name for o in g.output}
    while True:  # drop the Identity nodes that only fed the folded weights
        needed = {i for n in keep for i in n.input} | outputs
        live = [n for n in keep if n.op_type != "Identity" or any(o in needed for o in n.output)]
        if len(live) == len(keep):
            break
        keep = live
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(folded)
    used = {i for n in g.node for i in n.input} | outputs
    unused = [i for i in g.initializer if i.name not in used]
    for i in unused:
        g.initializer.remove(i)
    onnx.save(model, str(path))


def _widen_weight_ranges(qat: nn.Module) -> None:
    """7-bit weight fake-quants ([-64, 63]) -> int8 range with the same (frozen) scale: ONNX QuantizeLinear
    only has int8, and the weights, already on the 7-bit grid, stay where they are."""
    import torch.ao.quantization as tq

    for m in qat.modules():
        if isinstance(m, tq.FakeQuantize) and m.dtype == torch.qint8 and (m.quant_min, m.quant_max) == (
                W_QMIN_REDUCED, W_QMAX_REDUCED):
            m.quant_min, m.quant_max = W_QMIN, W_QMAX
            # FakeQuantize.forward reads the range from its observer (disabled by now: the scale stays frozen)
            m.activation_post_process.quant_min, m.activation_post_process.quant_max = W_QMIN, W_QMAX


def _output_step(qat: nn.Module) -> float:
    """The largest activation grid step (scale) among the model's fake-quant modules: a bound on how far one
    rounding difference moves an output."""
    import torch.ao.quantization as tq

    scales = [float(m.scale.max()) for m in qat.modules()
              if isinstance(m, tq.FakeQuantize) and m.dtype == torch.quint8 and m.scale.numel()]
    return max(scales, default=0.0)


def float_weights(model: nn.Module, qat: nn.Module) -> nn.Module:
    """A copy of ``model`` with the fine-tuned weights of an eager-mode QAT model (same parameter and buffer
    names; the fake-quant modules' own buffers are left out)."""
    net = copy.deepcopy(model).cpu()
    own = net.state_dict()
    state = {k: v for k, v in qat.state_dict().items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in state]
    if missing:
        raise ExportError(f"qat: fine-tuned weights do not map back to the network (missing {missing[:3]})")
    net.load_state_dict(state)
    return net.eval()
