"""ONNX export: onnxruntime reproduces torch, dynamic batch, int8 quantisation, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from neurotrain.errors import NeurotrainError
from neurotrain.export import ExportCheckError, ExportError, export_onnx, quantized_path_for


def _conv1d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.GELU(), nn.Conv1d(8, 1, 3, padding=1)
    )


class _Conv2dTwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.seg = nn.Conv2d(6, 2, 1)
        self.cls = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.seg(h), self.cls(h.mean(dim=(2, 3)))


def _run(path: Path, *xs: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_conv1d_matches_torch_and_batch_is_dynamic(tmp_path: Path, exporter: str) -> None:
    model = _conv1d().train()  # export must switch BatchNorm to eval and restore the flag
    x = torch.randn(4, 2, 64, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "out" / "net.onnx"
    report = export_onnx(model, x, path, exporter=exporter)
    assert model.training
    assert report.exporter == exporter and report.path == path and path.is_file()
    assert report.max_abs_error is not None and report.max_abs_error <= 1e-4
    assert report.other_batch_size == 3
    assert report.max_abs_error_other_batch is not None and report.max_abs_error_other_batch <= 1e-4
    assert [p.name for p in path.parent.iterdir()] == ["net.onnx"]  # no temp file left
    onnx.checker.check_model(str(path))

    model.eval()
    for b in (1, 9):
        xb = torch.randn(b, 2, 64)
        with torch.no_grad():
            ref = model(xb).numpy()
        (got,) = _run(path, xb.numpy())
        assert got.shape == (b, 1, 64)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    json.dumps(report.to_dict())  # plain data
    assert "max |diff|" in report.summary() and str(path) in str(report)


def test_conv2d_two_outputs_batch_one_example_and_quantised(tmp_path: Path) -> None:
    model = _Conv2dTwoHeads().eval()
    x = torch.randn(1, 1, 16, 16)  # batch 1: must still export a dynamic batch axis
    path = tmp_path / "seg.onnx"
    report = export_onnx(model, x, path, quantize=True)
    assert report.output_names == ["output_0", "output_1"]
    assert report.exporter == "dynamo", report.notes  # batch 1 is traced as 2, so dynamo works
    assert report.max_abs_error is not None and report.max_abs_error <= 1e-4
    assert report.max_abs_error_other_batch is not None and report.max_abs_error_other_batch <= 1e-4
    xb = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        ref_seg, ref_cls = model(xb)
    seg, cls = _run(path, xb.numpy())
    np.testing.assert_allclose(seg, ref_seg.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(cls, ref_cls.numpy(), atol=1e-4, rtol=0)

    qpath = quantized_path_for(path)
    assert qpath.name == "seg.int8.onnx" and report.quantized_path == qpath and qpath.is_file()
    qseg, qcls = _run(qpath, xb.numpy())
    assert qseg.shape == (5, 2, 16, 16) and qcls.shape == (5, 3)
    err = report.quantized_max_abs_error
    assert err is not None and 0 < err < 0.1  # int8 moves outputs, but not far
    assert np.abs(qseg - ref_seg.numpy()).max() < 0.1


def test_fixed_batch_export(tmp_path: Path) -> None:
    model = _conv1d().eval()
    path = tmp_path / "fixed.onnx"
    report = export_onnx(model, torch.randn(3, 2, 32), path, dynamic_batch=False, exporter="torchscript")
    assert report.max_abs_error is not None and report.max_abs_error_other_batch is None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [3, 2, 32]


class _DriftsInOnnx(nn.Module):
    """Behaves differently when traced: torch and the ONNX graph disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return x + 1.0
        return x


def test_mismatch_raises_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"previous good file")
    with pytest.raises(ExportCheckError, match=r"bad\.onnx: ONNX output differs from PyTorch by 1 ") as info:
        export_onnx(_DriftsInOnnx(), torch.zeros(2, 3), path, exporter="torchscript")
    assert isinstance(info.value, NeurotrainError) and "\n" not in str(info.value)
    assert path.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]
    # with check=False the file is written and nothing is compared
    report = export_onnx(_DriftsInOnnx(), torch.zeros(2, 3), path, exporter="torchscript", check=False)
    assert report.max_abs_error is None and path.stat().st_size > 100


def test_bad_example_inputs() -> None:
    with pytest.raises(ExportError, match="example_inputs"):
        export_onnx(_conv1d(), [1, 2, 3], "x.onnx")  # type: ignore[arg-type]
