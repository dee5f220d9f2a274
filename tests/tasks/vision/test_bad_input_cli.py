"""Bad input through the ``neurotrain`` command line for vision, as a new user meets it (issue 19, "Bad input"):
``predict`` on a folder holding a corrupt or truncated image or one of the wrong channel count (one line naming
it before any output; a counted skip with ``data_source.on_bad_file: skip``), ``train`` on folders with bad
files, COCO annotation files of the wrong shape, and ``export`` of a missing checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning  # noqa: F401  (imported here: its log handler binds to the real stderr, not to a CliRunner's)
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from neurotrain.cli import app
from neurotrain.config import config_to_dict, validate_config
from neurotrain.errors import DataError
from neurotrain.tasks.vision.coco import CocoDetection
from neurotrain.tasks.vision.data_config import DatasetSpec
from neurotrain.tasks.vision.task import VisionTask

from .conftest import disc_pair, write_image

runner = CliRunner()
SKIP = ["--set", "data_source.on_bad_file=skip"]


def _cfg(tmp: Path, kind: str = "segmentation", **extra: object) -> dict:
    data = {
        "task": "vision", "kind": kind, "seed": 0,
        "run": {"name": kind, "output_dir": str(tmp / "runs")},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "checkpoint": {"monitor": "val/loss", "mode": "min"}},
        "logging": {"tensorboard": False},
        "data": {"batch_size": 4},
        "data_source": {"name": "seg_folder" if kind == "segmentation" else "class_folder", "root": str(tmp / "data"),
                        "channels": 1, "split_fractions": [0.5, 0.25, 0.25], "cache": False},
        "model": {"name": "unet", "kwargs": {"depth": 2, "base_channels": 4}} if kind == "segmentation"
        else {"name": "simplenet", "kwargs": {"width": 4, "depth": 2}},
        "loss": {"name": "dice_ce" if kind == "segmentation" else "ce"},
        "inference": {"device": "cpu"},
    }
    data.update(extra)
    return data


def _ckpt(tmp: Path, kind: str) -> Path:
    cfg = validate_config(_cfg(tmp, kind))
    torch.manual_seed(0)
    model = VisionTask().build_model(cfg)
    path = tmp / f"{kind}.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": config_to_dict(cfg)}}, path)
    return path


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _ckpt(tmp_path_factory.mktemp("seg"), "segmentation")


def _gray(path: Path, seed: int = 0) -> Path:
    return write_image(path, disc_pair(16, seed)[0][:, :, 0])


def _one_error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, (AttributeError, TypeError, KeyError, ValueError)), result.exception
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: "), result.output
    return line


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three good 16x16 grayscale PNGs, one that is not an image, one whose pixel data is cut off."""
    d = tmp_path / "in"
    for i in range(3):
        _gray(d / f"p{i}.png", i)
    (d / "p3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))  # PNG signature, no header chunk
    good = (d / "p0.png").read_bytes()
    (d / "p4.png").write_bytes(good[:60])  # header intact, pixels truncated
    return d


def test_predict_corrupt_image_stops_before_any_output(tmp_path: Path, folder: Path, seg_ckpt: Path) -> None:
    out = tmp_path / "out"
    line = _one_error_line(runner.invoke(app, ["predict", str(seg_ckpt), str(folder), "-o", str(out)]))
    assert line.startswith(f"error: {folder / 'p3.png'}: image header: expected a readable PNG/TIFF/JPEG image")
    assert not out.exists()  # found by the header check: no mask of the good files was written first
    (folder / "p3.png").unlink()
    line = _one_error_line(runner.invoke(app, ["predict", str(seg_ckpt), str(folder), "-o", str(out)]))
    assert line.startswith(f"error: {folder / 'p4.png'}: image data:")


def test_predict_skips_bad_images_when_the_config_asks(tmp_path: Path, folder: Path, seg_ckpt: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", str(seg_ckpt), str(folder), "-o", str(out), *SKIP])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["p0_mask.png", "p1_mask.png", "p2_mask.png", "skipped.csv"]
    with open(out / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["file"]).name for r in rows] == ["p3.png", "p4.png"]
    assert ": image header:" in rows[0]["reason"] and ": image data:" in rows[1]["reason"]
    assert f"skipped 2 of 5 files (first: {folder / 'p3.png'}: image header" in res.output


def test_predict_nothing_readable_is_one_line(tmp_path: Path, folder: Path, seg_ckpt: Path) -> None:
    for i in range(3):
        (folder / f"p{i}.png").unlink()
    line = _one_error_line(runner.invoke(app, ["predict", str(seg_ckpt), str(folder), "-o", str(tmp_path / "o"), *SKIP]))
    assert line.startswith(f"error: {folder}: none of 2 images could be read (first: {folder / 'p3.png'}: image header")


def test_predict_rgb_where_gray_is_expected(tmp_path: Path, seg_ckpt: Path) -> None:
    d = tmp_path / "in"
    _gray(d / "a.png")
    write_image(d / "b.png", disc_pair(16, 1)[0])  # RGB
    _gray(d / "c.png", 2)
    out = tmp_path / "out"
    line = _one_error_line(runner.invoke(app, ["predict", str(seg_ckpt), str(d), "-o", str(out)]))
    assert line.startswith(f"error: {d / 'b.png'}: channels: expected a 1-channel (grayscale) image (got 3 channels")
    assert not out.exists()
    res = runner.invoke(app, ["predict", str(seg_ckpt), str(d), "-o", str(out), "--set", "data_source.convert_gray=true"])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*_mask.png"))) == 3


def test_classifier_predict_skips_only_the_bad_image(tmp_path: Path) -> None:
    ckpt = _ckpt(tmp_path, "classification")
    d = tmp_path / "in"
    for i in range(3):
        _gray(d / f"c{i}.png", i)
    (d / "c1x.png").write_text("not an image")
    out = tmp_path / "out"
    line = _one_error_line(runner.invoke(app, ["predict", str(ckpt), str(d), "-o", str(out)]))
    assert f"{d / 'c1x.png'}: image header" in line and not out.exists()
    res = runner.invoke(app, ["predict", str(ckpt), str(d), "-o", str(out), *SKIP])
    assert res.exit_code == 0, res.output
    with open(out / "labels.csv", newline="") as fh:
        assert [Path(r["path"]).name for r in csv.DictReader(fh)] == ["c0.png", "c1.png", "c2.png"]
    assert "skipped 1 of 4 files" in res.output


def _disc_folder(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """``n`` grey disc image/mask pairs under ``tmp_path / data`` and the config file that trains on them."""
    root = tmp_path / "data"
    for i in range(n):
        img, msk = disc_pair(16, i)
        write_image(root / "images" / f"im{i}.png", img[:, :, 0])
        write_image(root / "masks" / f"im{i}.png", msk)
    cfg = tmp_path / "v.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(tmp_path)))
    return root, cfg


def test_train_on_a_folder_with_a_corrupt_image(tmp_path: Path) -> None:
    root, cfg = _disc_folder(tmp_path, 8)
    (root / "images" / "im3.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    line = _one_error_line(runner.invoke(app, ["train", str(cfg)]))
    assert line.startswith(f"error: {root / 'images' / 'im3.png'}: image header:")
    res = runner.invoke(app, ["train", str(cfg), "data_source.on_bad_file=skip", "run.name=skip"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "vision" / "skip" / "checkpoints" / "last.ckpt").is_file()


def test_train_on_a_folder_too_small_for_its_splits(tmp_path: Path) -> None:
    root, cfg = _disc_folder(tmp_path, 2)
    line = _one_error_line(runner.invoke(app, ["train", str(cfg), "data_source.split_fractions=[0.8,0.1,0.1]"]))
    assert line == (f"error: {root}: val split: expected at least one image/mask pair (got none of 2 with "
                    "split_fractions [0.8, 0.1, 0.1]; add pairs or change them)")


def test_export_of_a_missing_checkpoint(tmp_path: Path) -> None:
    line = _one_error_line(runner.invoke(app, ["export", str(tmp_path / "none.ckpt"), "-o", str(tmp_path / "m.onnx")]))
    assert line == f"error: {tmp_path / 'none.ckpt'}: checkpoint not found"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- COCO annotation files


def _coco(tmp: Path, doc: object) -> DatasetSpec:
    for i in range(2):
        write_image(tmp / "images" / f"a{i}.png", disc_pair(16, i)[0])
    (tmp / "annotations.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return DatasetSpec(name="coco", root=tmp, split_fractions=(1, 0, 0))


def _doc() -> dict:
    return {"images": [{"id": i + 1, "file_name": f"a{i}.png", "width": 16, "height": 16} for i in range(2)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0}
                            for i in range(2)],
            "categories": [{"id": 1, "name": "disc"}]}


def _mutate(change: str) -> object:
    doc = _doc()
    if change == "list":
        return [doc]
    if change == "not_json":
        return "{ not json"
    if change == "text_bbox":
        doc["annotations"][0]["bbox"] = ["x", 1, 2, 3]
    elif change == "nan_bbox":
        doc["annotations"][0]["bbox"] = [1, 1, float("nan"), 2]
    elif change == "no_file_name":
        del doc["images"][1]["file_name"]
    elif change == "text_id":
        doc["images"][0]["id"] = "one"
    elif change == "entry_not_object":
        doc["annotations"][1] = 5
    elif change == "category_without_id":
        del doc["categories"][0]["id"]
    return doc


@pytest.mark.parametrize("change, want", [
    ("list", "JSON: expected a COCO object with images, annotations and categories (got a list)"),
    ("not_json", "JSON: expected valid COCO JSON"),
    ("text_bbox", "annotation 1 (image a0.png): bbox: expected [x, y, w, h], four finite numbers (got ['x', 1, 2, 3])"),
    ("nan_bbox", "annotation 1 (image a0.png): bbox: expected [x, y, w, h], four finite numbers"),
    ("no_file_name", "images[1]: file_name: expected a value (missing)"),
    ("text_id", "images[0]: id: expected an integer (got 'one')"),
    ("entry_not_object", "annotations[1]: expected an object (got int 5)"),
    ("category_without_id", "categories[0]: id: expected a value (missing)"),
])
def test_coco_file_of_the_wrong_shape_is_one_line(tmp_path: Path, change: str, want: str) -> None:
    spec = _coco(tmp_path, _mutate(change))
    with pytest.raises(DataError) as info:
        CocoDetection(spec, "train")
    assert str(info.value).startswith(f"{tmp_path / 'annotations.json'}: ") and want in str(info.value)
    assert "\n" not in str(info.value)


def test_coco_bad_box_is_a_counted_skip_and_string_ids_still_read(tmp_path: Path) -> None:
    doc = _mutate("text_bbox")
    doc["images"][1]["id"] = "2"  # integer text, as some tools write it
    spec = _coco(tmp_path, doc).model_copy(update={"on_bad_file": "skip"})
    ds = CocoDetection(spec, "train")
    assert len(ds.skipped) == 1 and "bbox" in ds.skipped[0][1]
    assert [len(ds[i]["boxes"]) for i in range(len(ds))] == [0, 1]


def test_coco_polygon_of_text_is_a_skip_mid_epoch_not_a_crash(tmp_path: Path) -> None:
    doc = _doc()
    doc["annotations"][0]["segmentation"] = [[1, 1, "x", 2, 3, 3]]
    doc["annotations"][1]["segmentation"] = [[2, 2, 10, 2, 10, 10, 2, 10]]
    ds = CocoDetection(_coco(tmp_path, doc), "train")
    with pytest.raises(DataError, match=r"annotations\.json: image a0\.png: segmentation: expected polygons"):
        ds[0]
    ds = CocoDetection(_coco(tmp_path, doc).model_copy(update={"on_bad_file": "skip"}), "train")
    assert ds[0]["path"].endswith("a1.png") and ds[0]["masks"].shape == (1, 16, 16)
    assert np.count_nonzero(ds[0]["masks"].numpy()) > 0


def test_truncated_tiff_is_one_line_without_tifffile_noise(tmp_path: Path, seg_ckpt: Path, caplog) -> None:
    d = tmp_path / "in"
    p = write_image(d / "t.tif", disc_pair(16, 0)[0][:, :, 0])
    p.write_bytes(p.read_bytes()[:200])  # pixel data and part of the tags cut off
    with caplog.at_level("WARNING"):
        res = runner.invoke(app, ["predict", str(seg_ckpt), str(d), "-o", str(tmp_path / "out")])
    line = _one_error_line(res)
    assert line.startswith(f"error: {p}: image ")
    # tifffile's own warnings about the damaged tags would print above the error line
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("tifffile")]


# --------------------------------------------------------------------------- classification CSV


def _csv_root(tmp: Path, text: str | bytes) -> Path:
    root = tmp / "data"
    for i in range(4):
        _gray(root / f"i{i}.png", i)
    target = root / "labels.csv"
    target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
    return root


def test_class_csv_that_is_not_text_is_one_line_through_train(tmp_path: Path) -> None:
    _csv_root(tmp_path, bytes(range(256)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(tmp_path, "classification")))
    line = _one_error_line(runner.invoke(app, ["train", str(cfg), "data_source.name=class_csv"]))
    assert line.startswith(f"error: {tmp_path / 'data' / 'labels.csv'}: CSV: expected UTF-8 text with columns path,label")


def test_class_csv_empty_label_is_not_a_class(tmp_path: Path) -> None:
    from neurotrain.tasks.vision.datasets import build_dataset

    root = _csv_root(tmp_path, "path,label\ni0.png,0\ni1.png,1\ni2.png,\ni3.png,1\n")
    spec = DatasetSpec(name="class_csv", root=root, split_fractions=(1, 0, 0), channels=1)
    with pytest.raises(DataError, match=r"labels\.csv: line 4: label: expected a value \(got an empty field\)"):
        build_dataset(spec, "train")
    ds = build_dataset(spec.model_copy(update={"on_bad_file": "skip"}), "train")
    # the integer labels stay class indices: the empty one neither becomes a class "" nor turns the rest into names
    assert ds.class_names == ["0", "1"] and len(ds) == 3
    assert sorted(int(ds[i]["label"]) for i in range(3)) == [0, 1, 1]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("i2.png")
    root.joinpath("labels.csv").write_text("label,path\n0,i0.png\n1\n")  # a short row: no path
    with pytest.raises(DataError, match=r"labels\.csv: line 3: path: expected a value"):
        build_dataset(spec, "train")


def test_multipage_tiff_stack_is_named_as_a_stack(tmp_path: Path, seg_ckpt: Path) -> None:
    import tifffile

    d = tmp_path / "in"
    _gray(d / "a.tif")
    tifffile.imwrite(d / "stack.tif", np.zeros((5, 16, 16), np.uint8))  # five pages: a movie, not one image
    out = tmp_path / "out"
    line = _one_error_line(runner.invoke(app, ["predict", str(seg_ckpt), str(d), "-o", str(out)]))
    assert line == (f"error: {d / 'stack.tif'}: image shape: expected one 2-D image, axes Y X [channels] "
                    "(got a TIFF stack of shape (5, 16, 16), axes QYX)")
    assert not out.exists()
    # one image of three planar channels (axes SYX) is not a stack: its channels come last
    from neurotrain.tasks.vision.dataset_base import read_image

    rgb = np.stack([np.full((4, 6), v, np.uint8) for v in (0, 128, 255)])
    tifffile.imwrite(d / "planar.tif", rgb, planarconfig="separate")
    img = read_image(d / "planar.tif", channels=3)
    assert img.shape == (3, 4, 6) and torch.allclose(img[:, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]))
