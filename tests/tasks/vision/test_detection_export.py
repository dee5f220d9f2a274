"""Detection export: a tiny random-weight Faster R-CNN gives the same boxes in onnxruntime as in torch; a check
that fails writes nothing; ``neurotrain export`` (export_for_deploy) writes the detector, its sidecar and report,
and the ONNX predictor reproduces ``predict``'s boxes; int8 and a missing size are refused in one line."""

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


def detection_cfg(tmp_path: Path, **extra: object) -> object:
    from neurotrain.config import validate_config

    data = {"task": "vision", "data_source": {"name": "coco", "root": str(tmp_path / "no-such-coco")},
            "predict": {"export_size": [48, 48]}, "postprocess": {"score_threshold": 0.0},
            "export": {"latency_repeats": 2, "latency_warmup": 1}}
    for key, value in extra.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value  # type: ignore[index]
    return validate_config(data)


def test_neurotrain_export_of_a_detector_writes_model_sidecar_and_report(tmp_path: Path) -> None:
    """The path ``neurotrain export CKPT`` takes (export_for_deploy -> VisionTask.export_model); then the ONNX file
    with its sidecar gives the boxes ``neurotrain predict`` gives (predict.detect), at the export size and at
    twice it (resized in, boxes scaled back)."""
    import json

    from neurotrain.export_report import export_for_deploy
    from neurotrain.registry import TASKS
    from neurotrain.tasks.vision.deploy import OnnxPredictor
    from neurotrain.tasks.vision.predict import detect

    cfg = detection_cfg(tmp_path)
    det = tiny_detector()
    report = export_for_deploy(TASKS.get("vision"), cfg, det, tmp_path / "det.onnx")
    assert {p.name for p in tmp_path.iterdir()} == {"det.onnx", "det.json", "det.report.json"}
    assert report.rows[0].max_abs_error <= 1e-3 and report.rows[0].latency_ms > 0
    assert "random images" in report.scored_on  # no COCO data here: random check images, said so
    side = json.loads((tmp_path / "det.json").read_text())
    assert side["kind"] == "detection" and side["preprocess"]["resize"]["size"] == [48, 48]
    assert side["inputs"][0]["shape"] == [1, 3, 48, 48] and side["outputs"] == ["boxes", "scores", "labels"]

    onnx = OnnxPredictor(tmp_path / "det.onnx")
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    big = np.kron(small, np.ones((2, 2, 1), dtype=np.uint8))  # 96 x 96, each pixel doubled
    for img in (small, big):
        got = onnx.detect(img)
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
        ref = detect(cfg, det, [torch.nn.functional.interpolate(x[None], size=(48, 48), mode="bilinear",
                                                                align_corners=False)[0]])[0]
        scale = img.shape[0] / 48
        c = detection_export.compare((ref["boxes"] * scale, ref["scores"], ref["labels"]),
                                     [got["boxes"], got["scores"], got["labels"]])
        assert c["n_torch"] == c["n_onnx"] > 0 and c["labels_equal"] and c["max_box_error_px"] <= 2e-3 * scale


def test_detector_export_refusals_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    from neurotrain.errors import ConfigError
    from neurotrain.export_report import export_for_deploy
    from neurotrain.registry import TASKS

    task = TASKS.get("vision")
    for extra, error, words in (({"export__quantize": "dynamic"}, NotAvailableError, "dynamic int8 of a detector"),
                                ({"export__qat": True}, NotAvailableError, "quantisation-aware"),
                                ({"predict__export_size": None}, ConfigError, "predict.export_size")):
        with pytest.raises(error) as err:
            export_for_deploy(task, detection_cfg(tmp_path, **extra), tiny_detector(), tmp_path / "det.onnx")
        assert words in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotAvailableError) as err:  # the generic example-input path is not the detectors' way
        task.example_input(detection_cfg(tmp_path))
    assert "export_model" in str(err.value) and "\n" not in str(err.value)


def test_check_images_come_from_the_validation_split_resized(tmp_path: Path) -> None:
    import json

    from neurotrain.config import validate_config
    from neurotrain.tasks.vision.detection_export import check_images

    from .conftest import write_image

    rng = np.random.default_rng(0)
    for k in range(4):
        write_image(tmp_path / "images" / f"{k}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    doc = {"images": [{"id": k + 1, "file_name": f"{k}.png", "width": 30, "height": 20} for k in range(4)],
           "annotations": [{"id": k + 1, "image_id": k + 1, "bbox": [2, 3, 10, 5], "category_id": 1, "iscrowd": 0}
                           for k in range(4)],
           "categories": [{"id": 1, "name": "cell"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    cfg = validate_config({"task": "vision", "data_source": {"name": "coco", "root": str(tmp_path),
                                                             "split_fractions": [0.5, 0.5, 0.0]},
                           "data": {"batch_size": 1, "num_workers": 0}})
    images, source = check_images(cfg, (48, 64), 3)
    assert len(images) == 2 and all(t.shape == (1, 3, 48, 64) for t in images)
    assert source == "2 validation images resized to 48x64"
    assert 0.3 < float(images[0].mean()) < 0.7  # the random pixels, scaled to [0, 1]
