"""Int8 deployment: static calibration keeps a small conv classifier's answers, QAT runs and exports, the
before/after report and the sidecar have what they promise, and the export command wires it together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from neurotrain.config import Config, Section
from neurotrain.export import ExportError, export_onnx
from neurotrain.export_report import export_for_deploy, report_path_for, sidecar_path
from neurotrain.quantize import (
    ArrayCalibrationReader,
    export_qat,
    float_weights,
    qat_finetune,
    quantize_static_onnx,
    resolve_reduce_range,
)
from neurotrain.registry import TASKS
from neurotrain.task import Task

N_CLASSES = 4
SIDE = 16
AGREEMENT_MIN = 0.95  # static int8 top-1 agreement with fp32 on the calibration distribution
# Stated tolerance of static int8 against fp32: the largest logit difference at most 3 % of the largest |logit|
# and the mean difference at most 1 % (measured here: about 1.3 % and 0.4 % with 7-bit per-channel weights).
MAX_REL_TOL = 0.03
MEAN_REL_TOL = 0.01


class ShapesModel(Section):
    width: int = 8


class ShapesConfig(Config):
    model: ShapesModel = ShapesModel()


def _images(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Class k = a bright bar in quadrant k on noise (a task a 2-layer conv net learns in a few steps)."""
    n = labels.shape[0]
    x = 0.3 * torch.rand(n, 1, SIDE, SIDE, generator=gen)
    h = SIDE // 2
    rows = (labels // 2) * h
    cols = (labels % 2) * h
    yy = torch.arange(SIDE).view(1, SIDE, 1)
    xx = torch.arange(SIDE).view(1, 1, SIDE)
    inside = (yy >= rows.view(-1, 1, 1) + 2) & (yy < rows.view(-1, 1, 1) + h - 2) & (xx >= cols.view(-1, 1, 1) + 3) & (
        xx < cols.view(-1, 1, 1) + 5)
    return (x + 0.7 * inside[:, None].float()).clamp(0, 1)


class ShapesTask(Task):
    """A tiny image classifier with an on-the-fly simulator (exercises the generic hooks)."""

    name = "qshapes"
    config_cls = ShapesConfig

    def build_model(self, cfg: Config) -> nn.Module:
        w = cfg.model.width  # type: ignore[attr-defined]
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * w, N_CLASSES),
        )

    def build_loss(self, cfg: Config) -> nn.Module:
        class CE(nn.Module):
            def forward(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
                return nn.functional.cross_entropy(pred, batch["target"])

        return CE()

    def build_metrics(self, cfg: Config) -> MetricCollection:
        return MetricCollection({"accuracy": MulticlassAccuracy(N_CLASSES, average="micro")})

    def simulate_batch(self, cfg: Config, batch_size: int, generator: torch.Generator,
                       device: torch.device) -> dict[str, torch.Tensor]:
        labels = torch.randint(0, N_CLASSES, (batch_size,), generator=generator)
        return {"input": _images(labels, generator).to(device), "target": labels.to(device)}

    def example_input(self, cfg: Config) -> tuple[torch.Tensor, ...]:
        return (torch.rand(1, 1, SIDE, SIDE),)


if "qshapes" not in TASKS:
    TASKS.register("qshapes")(ShapesTask())


def _cfg(**export: Any) -> ShapesConfig:
    return ShapesConfig.model_validate({
        "task": "qshapes", "data": {"batch_size": 32, "sim_train_size": 256, "sim_val_size": 128, "sim_test_size": 128},
        "export": {"latency_repeats": 3, "latency_warmup": 1, "report_batches": 4, "calibration_batches": 4,
                   **export},
    })


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return train_classifier()


def train_classifier() -> nn.Module:
    """The classifier trained for 60 Adam steps (about 1 s): logits with real margins, as after training."""
    task, cfg = TASKS.get("qshapes"), _cfg()
    model = task.build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    loss_fn = task.build_loss(cfg)
    for _ in range(60):
        b = task.simulate_batch(cfg, 32, gen, torch.device("cpu"))
        loss = loss_fn(model(b["input"]), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    b = task.simulate_batch(cfg, 256, torch.Generator().manual_seed(9), torch.device("cpu"))
    with torch.no_grad():
        acc = float((model(b["input"]).argmax(1) == b["target"]).float().mean())
    assert acc > 0.9, acc  # the fixture itself must have learnt the task
    return model


def _within_tolerance(got: np.ndarray, ref: np.ndarray) -> None:
    scale = float(np.abs(ref).max())
    diff = np.abs(got.astype(np.float64) - ref)
    assert 0 < diff.max() <= MAX_REL_TOL * scale, (float(diff.max()), scale)
    assert diff.mean() <= MEAN_REL_TOL * scale, (float(diff.mean()), scale)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_static_int8_keeps_top1_and_error_within_tolerance(trained: nn.Module, tmp_path: Path) -> None:
    task, cfg = TASKS.get("qshapes"), _cfg()
    fp32 = tmp_path / "cls.onnx"
    export_onnx(trained, task.example_input(cfg), fp32, exporter="torchscript")
    calib = task.calibration_inputs(cfg, 4, "val")
    assert len(calib) == 4 and calib[0][0].shape == (32, 1, SIDE, SIDE)
    for method in ("minmax", "entropy", "percentile"):
        q = tmp_path / f"cls.{method}.onnx"
        notes = quantize_static_onnx(fp32, q, ["input"], calib, method=method, per_channel=method != "entropy",
                                     reduce_range=resolve_reduce_range("auto"))
        assert q.is_file() and "QuantizeLinear" in _ops(q) and "DequantizeLinear" in _ops(q), notes
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
        sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
        x = torch.cat([c[0] for c in calib])
        with torch.no_grad():
            ref = trained(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        agreement = float((got.argmax(1) == ref.argmax(1)).mean())
        assert agreement >= AGREEMENT_MIN, (method, agreement)
        _within_tolerance(got, ref)


def test_static_int8_failures_are_clear(tmp_path: Path, trained: nn.Module) -> None:
    with pytest.raises(ExportError, match="at least one calibration batch"):
        ArrayCalibrationReader(["input"], [])
    fp32 = tmp_path / "m.onnx"
    export_onnx(trained, torch.rand(2, 1, SIDE, SIDE), fp32, exporter="torchscript")
    with pytest.raises(ExportError, match="calibration_method"):
        quantize_static_onnx(fp32, tmp_path / "q.onnx", ["input"], [(torch.rand(2, 1, SIDE, SIDE),)], method="kl")
    with pytest.raises(ExportError, match=r"q\.onnx: static int8 quantisation failed"):  # wrong input name
        quantize_static_onnx(fp32, tmp_path / "q.onnx", ["pixels"], [(torch.rand(2, 1, SIDE, SIDE),)])
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("mode", ["fx", "eager"])
def test_qat_finetunes_and_exports_qdq(trained: nn.Module, tmp_path: Path, mode: str) -> None:
    task, cfg = TASKS.get("qshapes"), _cfg()
    batches = task.calibration_batches(cfg, 4, "train")
    example = task.example_input(cfg)
    res = qat_finetune(trained, batches, task.forward, task.build_loss(cfg), example, epochs=2, lr=1e-4, mode=mode,
                       reduce_range=resolve_reduce_range("auto"))
    assert res.mode == mode and len(res.losses) == 2 and all(np.isfinite(res.losses))
    assert trained.training is False and not any("fake" in k for k in trained.state_dict())  # original untouched
    dest = tmp_path / "qat.onnx"
    err = export_qat(res.model, example, dest)
    assert "QuantizeLinear" in _ops(dest) and err < 0.1
    int8 = [i for i in onnx.load(str(dest)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert sorted(len(i.dims) for i in int8 if len(i.dims) > 1) == [2, 4, 4]  # conv, conv, linear weights: int8
    x = torch.cat([b["input"] for b in task.calibration_batches(cfg, 4, "val")])
    got = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = trained(x).numpy()
    assert float((got.argmax(1) == ref.argmax(1)).mean()) >= AGREEMENT_MIN  # within tolerance, not "better"
    if mode == "eager":  # the fallback route: fine-tuned float weights back into the plain network
        tuned = float_weights(trained, res.model)
        with torch.no_grad():
            assert float((tuned(x).argmax(1) == trained(x).argmax(1)).float().mean()) >= AGREEMENT_MIN


def test_export_for_deploy_static_report_and_sidecar(trained: nn.Module, tmp_path: Path) -> None:
    task, cfg = TASKS.get("qshapes"), _cfg(quantize="static", latency_batch=4)
    path = tmp_path / "deploy" / "cls.onnx"
    report = export_for_deploy(task, cfg, trained, path, exporter="torchscript")
    q = path.with_name("cls.int8.onnx")
    assert path.is_file() and q.is_file()
    assert [r.name for r in report.rows] == ["fp32", "int8 (static)"]
    fp, i8 = report.rows
    assert fp.max_abs_error is not None and fp.max_abs_error < 1e-4 and fp.argmax_agreement == 1.0
    assert i8.argmax_agreement is not None and i8.argmax_agreement >= AGREEMENT_MIN
    assert i8.max_abs_error is not None and 0 < i8.max_abs_error
    assert fp.scores["accuracy"] > 0.9 and abs(i8.scores["accuracy"] - fp.scores["accuracy"]) <= 0.05
    assert all(r.latency_ms is not None and r.latency_ms > 0 and r.latency_batch == 4 for r in report.rows)
    assert i8.file_bytes > 0 and fp.file_bytes > 0
    assert "4 batches (128 samples) of the test split" == report.scored_on

    cols = report.columns()
    assert cols == ["model", "accuracy", "max err", "mean err", "argmax agree", "size", "CPU ms"]
    assert "batch 4" in report.title()
    assert all(len(r) == len(cols) for r in report.table())
    data = json.loads(report_path_for(path).read_text())
    assert data["columns"] == cols and [r["model"] for r in data["rows"]] == ["fp32", "int8 (static)"]
    text = report.summary()
    assert "int8 (static)" in text and "accuracy" in text and "cls.report.json" in text

    side = json.loads(sidecar_path(path).read_text())
    assert side["task"] == "qshapes" and side["model"] == "cls.onnx" and side["precision"] == "fp32"
    assert side["inputs"] == [{"name": "input", "shape": ["batch", 1, SIDE, SIDE], "dtype": "float32"}]
    assert json.loads(sidecar_path(q).read_text())["precision"] == "int8 (static)"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "cls.int8.json", "cls.int8.onnx", "cls.json", "cls.onnx", "cls.report.json"]


def test_export_for_deploy_qat_and_no_data_fallback(trained: nn.Module, tmp_path: Path) -> None:
    task = TASKS.get("qshapes")
    cfg = _cfg(qat=True, qat_epochs=1, qat_batches=3)
    report = export_for_deploy(task, cfg, trained, tmp_path / "qat.onnx", exporter="torchscript")
    assert report.rows[1].name == "int8 (qat)"
    assert any("QDQ ONNX" in n for n in report.notes), report.notes
    assert report.rows[1].argmax_agreement is not None and report.rows[1].argmax_agreement >= AGREEMENT_MIN
    # the calibrate route of QAT: fine-tuned weights, then static calibration
    cfg = _cfg(qat=True, qat_epochs=1, qat_batches=3, qat_export="calibrate")
    report = export_for_deploy(task, cfg, trained, tmp_path / "qat2.onnx", exporter="torchscript")
    assert any("static int8 calibration of the fine-tuned weights" in n for n in report.notes), report.notes
    assert report.rows[1].argmax_agreement is not None and report.rows[1].argmax_agreement >= AGREEMENT_MIN
    # dynamic int8 scored on the example when asked not to read data: no task metric, errors and latency only
    report = export_for_deploy(task, _cfg(quantize="dynamic"), trained, tmp_path / "dyn.onnx",
                               exporter="torchscript", report_data=False)
    assert [r.name for r in report.rows] == ["fp32", "int8 (dynamic)"]
    assert report.rows[0].scores == {} and "no task data" in report.scored_on
    assert report.rows[1].max_abs_error is not None


def test_cli_export_static_prints_the_table(trained: nn.Module, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from neurotrain.cli import app
    from neurotrain.config import config_to_dict

    ckpt = tmp_path / "best.ckpt"
    cfg = _cfg()
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
                "hyper_parameters": {"config": config_to_dict(cfg)}}, ckpt)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(ckpt), "-o", str(out), "--static",
                                      "--set", "export.report_batches=2", "--set", "export.calibration_batches=2"],
                                terminal_width=250)
    assert result.exit_code == 0, result.output
    for text in ("int8 (static)", "fp32", "accuracy", "max err", "CPU ms", "m.report.json", "m.json"):
        assert text in result.output, text
    data = json.loads((tmp_path / "m.report.json").read_text())
    assert data["scored_on"].startswith("2 batches") and data["rows"][1]["argmax_agreement"] >= AGREEMENT_MIN
    # a bad override is one clean line
    result = CliRunner().invoke(app, ["export", str(ckpt), "-o", str(out), "--set", "export.quantize=int4"])
    assert result.exit_code != 0 and "export.quantize" in result.output and "Traceback" not in result.output
