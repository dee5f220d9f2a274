"""Vision deployment: the sidecar carries the pre/post-processing, and ``OnnxPredictor`` on the exported model
gives exactly the masks and labels of ``neurotrain predict`` (torch + postprocess) on the same files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from neurotrain.errors import DataError
from neurotrain.export_report import export_for_deploy, sidecar_path
from neurotrain.registry import TASKS
from neurotrain.tasks.vision.config import VisionConfig
from neurotrain.tasks.vision.deploy import (
    OnnxPredictor,
    vision_export_dynamic_spatial,
    vision_export_inputs,
    vision_export_metadata,
)
from neurotrain.tasks.vision.predict import predict_files

from .conftest import disc_pair, write_image

SIZES = [(32, 32), (48, 40), (40, 56)]  # the segmenter is exported with dynamic height/width


class MarginSegmenter(nn.Module):
    """Foreground logit = 40 * (3x3 local mean of the RGB image - 0.45) through a conv net with extra random
    channels. On uint8 images the local mean moves in steps of 1/(27*255), so every logit is at least 1.4e-3
    away from 0: far beyond the ~1e-6 difference between onnxruntime and torch, so the thresholded masks must
    agree exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.conv1.weight[0] = 1.0 / 27.0
            self.conv1.bias[0] = 0.0
            self.conv2.weight.zero_()
            self.conv2.bias.zero_()
            self.conv2.weight[1, 0] = 40.0
            self.conv2.bias[1] = -18.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def _seg_cfg(root: Path, **post: object) -> VisionConfig:
    return VisionConfig.model_validate({
        "task": "vision", "kind": "segmentation",
        "data_source": {"name": "seg_folder", "root": str(root), "channels": 3, "n_classes": 2, "size": [32, 32],
                        "split_fractions": [0.6, 0.2, 0.2]},
        "data": {"batch_size": 2},
        "postprocess": {"threshold": 0.5, "open_radius": 1, "min_size": 6, "tta_flips": True, **post},
        "inference": {"device": "cpu"},
        "export": {"latency_repeats": 2, "latency_warmup": 0, "report_batches": 2, "calibration_batches": 2},
    })


def _write_images(folder: Path, n: int, with_masks: bool = True) -> list[Path]:
    paths = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        img, mask = disc_pair(max(h, w), seed=i)
        rng = np.random.default_rng(100 + i)
        img = np.clip(img[:h, :w].astype(int) + rng.integers(-60, 60, (h, w, 1)), 0, 255).astype(np.uint8)
        paths.append(write_image(folder / "images" / f"im{i:02d}.png", img))
        if with_masks:
            write_image(folder / "masks" / f"im{i:02d}.png", mask[:h, :w])
    return paths


@pytest.fixture
def vision_hooks(monkeypatch: pytest.MonkeyPatch) -> object:
    """The vision task with the three deploy hooks (what its task.py is to call)."""
    task = TASKS.get("vision")
    monkeypatch.setattr(task, "export_inputs", lambda cfg, batch: vision_export_inputs(cfg, batch), raising=False)
    monkeypatch.setattr(task, "export_metadata", lambda cfg: vision_export_metadata(cfg), raising=False)
    monkeypatch.setattr(task, "export_dynamic_spatial", lambda cfg: vision_export_dynamic_spatial(cfg), raising=False)
    return task


