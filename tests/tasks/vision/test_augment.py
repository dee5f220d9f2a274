from __future__ import annotations

import pytest
import torch

from neurotrain.tasks.vision.augment import build_augment, identity
from neurotrain.tasks.vision.data_config import AugmentSection

pytestmark = pytest.mark.filterwarnings("ignore:Default grid_sample and affine_grid behavior")  # inside kornia

OFF = dict(hflip=False, vflip=False, rotate90=False, p_intensity=0.0)


def bright_disc_batch(b: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - 12) ** 2 + (xx - 18) ** 2) <= 36
    image = torch.where(inside, 0.9, 0.1).float().expand(b, 3, size, size).clone()
    return {"image": image, "mask": inside.long().expand(b, size, size).clone(), "path": ["x"] * b}


def test_disabled_is_identity() -> None:
    batch = bright_disc_batch()
    aug = build_augment(AugmentSection(enabled=False), "segmentation")
    assert aug is identity and aug(batch) is batch


def test_hflip_mirrors_a_known_mask_pixel() -> None:
    img = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, 1, 2] = 1
    aug = build_augment(AugmentSection(enabled=True, **{**OFF, "hflip": True}, p_flip=1.0), "segmentation")
    out = aug({"image": img, "mask": mask}, seed=0)
    assert out["mask"].dtype == torch.int64
    assert out["mask"][0].nonzero().tolist() == [[1, 5]]  # column 2 -> 8 - 1 - 2
    assert torch.allclose(out["image"], img.flip(-1))


def test_rotation_and_elastic_keep_mask_on_bright_pixels() -> None:
    batch = bright_disc_batch()
    sec = AugmentSection(enabled=True, rotate_deg=40, p_rotate=1.0, elastic_alpha=2.0, elastic_sigma=4.0, p_elastic=1.0,
                         rotate90=True, p_rotate90=1.0, p_flip=0.5, p_intensity=0.0)
    out = build_augment(sec, "segmentation")(batch, seed=3)
    m, x = out["mask"], out["image"][:, 0]
    assert m.dtype == torch.int64 and set(m.unique().tolist()) <= {0, 1}
    assert not torch.equal(m, batch["mask"])  # it moved
    # the mask still covers the bright pixels: nearly all of them inside, nearly none outside
    assert float(x[m == 1].mean()) > 0.8 and float(x[m == 0].mean()) < 0.2
    assert abs(int(m.sum()) - int(batch["mask"].sum())) < 0.15 * int(batch["mask"].sum())


def test_seeded_calls_repeat() -> None:
    sec = AugmentSection(enabled=True, rotate_deg=30, elastic_alpha=1.0, p_elastic=1.0)
    aug = build_augment(sec, "segmentation")
    a, b = aug(bright_disc_batch(), seed=7), aug(bright_disc_batch(), seed=7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    c = aug(bright_disc_batch(), seed=8)
    assert not torch.equal(a["image"], c["image"])


def test_crop_and_intensity() -> None:
    sec = AugmentSection(enabled=True, **{**OFF, "p_intensity": 1.0}, crop_size=(16, 20), intensity_scale=(2.0, 2.0),
                         intensity_shift=(0.0, 0.0), intensity_gamma=(1.0, 1.0))
    out = build_augment(sec, "segmentation")(bright_disc_batch(), seed=0)
    assert out["image"].shape == (4, 3, 16, 20) and out["mask"].shape == (4, 16, 20)
    x = out["image"][:, 0]
    assert torch.allclose(x[out["mask"] == 0], torch.tensor(0.2))  # 0.1 * 2
    assert torch.allclose(x[out["mask"] == 1], torch.tensor(1.0))  # 0.9 * 2, clipped to 1


def test_classification_keeps_labels() -> None:
    sec = AugmentSection(enabled=True, p_flip=1.0)
    batch = {"image": torch.rand(3, 1, 8, 8), "label": torch.tensor([0, 1, 2])}
    out = build_augment(sec, "classification")(batch, seed=0)
    assert torch.equal(out["label"], batch["label"]) and out["image"].shape == (3, 1, 8, 8)


def test_boxes_follow_flip_and_crop() -> None:
    img = torch.zeros(3, 10, 8)
    img[:, 2:5, 1:3] = 1.0  # rows 2..4, cols 1..2 -> xyxy [1, 2, 3, 5]
    batch = {"image": [img], "boxes": [torch.tensor([[1.0, 2.0, 3.0, 5.0]])], "labels": [torch.tensor([1])]}
    sec = AugmentSection(enabled=True, **{**OFF, "hflip": True}, p_flip=1.0, elastic_alpha=3.0)
    out = build_augment(sec, "detection")(batch, seed=0)
    box = out["boxes"][0]
    assert torch.allclose(box, torch.tensor([[5.0, 2.0, 7.0, 5.0]]))  # x -> 8 - x
    lit = out["image"][0][0].nonzero()
    assert lit[:, 1].min() == 5 and lit[:, 1].max() == 6  # the pixels lie inside the moved box
    crop = AugmentSection(enabled=True, **OFF, crop_size=(4, 4))
    many = {"image": [img] * 20, "boxes": [torch.tensor([[1.0, 2.0, 3.0, 5.0]])] * 20, "labels": [torch.tensor([1])] * 20}
    out = build_augment(crop, "detection")(many, seed=1)
    for b, lab in zip(out["boxes"], out["labels"]):
        assert len(b) == len(lab)
        assert (b >= 0).all() and (b[:, 2:] <= 4).all()
    assert any(len(b) == 0 for b in out["boxes"]) and any(len(b) == 1 for b in out["boxes"])


def test_3d_flip_rotation_elastic_crop() -> None:
    img = torch.zeros(2, 1, 8, 12, 12)
    mask = torch.zeros(2, 8, 12, 12, dtype=torch.long)
    img[:, :, 2:6, 3:8, 4:9] = 1.0
    mask[:, 2:6, 3:8, 4:9] = 2
    sec = AugmentSection(enabled=True, **{**OFF, "hflip": True}, p_flip=1.0)
    out = build_augment(sec, "segmentation")({"image": img, "mask": mask}, seed=0)
    assert torch.equal(out["mask"], mask.flip(-1)) and torch.equal(out["image"], img.flip(-1))
    sec = AugmentSection(enabled=True, rotate_deg=30, p_rotate=1.0, elastic_alpha=1.5, elastic_sigma=2.0, p_elastic=1.0,
                         crop_size_3d=(6, 10, 10), p_intensity=0.0)
    out = build_augment(sec, "segmentation")({"image": img, "mask": mask}, seed=2)
    m, x = out["mask"], out["image"][:, 0]
    assert m.shape == (2, 6, 10, 10) and m.dtype == torch.int64 and set(m.unique().tolist()) <= {0, 2}
    assert float(x[m == 2].mean()) > 0.7 and float(x[m == 0].mean()) < 0.3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_the_batch_device() -> None:  # pragma: no cover - GPU only
    batch = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in bright_disc_batch().items()}
    out = build_augment(AugmentSection(enabled=True, rotate_deg=10), "segmentation")(batch, seed=0)
    assert out["image"].is_cuda and out["mask"].is_cuda
