"""Every vision metric against a case computed by hand."""

from __future__ import annotations

import pytest
import torch

from neurotrain.errors import ConfigError
from neurotrain.tasks.vision.metrics import (
    InstanceF1,
    SurfaceDistance,
    build_metrics,
    instance_map,
    label_iou,
    match_counts,
    per_class_table,
)


def test_dice_and_iou_pool_pixels_over_the_set() -> None:
    # image 1: pred 4 fg px, truth 2, overlap 2; image 2: pred 1, truth 1, overlap 1
    pred = torch.tensor([[[1, 1, 1, 1]], [[1, 0, 0, 0]]])
    true = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 0, 0]]])
    m = build_metrics("segmentation", 2, ["dice", "iou"])
    m.update(pred, true)
    r = m.compute()
    assert float(r["dice"]) == pytest.approx(2 * 3 / (5 + 3))  # 0.75
    assert float(r["iou"]) == pytest.approx(3 / 5)
    table = per_class_table("segmentation", 2, pred, true)
    # background: pred 3 px, truth 5 px, overlap 3 -> Dice 6/8, IoU 3/5
    assert table["dice"] == pytest.approx([0.75, 0.75])
    assert table["iou"] == pytest.approx([0.6, 0.6])
    assert table["support"] == [5.0, 3.0]


def test_hd95_and_surface_dice_of_a_shifted_pixel() -> None:
    pred = torch.zeros(1, 9, 9, dtype=torch.long)
    true = torch.zeros(1, 9, 9, dtype=torch.long)
    pred[0, 4, 2] = 1
    true[0, 4, 5] = 1  # 3 px apart
    hd = SurfaceDistance("hd95", 2)
    hd.update(pred, true)
    assert float(hd.compute()) == pytest.approx(3.0)
    for tol, expected in ((1.0, 0.0), (3.0, 1.0)):
        nsd = SurfaceDistance("nsd", 2, tolerance=tol)
        nsd.update(pred, true)
        assert float(nsd.compute()) == pytest.approx(expected)


def test_classification_metrics() -> None:
    # 4 samples, 3 classes; predicted classes 0, 1, 1, 2 for labels 0, 1, 2, 2
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 1, 2, 2])
    m = build_metrics("classification", 3, ["accuracy", "precision", "recall", "f1", "auroc", "top_k"], top_k=2)
    m.update(probs, labels)
    r = {k: float(v) for k, v in m.compute().items()}
    assert r["accuracy"] == pytest.approx(3 / 4)
    # per class precision 1, 1/2, 1; recall 1, 1, 1/2
    assert r["precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert r["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert r["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert r["top2"] == pytest.approx(1.0)  # the third sample's label is its second choice
    # one-vs-rest AUROC: class 0 and 1 rank perfectly; class 2 scores 0.1, 0.1 (neg) vs 0.3, 0.7 (pos) -> 1
    assert r["auroc"] == pytest.approx(1.0)
    table = per_class_table("classification", 3, probs, labels)
    assert table["recall"] == pytest.approx([1.0, 1.0, 0.5])
    assert table["support"] == [1.0, 1.0, 2.0]


def test_instance_iou_matching_and_f1() -> None:
    pred = torch.tensor([[1, 1, 0, 2, 2], [0, 0, 0, 2, 2]])  # instance 1: 2 px; instance 2: 4 px
    true = torch.tensor([[5, 5, 0, 0, 7], [0, 0, 0, 0, 7]])  # 5 matches 1 exactly; 7 is 2 px inside 2
    iou = label_iou(pred, true)
    assert iou.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 0.5])
    assert match_counts(iou, [0.5, 0.9]).tolist() == [[2, 0, 0], [1, 1, 1]]
    f1 = InstanceF1([0.5, 0.9])
    f1.update(pred[None], true[None])
    r = f1.compute()
    assert float(r["f1@0.50"]) == pytest.approx(1.0)
    assert float(r["f1@0.90"]) == pytest.approx(2 * 1 / (2 + 1 + 1))
    assert float(r["mf1"]) == pytest.approx(0.75)


def test_box_f1_and_map() -> None:
    true = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])]
    pred = [torch.tensor([[0.0, 0, 10, 10]])]  # finds one of two: TP 1, FN 1
    f1 = InstanceF1([0.5])
    f1.update(pred, true)
    assert float(f1.compute()["mf1"]) == pytest.approx(2 / 3)
    m = build_metrics("detection", 2, ["map"])
    m["map"].update([{"boxes": pred[0], "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}],
                    [{"boxes": true[0], "labels": torch.tensor([1, 1])}])
    # precision 1 up to recall 0.5, nothing beyond: 51 of COCO's 101 recall points
    assert float(m["map"].compute()["map"]) == pytest.approx(51 / 101, abs=1e-4)


def test_mask_map_of_a_perfect_prediction() -> None:
    lab = torch.zeros(1, 16, 16, dtype=torch.long)
    lab[0, 2:6, 2:6] = 1
    lab[0, 9:14, 8:12] = 2
    assert instance_map(lab, None, lab)["map"] == pytest.approx(1.0)


def test_unknown_metric_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="metrics.names"):
        build_metrics("segmentation", 2, ["accuracy"])