def test_segmentation_round_trip_equals_neurotrain_predict(tmp_path: Path, vision_hooks: object) -> None:
    data = tmp_path / "data"
    files = _write_images(data, 10)
    cfg = _seg_cfg(data)
    model = MarginSegmenter().eval()
    onnx_path = tmp_path / "export" / "seg.onnx"
    report = export_for_deploy(vision_hooks, cfg, model, onnx_path)  # type: ignore[arg-type]
    assert report.export.dynamic_spatial and report.export.other_input_shape == [3, 3, 64, 64]
    assert "dice" in report.rows[0].scores and report.rows[0].scores["dice"] > 0.5

    side = json.loads(sidecar_path(onnx_path).read_text())
    assert side["kind"] == "segmentation" and side["classes"] == ["0", "1"]
    assert side["inputs"][0]["shape"] == ["batch", 3, "input_dim2", "input_dim3"]
    assert side["preprocess"]["channels"] == 3 and side["preprocess"]["value_scaling"]["uint8"] == 255.0
    assert side["preprocess"]["mean"] == [0.0] * 3 and side["preprocess"]["std"] == [1.0] * 3
    assert side["postprocess"]["min_size"] == 6 and side["postprocess"]["threshold"] == 0.5
    assert side["postprocess"]["tta_flips"] is True and side["postprocess"]["open_radius"] == 1

    torch_masks = predict_files(cfg, model, [data / "images"], tmp_path / "pred")
    assert len(torch_masks) == len(files)
    predictor = OnnxPredictor(onnx_path)
    n_fg = 0
    for f, m in zip(files, sorted(torch_masks)):
        ref = np.asarray(Image.open(m)).astype(np.int64)
        got = predictor.predict(np.asarray(Image.open(f)))
        assert isinstance(got, np.ndarray) and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)  # exact, including the open / min-size / TTA steps
        n_fg += int(ref.sum())
    assert n_fg > 100  # the masks are not trivially empty


def test_classification_round_trip_and_gray_input(tmp_path: Path, vision_hooks: object) -> None:
    root = tmp_path / "cls"
    for k, name in enumerate(["disc", "square"]):
        for i in range(3):
            img, _ = disc_pair(24, seed=10 * k + i)
            write_image(root / name / f"{name}{i}.png", img[:, :, 0])  # grayscale files, 1-channel net
    cfg = VisionConfig.model_validate({
        "task": "vision", "kind": "classification",
        "data_source": {"name": "class_folder", "root": str(root), "channels": 1, "size": [24, 24],
                        "class_names": ["disc", "square"]},
        "inference": {"device": "cpu"},
    })
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(24, 2)).eval()
    onnx_path = tmp_path / "cls.onnx"
    report = export_for_deploy(vision_hooks, cfg, model, onnx_path, exporter="torchscript",  # type: ignore[arg-type]
                               report_data=False)
    assert not report.export.dynamic_spatial
    side = json.loads(sidecar_path(onnx_path).read_text())
    assert side["kind"] == "classification" and side["classes"] == ["disc", "square"]
    assert side["preprocess"]["train_size"] == [24, 24]

    files = sorted(root.rglob("*.png"))
    (written,) = predict_files(cfg, model, files, tmp_path / "pred")
    with open(written, newline="") as fh:
        ref = {row["path"]: (int(row["label"]), row["class"]) for row in csv.DictReader(fh)}
    predictor = OnnxPredictor(onnx_path)
    for f in files:
        arr = np.asarray(Image.open(f))
        assert predictor.predict(arr) == ref[str(f)][0] and predictor.label(arr) == ref[str(f)][1]
    # an RGB array where the net expects 1 channel: one clear error (convert_gray is off)
    with pytest.raises(DataError, match="channels: expected 1 \\(got 3\\)"):
        predictor.predict(np.zeros((24, 24, 3), np.uint8))


def test_preprocess_matches_the_dataset_reader(tmp_path: Path) -> None:
    """The sidecar's value scaling and channel rules give the tensor the training reader gives."""
    from neurotrain.tasks.vision.dataset_base import read_image

    cfg = _seg_cfg(tmp_path)
    meta = {"task": "vision", "inputs": [], **vision_export_metadata(cfg)}
    pred = OnnxPredictor.__new__(OnnxPredictor)
    pred.meta, pred.kind, pred.path = meta, meta["kind"], tmp_path
    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 255, (9, 7), dtype=np.uint8), rng.integers(0, 65535, (9, 7, 3), dtype=np.uint16),
                rng.integers(0, 255, (9, 7, 4), dtype=np.uint8)):
        path = write_image(tmp_path / f"x{arr.dtype}{arr.ndim}.tif", arr)
        np.testing.assert_array_equal(pred.preprocess(arr), read_image(path, 3, False).numpy())


def test_missing_or_foreign_sidecar_is_one_clear_error(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"")
    with pytest.raises(DataError, match=r"m\.json: sidecar: expected the JSON written by neurotrain export"):
        OnnxPredictor(onnx_path)
    (tmp_path / "m.json").write_text(json.dumps({"task": "gamma"}))
    with pytest.raises(DataError, match="expected a vision export"):
        OnnxPredictor(onnx_path)
