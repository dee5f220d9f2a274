"""Detection export: a tiny random-weight Faster R-CNN gives the same boxes in onnxruntime as in torch; a check
that fails writes nothing; ``neurotrain export`` refuses detection with one line naming the way that works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neurotrain.errors import NotAvailableError
from neurotrain.export import ExportError
from neurotrain.tasks.vision import detection_export
from neurotrain.tasks.vision.detection_export import DetectorOnnx, _ort_outputs, export_detector


def tiny_detector() -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
    backbone.out_channels = 8  # type: ignore[assignment]
    return FasterRCNN(backbone, num_classes=3, rpn_anchor_generator=AnchorGenerator(((8, 16),), ((0.5, 1.0, 2.0),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), min_size=48, max_size=48, representation_size=16,
                      box_score_thresh=0.0, box_detections_per_img=12)


def test_onnx_boxes_equal_torch_boxes(tmp_path: Path) -> None:
    det = tiny_detector()
    res = export_detector(det, tmp_path / "det.onnx", (48, 48))
    assert (tmp_path / "det.onnx").is_file() and det.training  # the caller's mode is restored
    for c in res["checks"]:
        assert c["n_torch"] == c["n_onnx"] == 12 and c["labels_equal"] and c["max_box_error_px"] <= 1e-3
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(7))  # an image the export never saw
    with torch.no_grad():
        boxes, scores, labels = DetectorOnnx(det.eval())(x)
    got = _ort_outputs(tmp_path / "det.onnx", x)
    assert detection_export.compare((boxes, scores, labels), got)["max_box_error_px"] <= 1e-3
    assert np.all((got[0] >= 0) & (got[0] <= 48)) and got[2].dtype == np.int64


def test_a_failed_check_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detection_export, "_ort_outputs", lambda p, x: [np.zeros((1, 4), np.float32)] * 3)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_detector(tiny_detector(), tmp_path / "det.onnx", (48, 48))
    assert list(tmp_path.iterdir()) == []


def test_neurotrain_export_refuses_detection_in_one_line() -> None:
    from neurotrain.config import validate_config
    from neurotrain.registry import TASKS

    cfg = validate_config({"task": "vision", "data_source": {"name": "coco", "root": "."}})
    with pytest.raises(NotAvailableError) as err:
        TASKS.get("vision").example_input(cfg)
    assert "export_detector" in str(err.value) and "\n" not in str(err.value)
