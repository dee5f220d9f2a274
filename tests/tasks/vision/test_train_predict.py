"""End to end on tiny synthetic sets: a short U-Net training beats its untrained self, ONNX export reproduces it,
``test`` / ``evaluate`` write tables and figures, ``predict`` writes masks and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.config import validate_config
from neurotrain.engine import api
from neurotrain.engine.checkpoint import load_model


def _seg_cfg(tmp: Path, **extra: object) -> object:
    data = {
        "task": "vision", "kind": "segmentation", "seed": 0,
        "run": {"name": "seg", "output_dir": str(tmp / "runs")},
        "trainer": {"max_epochs": 6, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "checkpoint": {"monitor": "val/dice", "mode": "max"}},
        "logging": {"tensorboard": False, "log_every_n_steps": 1},
        "optim": {"lr": 0.01},
        "data": {"batch_size": 8},
        "data_source": {"name": "synthetic_shapes", "root": str(tmp / "shapes"), "channels": 1,
                        "split_fractions": [0.6, 0.2, 0.2],
                        "synthetic": {"kind": "segmentation", "n": 40, "size": 32, "seed": 0}},
        "model": {"name": "unet", "kwargs": {"depth": 2, "base_channels": 8}},
        "postprocess": {"min_size": 4},
        "evaluate": {"n_examples": 2},
        "inference": {"device": "cpu"},
    }
    data.update(extra)
    return validate_config(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    tmp = tmp_path_factory.mktemp("vision")
    cfg = _seg_cfg(tmp)
    run = api.train(cfg, overwrite=True)
    return cfg, run / "checkpoints" / "best.ckpt"


def test_training_beats_the_untrained_network(trained: tuple[object, Path]) -> None:
    from neurotrain.engine.api import get_task
    from neurotrain.tasks.vision.evaluate import _segmentation

    cfg, ckpt = trained
    torch.manual_seed(0)
    untrained = get_task(cfg).build_model(cfg)
    _, model = load_model(ckpt)
    before = _segmentation(cfg, untrained, "test", baseline=False)["network"]["dice"]
    after = _segmentation(cfg, model, "test", baseline=False)["network"]["dice"]
    assert after > 0.6 and after > before + 0.2, (before, after)


def test_evaluate_and_test_write_reports(trained: tuple[object, Path]) -> None:
    cfg, ckpt = trained
    result = api.evaluate(cfg, ckpt)
    m = result.metrics
    assert result.headline_name.startswith("Dice") and not result.lower_is_better
    assert result.headline_network == pytest.approx(m["network"]["dice"])
    assert result.headline_baseline == pytest.approx(m["baseline"]["dice"])
    for key in ("dice", "iou", "hd95", "nsd", "instance_mf1", "instance_f1@0.50"):
        assert key in m["network"] and key in m["baseline"]
    report = cfg.run_dir / "report"
    for name in ("report.md", "per_class.csv", "examples.png", "per_class.png", "training_curves.png"):
        assert (report / name).is_file(), name
    flat = api.test(cfg, ckpt)
    assert "dice/1" in flat and flat["n_images"] == m["n_images"]
    assert (cfg.run_dir / "test" / "per_class.csv").read_text().startswith("class,dice,iou")


def test_onnx_export_matches_torch(trained: tuple[object, Path], tmp_path: Path) -> None:
    from neurotrain.engine.api import get_task
    from neurotrain.export import export_onnx

    cfg, ckpt = trained
    cfg2, model = load_model(ckpt)
    example = get_task(cfg2).example_input(cfg2)
    assert example[0].shape == (1, 1, 32, 32)
    report = export_onnx(model, example, tmp_path / "unet.onnx")
    assert report.max_abs_error is not None and report.max_abs_error <= 1e-4
    assert report.max_abs_error_other_batch is not None and report.max_abs_error_other_batch <= 1e-4


def test_predict_writes_masks_for_a_folder(trained: tuple[object, Path], tmp_path: Path) -> None:
    from PIL import Image

    cfg, ckpt = trained
    images = sorted((Path(cfg.data_source.root) / "images").glob("*.png"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    written = api.predict(ckpt, [folder], out, ["predict.save_instances=true"])
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == 3 and len(written) == 6
    truth = np.asarray(Image.open(Path(cfg.data_source.root) / "masks" / images[0].name)) > 0
    pred = np.asarray(Image.open(masks[0]))
    assert pred.shape == truth.shape and set(np.unique(pred)) <= {0, 1}
    assert not list(out.glob(".*tmp*"))  # no temporary file left behind


def test_classifier_end_to_end(tmp_path: Path) -> None:
    cfg = validate_config({
        "task": "vision", "kind": "classification", "seed": 0,
        "run": {"name": "cls", "output_dir": str(tmp_path / "runs")},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "progress_bar": False},
        "logging": {"tensorboard": False},
        "data": {"batch_size": 8},
        "data_source": {"name": "synthetic_shapes", "root": str(tmp_path / "cls"), "channels": 1,
                        "split_fractions": [0.5, 0.25, 0.25],
                        "synthetic": {"kind": "classification", "n": 8, "size": 32, "seed": 0}},
        "model": {"name": "simplenet", "kwargs": {"width": 4, "depth": 2}},
        "loss": {"name": "ce"},
        "metrics": {"top_k": 2},
        "evaluate": {"n_examples": 3},
        "inference": {"device": "cpu"},
    })
    run = api.train(cfg, overwrite=True)
    result = api.evaluate(cfg)
    assert set(result.metrics["network"]) >= {"accuracy", "precision", "recall", "f1", "auroc", "top2"}
    assert result.metrics["per_class"]["class"] == ["disc", "square", "triangle"]
    for name in ("confusion_matrix.png", "roc_pr.png", "examples.png"):
        assert (run / "report" / name).is_file(), name
    img = next((tmp_path / "cls" / "disc").glob("*.png"))
    written = api.predict(run / "checkpoints" / "last.ckpt", [img], tmp_path / "pred")
    rows = written[0].read_text().splitlines()
    assert rows[0].startswith("path,label,class,score") and len(rows) == 2
