"""The fused 2D warp (``augment2d``): masks move with their images, labels stay in the class set, flips / turns /
crops are exact, seeded calls repeat, and the whole geometry stays a few dozen tensor operations."""

from __future__ import annotations

import pytest
import torch

from neurotrain.tasks.vision.augment import build_augment
from neurotrain.tasks.vision.augment2d import output_size, warp2d
from neurotrain.tasks.vision.data_config import AugmentSection

NO_INTENSITY = dict(p_intensity=0.0)


def shapes_batch(b: int = 6, size: int = 48) -> dict[str, torch.Tensor]:
    """An L-shaped class-3 region and a class-7 square (asymmetric, so any flip or turn shows) on background;
    the image is bright exactly where the mask is not background."""
    mask = torch.zeros(b, size, size, dtype=torch.uint8)
    mask[:, 8:30, 10:16] = 3
    mask[:, 24:30, 10:28] = 3
    mask[:, 34:42, 30:40] = 7
    image = torch.where(mask > 0, 0.9, 0.1).float()[:, None].expand(b, 3, size, size).contiguous()
    return {"image": image, "mask": mask}


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips / quarter turns of the last two axes."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, (-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_flips_and_turns_are_exact_and_shared_by_image_and_mask() -> None:
    batch = shapes_batch()
    sec = AugmentSection(enabled=True, p_flip=0.5, p_rotate90=1.0, **NO_INTENSITY)
    out = build_augment(sec, "segmentation")(batch, seed=0)
    assert out["mask"].dtype == torch.int64
    seen = set()
    for i in range(len(out["mask"])):
        m_opts, x_opts = dihedral(batch["mask"][i].long()), dihedral(batch["image"][i])
        hits = [j for j, m in enumerate(m_opts) if torch.equal(out["mask"][i], m)]
        assert len(hits) == 1, "the mask is not a flip / turn of its input"
        assert torch.allclose(out["image"][i], x_opts[hits[0]], atol=1e-5), "image and mask took different maps"
        seen.add(hits[0])
    assert len(seen) >= 3  # the maps differ between samples


def test_a_known_shape_moves_with_its_image_under_rotation_elastic_and_crop() -> None:
    batch = shapes_batch(b=8)
    sec = AugmentSection(enabled=True, rotate_deg=45, p_rotate=1.0, elastic_alpha=3.0, elastic_sigma=12.0,
                         p_elastic=1.0, crop_size=(40, 36), **NO_INTENSITY)
    out = build_augment(sec, "segmentation")(batch, seed=1)
    m, x = out["mask"], out["image"][:, 0]
    assert m.shape == (8, 40, 36) and x.shape == (8, 40, 36)
    assert set(m.unique().tolist()) <= {0, 3, 7}  # nearest: no interpolated labels
    # bright pixels and labelled pixels coincide except on a thin rim where bilinear blends the edge
    agree = ((x > 0.5) == (m > 0)).float().mean()
    assert float(agree) > 0.97
    assert float(x[m > 0].mean()) > 0.8 and float(x[m == 0].mean()) < 0.2
    # it did move: not just a crop of the input
    crops = [batch["mask"][0, y:y + 40, c:c + 36].long() for y in range(9) for c in range(13)]
    assert not any(torch.equal(m[0], c) for c in crops)


def test_crop_alone_is_an_exact_window_and_reaches_every_offset() -> None:
    torch.manual_seed(0)
    image = torch.rand(64, 1, 10, 12)
    mask = torch.randint(0, 5, (64, 10, 12))
    sec = AugmentSection(enabled=True, hflip=False, vflip=False, rotate90=False, crop_size=(8, 9))
    x, m = warp2d(sec, image, mask)
    offsets = set()
    for i in range(64):
        found = [(y, c) for y in range(3) for c in range(4) if torch.equal(m[i], mask[i, y:y + 8, c:c + 9])
                 and torch.allclose(x[i], image[i, :, y:y + 8, c:c + 9], atol=1e-5)]
        assert found, "a crop that is no window of its input"
        offsets.update(found)
    assert len(offsets) == 12  # 3 x 4 positions, all drawn


def test_seeded_calls_repeat_and_leave_the_global_stream_alone() -> None:
    sec = AugmentSection(enabled=True, rotate_deg=30, p_rotate=1.0, elastic_alpha=2.0, p_elastic=1.0,
                         crop_size=(32, 32))
    aug = build_augment(sec, "segmentation")
    torch.manual_seed(123)
    a = aug(shapes_batch(), seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    b = aug(shapes_batch(), seed=7)
    assert torch.equal(torch.rand(3), after)  # the seeded call did not consume the global stream
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    c = aug(shapes_batch(), seed=8)
    assert not torch.equal(a["mask"], c["mask"])


def test_inactive_geometry_passes_through_and_crop_size_is_clipped() -> None:
    batch = shapes_batch(b=2, size=16)
    off = AugmentSection(enabled=True, hflip=False, vflip=False, rotate90=False)
    x, m = warp2d(off, batch["image"], batch["mask"])
    assert x is batch["image"] and torch.equal(m, batch["mask"].long())
    assert output_size(AugmentSection(crop_size=(32, 8)), (16, 16)) == (16, 8)


def test_geometry_is_a_few_dozen_operations() -> None:
    """The point of the fused warp: kornia's sequence ran ~1,400 operations per batch (flips + turns), each a
    kernel launch on the GPU; this stays under 80 with every transform on (views launch nothing)."""
    from torch.profiler import ProfilerActivity, profile

    sec = AugmentSection(enabled=True, rotate_deg=20, elastic_alpha=2.0, crop_size=(32, 32), **NO_INTENSITY)
    batch = shapes_batch()
    warp2d(sec, batch["image"], batch["mask"])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        warp2d(sec, batch["image"], batch["mask"])
    views = {"aten::select", "aten::slice", "aten::view", "aten::unsqueeze", "aten::permute", "aten::expand"}
    top = [e.name for e in prof.events()
           if e.cpu_parent is None and e.name.startswith("aten::") and e.name not in views]
    assert len(top) < 80, len(top)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_no_host_synchronisation_on_the_gpu() -> None:  # pragma: no cover - GPU only
    batch = {k: v.cuda() for k, v in shapes_batch().items()}
    sec = AugmentSection(enabled=True, rotate_deg=20, elastic_alpha=2.0, p_elastic=1.0, crop_size=(32, 32))
    aug = build_augment(sec, "segmentation")
    aug(dict(batch))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = aug(dict(batch))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out["image"].is_cuda and out["mask"].dtype == torch.int64
