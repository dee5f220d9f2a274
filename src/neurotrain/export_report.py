"""``neurotrain export`` end to end: the fp32 ONNX, the int8 model the config asks for, a sidecar JSON with the
task's pre- and post-processing next to each ``.onnx``, and one before/after table.

The table (printed, and written as ``<name>.report.json`` next to the model) has one row per ONNX file: the
task's metrics of its outputs (``Task.score_outputs``) on ``export.report_batches`` batches of
``export.report_split``; ``max err`` / ``mean err``, its max and mean absolute difference to the PyTorch model
on the same inputs; ``argmax agree``, the agreement of the argmax over axis 1 with PyTorch's (top-1 agreement
for a classifier, pixel agreement for a segmenter); the file size; and ``CPU ms``, the onnxruntime CPU latency
in milliseconds (median of ``export.latency_repeats`` runs on a batch of ``export.latency_batch``, after
``export.latency_warmup`` runs).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from neurotrain.errors import NeurotrainError
from neurotrain.export import ExportError, ExportReport, _other_batch, _size, export_onnx, quantized_path_for
from neurotrain.io.atomic import atomic_path

if TYPE_CHECKING:
    from neurotrain.config import Config
    from neurotrain.task import Task

SIDECAR_FORMAT = "neurotrain-onnx/1"
FALLBACK_ROWS = 8  # rows of the example-based batch scored when the task has no data to offer


def sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json``; ``model.int8.onnx`` -> ``model.int8.json``."""
    p = Path(onnx_path)
    return p.with_name((p.name[: -len(p.suffix)] if p.suffix else p.name) + ".json")


def report_path_for(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.report.json``."""
    p = Path(onnx_path)
    return p.with_name((p.name[: -len(p.suffix)] if p.suffix else p.name) + ".report.json")


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


@dataclass
class ModelRow:
    """One ONNX file measured: ``scores`` are the task's metrics; errors are against PyTorch."""

    name: str
    path: Path
    file_bytes: int
    latency_ms: float | None = None
    latency_batch: int = 1
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    argmax_agreement: float | None = None
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "path": str(self.path), "file_bytes": self.file_bytes,
                "latency_ms": self.latency_ms, "latency_batch": self.latency_batch,
                "max_abs_error": self.max_abs_error, "mean_abs_error": self.mean_abs_error,
                "argmax_agreement": self.argmax_agreement, "scores": dict(self.scores)}


