"""Vision networks by name, local pretrained weights, losses, post-processing and the Otsu + watershed baseline."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neurotrain.errors import CheckpointError, ConfigError, UnknownNameError
from neurotrain.tasks.vision.baseline import otsu_watershed
from neurotrain.tasks.vision.losses import VisionLoss
from neurotrain.tasks.vision.models import create_model, load_pretrained
from neurotrain.tasks.vision.postprocess import flip_tta, label_instances, morphology, postprocess, remove_small


@pytest.mark.parametrize("name", ["unet", "monai:UNet", "monai:BasicUNet", "monai:SegResNet", "monai:AttentionUnet"])
def test_segmentation_networks_give_logits_per_class(name: str) -> None:
    net = create_model(name, in_channels=1, num_classes=3)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["simplenet", "tv:resnet18", "timm:resnet18", "tv:squeezenet1_0"])
def test_classifiers_take_grey_images(name: str) -> None:
    net = create_model(name, in_channels=1, num_classes=4)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 4)


def test_detector_builds_without_download_and_detects() -> None:
    net = create_model("tv:fasterrcnn_mobilenet_v3_large_fpn", in_channels=3, num_classes=2,
                       kwargs={"min_size": 64, "max_size": 64}).eval()
    out = net([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="known: .*unet.*tv:<any torchvision classifier>"):
        create_model("segnet", in_channels=1, num_classes=2)
    with pytest.raises(UnknownNameError, match="not a timm model"):
        create_model("timm:no_such_net", in_channels=1, num_classes=2)


def test_pretrained_path_loads_a_local_state_dict_and_skips_a_new_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = create_model("simplenet", in_channels=1, num_classes=5)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, path)
    torch.manual_seed(1)
    dst = create_model("simplenet", in_channels=1, num_classes=3, pretrained_path=path)
    assert torch.equal(dst.features[0].weight, src.features[0].weight)
    assert not torch.equal(dst.head[2].bias[:3], src.head[2].bias[:3])  # head of another shape: left alone
    with pytest.raises(CheckpointError, match="expected weights matching"):
        load_pretrained(create_model("simplenet", in_channels=1, num_classes=3), path, strict=True)
    with pytest.raises(CheckpointError, match="not found"):
        create_model("unet", in_channels=1, num_classes=2, pretrained_path=tmp_path / "missing.pt")


def test_losses() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = F.one_hot(target, 3).movedim(-1, 1).float() * 40  # saturated logits
    batch = {"mask": target}
    loss = VisionLoss("segmentation", {"dice": 1.0, "ce": 0.5}, 3)
    out = loss(perfect, batch)
    assert float(out["dice"]) < 1e-3 and float(out["ce"]) < 1e-3
    logits = torch.randn(2, 3, 8, 8)
    out = loss(logits, batch)
    assert float(out["ce"]) == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(out["dice"] + 0.5 * out["ce"]), rel=1e-6)
    cls = VisionLoss("classification", {"focal": 1.0, "bce": 1.0}, 3)
    lab = torch.tensor([0, 2])
    lg = torch.randn(2, 3)
    out = cls(lg, {"label": lab})
    bce = F.binary_cross_entropy_with_logits(lg, F.one_hot(lab, 3).float())
    assert float(out["bce"]) == pytest.approx(float(bce), rel=1e-6)
    # focal with gamma 0 is cross-entropy, averaged by MONAI over the C one-hot entries as well
    f0 = VisionLoss("classification", {"focal": 1.0}, 3, focal_gamma=0.0)(lg, {"label": lab})["focal"]
    assert float(f0) == pytest.approx(float(F.cross_entropy(lg, lab)) / 3, rel=1e-5)
    assert float(out["focal"]) < float(f0)  # gamma 2 down-weights the easy entries
    with pytest.raises(ConfigError, match="dice needs kind segmentation"):
        VisionLoss("classification", {"dice": 1.0}, 3)
    with pytest.raises(ConfigError, match="class_weights"):
        VisionLoss("segmentation", {"ce": 1.0}, 3, class_weights=[1.0, 2.0])


def _two_discs() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(20), torch.arange(30), indexing="ij")
    return ((((yy - 10) ** 2 + (xx - 9) ** 2) <= 36) | (((yy - 10) ** 2 + (xx - 20) ** 2) <= 36)).long()[None]


def test_postprocess_chain() -> None:
    fg = _two_discs()
    assert int(label_instances(fg).max()) == 1  # touching discs: one component
    assert int(label_instances(fg, "watershed").max()) == 2  # split at the neck
    m = torch.zeros(1, 12, 12, dtype=torch.long)
    m[0, 2:8, 2:8] = 1
    m[0, 10, 10] = 1
    assert int(remove_small(m, 2).sum()) == 36
    assert int(morphology(m, 2, open_radius=1).sum()) == 32  # a cross opening drops the 4 corners and the dot
    holed = m.clone()
    holed[0, 4, 4] = 0
    assert int(morphology(holed, 2, close_radius=1)[0, 4, 4]) == 1
    probs = torch.zeros(1, 2, 12, 12)
    probs[:, 1] = 0.6
    probs[:, 0] = 0.4
    sec = types.SimpleNamespace(threshold=0.7, open_radius=0, close_radius=0, min_size=0)
    assert int(postprocess(probs, sec).sum()) == 0  # below the threshold
    x = torch.rand(2, 2, 8, 8)
    assert torch.allclose(flip_tta(lambda t: t, x), x.softmax(1))  # an equivariant "network" is unchanged


def test_otsu_watershed_finds_two_bright_discs() -> None:
    fg = _two_discs()[0].numpy()
    rng = np.random.default_rng(0)
    img = np.where(fg, 0.7, 0.3) + rng.normal(0, 0.05, fg.shape)
    mask, inst = otsu_watershed(img[None], min_size=5)
    dice = 2 * (mask & fg).sum() / (mask.sum() + fg.sum())
    assert dice > 0.9 and inst.max() == 2
    dark, _ = otsu_watershed(1 - img[None], min_size=5)  # polarity auto: objects are the minority
    assert (dark == mask).mean() > 0.95


def test_unet_layouts_and_classic_checkpoints() -> None:
    """``unet`` is lean by default; weights of the classic layout (every checkpoint from before) are refused in one
    line that says how to load them, and load with ``layout: classic``."""
    from neurotrain.errors import ConfigError
    from neurotrain.tasks.vision.models import create_model

    common = dict(in_channels=1, num_classes=2, spatial_dims=2)
    classic = create_model("unet", **common, kwargs={"depth": 2, "base_channels": 4, "layout": "classic"})
    lean = create_model("unet", **common, kwargs={"depth": 2, "base_channels": 4})
    assert lean.stem_up is not None and classic.stem_up is None
    with pytest.raises(RuntimeError, match=r"--set model.kwargs.layout=classic"):
        lean.load_state_dict(classic.state_dict())
    again = create_model("unet", **common, kwargs={"depth": 2, "base_channels": 4, "layout": "classic"})
    again.load_state_dict(classic.state_dict())
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(again.eval()(x), classic.eval()(x))
    # the old keyword still works and overrides the preset
    assert create_model("unet", **common, kwargs={"depth": 1, "upsample": "interp", "up_channels": "same"}).stem_up is not None
    with pytest.raises(ConfigError, match="layout"):
        create_model("unet", **common, kwargs={"layout": "fast"})