@dataclass
class DeployReport:
    """What :func:`export_for_deploy` wrote and measured."""

    export: ExportReport
    rows: list[ModelRow]
    scored_on: str
    sidecars: list[Path] = field(default_factory=list)
    report_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def columns(self) -> list[str]:
        """Table headers: model, the task's metrics, then the generic columns."""
        metric_names = sorted({k for r in self.rows for k in r.scores})
        return ["model", *metric_names, "max err", "mean err", "argmax agree", "size", "CPU ms"]

    def table(self) -> list[list[str]]:
        """Rows of text cells under :meth:`columns`."""
        metric_names = sorted({k for r in self.rows for k in r.scores})

        def f(x: float | None, fmt: str = ".4g") -> str:
            return "-" if x is None else format(x, fmt)

        return [[r.name, *(f(r.scores.get(m)) for m in metric_names), f(r.max_abs_error, ".3g"),
                 f(r.mean_abs_error, ".3g"), f(r.argmax_agreement, ".4f"), _size(r.file_bytes),
                 f(r.latency_ms, ".3f")] for r in self.rows]

    def title(self) -> str:
        batch = self.rows[0].latency_batch if self.rows else 1
        return f"scored on {self.scored_on}; CPU ms: onnxruntime median latency, batch {batch}"

    def to_dict(self) -> dict[str, Any]:
        return {"export": self.export.to_dict(), "scored_on": self.scored_on, "columns": self.columns(),
                "rows": [r.to_dict() for r in self.rows], "sidecars": [str(p) for p in self.sidecars],
                "notes": list(self.notes)}

    def summary(self) -> str:
        cols = self.columns()
        cells = [cols, *self.table()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
        lines = [self.export.summary(), self.title()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
        lines += [f"wrote {p}" for p in self.sidecars]
        if self.report_path is not None:
            lines.append(f"wrote {self.report_path}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------- measuring


def onnx_file_bytes(path: Path) -> int:
    """Size of the model file plus its external-data file, if any."""
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


def _session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads > 0:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _rows_of(inputs: tuple[np.ndarray, ...], n: int) -> tuple[np.ndarray, ...]:
    """The first ``n`` rows of each input, repeated when there are fewer."""
    out = []
    for x in inputs:
        reps = -(-n // x.shape[0])
        out.append(np.ascontiguousarray(np.concatenate([x] * reps)[:n]))
    return tuple(out)


def measure_onnx(
    name: str, path: Path, input_names: list[str], inputs: list[tuple[np.ndarray, ...]],
    refs: list[list[np.ndarray]], *, latency_batch: int = 1, repeats: int = 20, warmup: int = 3, threads: int = 0,
) -> tuple[ModelRow, list[list[np.ndarray]]]:
    """Run ``path`` in onnxruntime on every input batch, compare with the PyTorch outputs ``refs`` and time it.
    Returns the row (without task scores) and the outputs."""
    sess = _session(path, threads)
    outs = [sess.run(None, dict(zip(input_names, x))) for x in inputs]
    max_err, abs_sum, count, agree, total = 0.0, 0.0, 0, 0, 0
    for got, ref in zip(outs, refs):
        for g, r in zip(got, ref):
            d = np.abs(g.astype(np.float64) - r.astype(np.float64))
            if d.size:
                max_err, abs_sum, count = max(max_err, float(d.max())), abs_sum + float(d.sum()), count + d.size
        g0, r0 = got[0], ref[0]
        if g0.ndim >= 2 and g0.shape[1] > 1 and np.issubdtype(g0.dtype, np.floating):
            agree += int((g0.argmax(1) == r0.argmax(1)).sum())
            total += r0.argmax(1).size
    feed = dict(zip(input_names, _rows_of(inputs[0], latency_batch)))
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    row = ModelRow(name=name, path=path, file_bytes=onnx_file_bytes(path),
                   latency_ms=1e3 * statistics.median(times), latency_batch=latency_batch,
                   max_abs_error=max_err, mean_abs_error=abs_sum / count if count else None,
                   argmax_agreement=agree / total if total else None)
    return row, outs


def _torch_outputs(model: nn.Module, inputs: list[tuple[torch.Tensor, ...]]) -> list[list[np.ndarray]]:
    from neurotrain.export import _flatten

    refs = []
    with torch.no_grad():
        for x in inputs:
            refs.append([t.detach().float().cpu().numpy() for t in _flatten(model(*x))])
    return refs


# --------------------------------------------------------------------------- the command


def export_for_deploy(
    task: Task, cfg: Config, model: nn.Module, path: str | Path, *, opset: int = 17, atol: float = 1e-4,
    exporter: str = "auto", report_data: bool = True,
) -> DeployReport:
    """Export ``model`` to ``path`` (fp32, checked against PyTorch), write the int8 model ``cfg.export`` asks
    for at ``<stem>.int8.onnx`` (dynamic, static or after QAT), a sidecar ``<stem>.json`` per ONNX file with the
    task's pre/post-processing, score both models and write ``<stem>.report.json``.

    ``report_data: False`` scores the example input instead of the task's data (errors and latency only).
    """
    from neurotrain.quantize_static import quantize_static_onnx, resolve_reduce_range

    s = cfg.export
    path = Path(path)
    own = task.export_model(cfg, model, path, opset=opset, atol=atol)  # e.g. vision detectors
    if own is not None:
        return own
    net = model if all(p.device.type == "cpu" for p in model.parameters()) else copy.deepcopy(model).cpu()
    was_training = net.training
    net.eval()
    example = tuple(t.detach().cpu() for t in task.example_input(cfg))
    spatial = bool(task.export_dynamic_spatial(cfg))
    int8 = "qat" if s.qat else s.quantize
    try:
        rep = export_onnx(net, example, path, opset=opset, check=True, atol=atol, quantize=int8 == "dynamic",
                          exporter=exporter, dynamic_spatial=spatial)  # type: ignore[arg-type]
        notes: list[str] = []
        in_names, out_names = rep.input_names, rep.output_names
        qpath = quantized_path_for(path)

        def calib_inputs() -> list[tuple[torch.Tensor, ...]]:
            try:
                batches = task.calibration_inputs(cfg, s.calibration_batches, "val")
            except NeurotrainError as exc:
                raise ExportError(f"{path.name}: static int8 needs calibration data: {exc}") from exc
            return [tuple(t.detach().cpu() for t in b) for b in batches]

        if int8 == "static":
            notes += quantize_static_onnx(path, qpath, in_names, calib_inputs(), method=s.calibration_method,
                                          per_channel=s.per_channel, preprocess=s.preprocess,
                                          percentile=s.calibration_percentile,
                                          reduce_range=resolve_reduce_range(s.reduce_range))
        elif int8 == "qat":
            notes += _qat_export(task, cfg, net, example, qpath, in_names, out_names, opset, calib_inputs)
        elif int8 == "dynamic":
            notes.append("dynamic int8 (weights int8, activations quantised at run time)")

        # ---- the data the table is scored on
        batches: list[dict[str, Any]] | None = None
        if report_data:
            try:
                batches = task.calibration_batches(cfg, s.report_batches, s.report_split)
            except NeurotrainError as exc:
                notes.append(f"no {s.report_split} data to score ({exc}); scored the example input")
        if batches:
            inputs = [tuple(t.detach().cpu() for t in task.export_inputs(cfg, b)) for b in batches]
            n_rows = sum(int(x[0].shape[0]) for x in inputs)
            scored_on = f"{len(inputs)} batches ({n_rows} samples) of the {s.report_split} split"
        else:
            inputs = [_other_batch(example, FALLBACK_ROWS, seed=1)]
            scored_on = f"the example input perturbed ({FALLBACK_ROWS} rows; no task data)"
        refs = _torch_outputs(net, inputs)
        np_inputs = [tuple(t.numpy() for t in x) for x in inputs]
        files = [("fp32", path)] + ([(f"int8 ({int8})", qpath)] if int8 != "none" else [])
        rows = []
        for name, p in files:
            row, outs = measure_onnx(name, p, in_names, np_inputs, refs, latency_batch=s.latency_batch,
                                     repeats=s.latency_repeats, warmup=s.latency_warmup, threads=s.latency_threads)
            if batches:
                try:
                    row.scores = task.score_outputs(cfg, outs, batches) or {}
                except Exception as exc:  # noqa: BLE001  (a task's metric code on ONNX outputs: report, go on)
                    notes.append(f"{name}: the task's metrics failed on the ONNX outputs ({type(exc).__name__}: {exc})")
            rows.append(row)

        # ---- sidecars and the report file
        sidecars: list[Path] = []
        if s.sidecar:
            meta = task.export_metadata(cfg)
            for name, p in files:
                sidecars.append(write_json(sidecar_path(p), _sidecar(cfg, p, name, rep, example, spatial, meta)))
        report = DeployReport(export=rep, rows=rows, scored_on=scored_on, sidecars=sidecars, notes=notes)
        report.report_path = write_json(report_path_for(path), report.to_dict())
        return report
    finally:
        net.train(was_training)


def _sidecar(cfg: Config, onnx_path: Path, precision: str, rep: ExportReport, example: tuple[torch.Tensor, ...],
             spatial: bool, meta: dict[str, Any]) -> dict[str, Any]:
    """Generic header (format, task, file, inputs with symbolic axes, outputs) + the task's metadata."""
    inputs = []
    for n, t in zip(rep.input_names, example):
        shape: list[Any] = list(t.shape)
        if rep.dynamic_batch:
            shape[0] = "batch"
        if spatial:
            shape[2:] = [f"{n}_dim{d}" for d in range(2, t.ndim)]
        inputs.append({"name": n, "shape": shape, "dtype": str(t.dtype).removeprefix("torch.")})
    head = {"format": SIDECAR_FORMAT, "task": cfg.task, "model": onnx_path.name, "precision": precision,
            "inputs": inputs, "outputs": list(rep.output_names)}
    return {**head, **meta}


def _qat_export(task: Task, cfg: Config, net: nn.Module, example: tuple[torch.Tensor, ...], qpath: Path,
                in_names: list[str], out_names: list[str], opset: int, calib_inputs: Any) -> list[str]:
    """QAT fine-tuning, then the QDQ export of the fake-quant model, or (``qat_export: calibrate``, or when that
    export fails under ``auto``) the fine-tuned float weights quantised by static calibration."""
    from neurotrain.qat import export_qat, float_weights, qat_finetune
    from neurotrain.quantize_static import _tmpdir_next_to, quantize_static_onnx, resolve_reduce_range

    s = cfg.export
    try:
        train = task.calibration_batches(cfg, s.qat_batches, "train")
    except NeurotrainError as exc:
        raise ExportError(f"{qpath.name}: QAT needs training data: {exc}") from exc
    loss_fn = task.build_loss(cfg)
    reduce = resolve_reduce_range(s.reduce_range)
    kw = dict(epochs=s.qat_epochs, lr=s.qat_lr, per_channel=s.per_channel, reduce_range=reduce,
              on_batch=lambda b: task.on_batch(cfg, b, True))
    notes: list[str] = []
    if s.qat_export in ("auto", "qdq"):
        res = qat_finetune(net, train, task.forward, loss_fn, example, mode="auto", **kw)
        notes += res.notes
        try:
            err = export_qat(res.model, example, qpath, opset=opset, input_names=in_names, output_names=out_names,
                             dynamic_spatial=bool(task.export_dynamic_spatial(cfg)))
            notes.append(f"QAT ({res.mode} mode, {s.qat_epochs} epochs, loss {res.losses[0]:.4g} -> "
                         f"{res.losses[-1]:.4g}) exported as QDQ ONNX; max |ONNX - fake-quant torch| = {err:.3g}")
            return notes
        except ExportError as exc:
            if s.qat_export == "qdq":
                raise
            notes.append(f"the QAT model could not be exported as QDQ ONNX ({exc}); fell back to fake-quant "
                         "fine-tuning + static int8 calibration")
            eager = res if res.mode == "eager" else None
    else:
        eager = None
    if eager is None:
        eager = qat_finetune(net, train, task.forward, loss_fn, example, mode="eager", **kw)
    tuned = float_weights(net, eager.model)
    with _tmpdir_next_to(qpath) as tmp:
        fp32 = tmp / "qat_fp32.onnx"
        export_onnx(tuned, example, fp32, opset=opset, check=True, atol=1e-3, input_names=in_names,
                    output_names=out_names, dynamic_spatial=bool(task.export_dynamic_spatial(cfg)))
        notes += quantize_static_onnx(fp32, qpath, in_names, calib_inputs(), method=s.calibration_method,
                                      per_channel=s.per_channel, preprocess=s.preprocess,
                                      percentile=s.calibration_percentile, reduce_range=reduce)
    notes.append(f"QAT (eager fake-quant fine-tuning, {s.qat_epochs} epochs, loss {eager.losses[0]:.4g} -> "
                 f"{eager.losses[-1]:.4g}), then static int8 calibration of the fine-tuned weights")
    return notes

