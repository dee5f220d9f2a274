"""The decoded-image cache: same samples as decoding the files, built once, rebuilt when a file changes, uint8
samples for the training loaders, and the epoch travelling with the index to loader workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from neurotrain.errors import DataError
from neurotrain.tasks.vision.augment import to_float_batch
from neurotrain.tasks.vision.cache import CACHE_FOLDER
from neurotrain.tasks.vision.data_config import DatasetSpec
from neurotrain.tasks.vision.datasets import HybridDataset, build_dataset, set_raw
from neurotrain.tasks.vision.samplers import EpochSampler

from .conftest import disc_pair, write_image


def seg(root: Path, **kw) -> DatasetSpec:
    return DatasetSpec(name="seg_folder", root=root, split_fractions=(1, 0, 0), **kw)


def _caches(root: Path) -> list[Path]:
    return sorted(p for p in (root / CACHE_FOLDER).iterdir() if not p.name.startswith("."))


def test_cached_samples_equal_decoded_files(seg_folder: Path) -> None:
    plain = build_dataset(seg(seg_folder, cache=False), "train")
    cached = build_dataset(seg(seg_folder), "train")
    assert cached._cache is not None and plain._cache is None
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and a["image"].dtype == torch.float32
        assert torch.equal(a["mask"], b["mask"]) and b["mask"].dtype == torch.int64
    assert cached.sample_labels().tolist() == plain.sample_labels().tolist() == [1, 0] * 5


def test_raw_uint8_samples_scale_back_on_the_device(seg_folder: Path) -> None:
    ds = build_dataset(seg(seg_folder), "train")
    ref = [ds[i] for i in range(3)]
    assert set_raw(ds) and ds.raw_uint8
    from neurotrain.tasks.vision.datasets import vision_collate

    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=vision_collate)))
    assert batch["image"].dtype == torch.uint8 and batch["mask"].dtype == torch.uint8
    out = to_float_batch(batch)
    assert torch.equal(out["image"], torch.stack([r["image"] for r in ref]))
    assert torch.equal(out["mask"], torch.stack([r["mask"] for r in ref]))


def test_built_once_then_rebuilt_when_a_file_changes(seg_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_dataset(seg(seg_folder), "train")
    first = _caches(seg_folder)
    assert len(first) == 1 and (first[0] / "data.bin").stat().st_size == 10 * (3 * 64 + 64)
    import neurotrain.tasks.vision.datasets as dsmod

    calls = []
    real = dsmod.stored_image
    monkeypatch.setattr(dsmod, "stored_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = build_dataset(seg(seg_folder), "train")
    assert calls == [] and again[3]["image"].shape == (3, 8, 8)  # opened, nothing decoded
    img, _ = disc_pair(8, 99)
    write_image(seg_folder / "images" / "im03.png", img)  # new content (and mtime): a new cache
    changed = build_dataset(seg(seg_folder), "train")
    assert len(calls) == 10 and len(_caches(seg_folder)) == 2
    assert torch.equal(changed[3]["image"], build_dataset(seg(seg_folder, cache=False), "train")[3]["image"])


def test_resize_rounds_to_the_stored_type(seg_folder: Path) -> None:
    plain = build_dataset(seg(seg_folder, cache=False, size=(5, 7)), "train")
    cached = build_dataset(seg(seg_folder, size=(5, 7)), "train")
    a, b = plain[2], cached[2]
    assert b["image"].shape == (3, 5, 7)
    assert float((a["image"] - b["image"]).abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.equal(a["mask"], b["mask"])


def test_sixteen_bit_and_grey_to_rgb(tmp_path: Path) -> None:
    root = tmp_path / "s16"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(root / "images" / f"a{i}.tif", rng.integers(0, 65535, (6, 6), dtype=np.uint16))
        write_image(root / "masks" / f"a{i}.png", (rng.random((6, 6)) > 0.5).astype(np.uint8))
    spec = seg(root, image_suffix=".tif", channels=3)
    plain, cached = build_dataset(spec.model_copy(update={"cache": False}), "train"), build_dataset(spec, "train")
    assert torch.equal(plain[1]["image"], cached[1]["image"]) and cached[1]["image"].shape == (3, 6, 6)
    assert not set_raw(cached)  # 16-bit images: float samples, never a uint8 batch


def test_pickled_cache_reopens_its_map(seg_folder: Path) -> None:
    ds = build_dataset(seg(seg_folder), "train")
    ds[0]  # opens the map
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # the folder name travels, not the pixels
    assert torch.equal(pickle.loads(blob)[4]["image"], ds[4]["image"])


def test_error_policy_still_stops_on_a_cache_built_with_skip(seg_folder: Path) -> None:
    p = seg_folder / "images" / "im02.png"
    p.write_bytes(p.read_bytes()[:60])
    ds = build_dataset(seg(seg_folder, on_bad_file="skip"), "train")
    assert len(ds.skipped) == 1 and 2 not in [ds[i]["index"] for i in range(len(ds))]
    with pytest.raises(DataError, match=r"im02\.png: image data"):
        build_dataset(seg(seg_folder), "train")


def test_epoch_reaches_persistent_workers_through_the_sampler(seg_folder: Path, tmp_path: Path) -> None:
    """A hybrid mix drawn per epoch: with persistent workers, only the (epoch, index) pairs reach them."""
    a = build_dataset(seg(seg_folder), "train")
    b = build_dataset(seg(seg_folder), "train")
    mix = HybridDataset([a, b], [0.5, 0.5], epoch_length=8, seed=3)
    sampler = EpochSampler(len(mix), seed=0)
    loader = DataLoader(mix, batch_size=8, sampler=sampler, num_workers=1, persistent_workers=True)

    def epoch_draw(e: int) -> list[tuple[int, int]]:
        mix.set_epoch(e)
        return sorted(zip(mix._src.tolist(), mix._idx.tolist()))

    expect = [epoch_draw(e) for e in range(3)]
    mix.set_epoch(0)
    got = []
    for e in range(3):
        sampler.set_epoch(e)
        batch = next(iter(loader))
        got.append(sorted(zip(batch["source"].tolist(), batch["index"].tolist())))
    assert got == expect and got[0] != got[1]
    # without set_epoch calls, every new pass is the next epoch
    fresh = EpochSampler(4, seed=0)
    assert [{e for e, _ in fresh} for _ in range(2)] == [{0}, {1}]
    assert sorted(i for _, i in fresh) == [0, 1, 2, 3]


@pytest.mark.parametrize("workers", [0, 1])
def test_batched_fetch_equals_per_sample_collate(seg_folder: Path, workers: int) -> None:
    from neurotrain.tasks.vision.datasets import vision_collate

    p = seg_folder / "images" / "im05.png"
    p.write_bytes(p.read_bytes()[:60])  # a bad item: replaced by the next good one in both paths
    ds = build_dataset(seg(seg_folder, on_bad_file="skip"), "train")
    order = [(0, 5), (0, 1), (0, 9), (0, 4)]
    ref = torch.utils.data.default_collate([ds[i] for i in order])
    assert set_raw(ds)
    assert isinstance(ds.__getitems__(order), dict)
    got = next(iter(DataLoader(ds, batch_size=4, sampler=order, num_workers=workers, collate_fn=vision_collate)))
    assert got["index"].tolist() == ref["index"].tolist() == [6, 1, 9, 4] and got["path"] == ref["path"]
    assert torch.equal(to_float_batch(got)["image"], ref["image"]) and torch.equal(got["mask"].long(), ref["mask"])


def test_task_loaders_tag_hybrid_indices_with_lightnings_epoch(seg_folder: Path) -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    from neurotrain.config import validate_config
    from neurotrain.registry import TASKS

    spec = {"name": "seg_folder", "root": str(seg_folder), "channels": 3}
    cfg = validate_config({"task": "vision", "hybrid": {"datasets": [spec, spec], "ratios": [3, 1],
                                                          "epoch_length": 8}})
    task = TASKS.get("vision")
    sets = task.datasets(cfg)
    opts = task.loader_options(cfg, "train", sets["train"])
    assert isinstance(opts["sampler"], EpochSampler)
    loader = DataLoader(sets["train"], batch_size=8, **opts)
    _set_sampler_epoch(loader, 3)  # what Lightning's fit loop does at the start of every epoch
    batch = task.on_batch(cfg, next(iter(loader)), training=False)
    assert sets["train"].epoch == 3 and batch["image"].dtype == torch.float32
    assert sorted(batch["source"].tolist()) == [0] * 6 + [1] * 2


def test_a_cached_batch_is_one_storage_and_travels_as_one_descriptor(seg_folder: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """image, mask and index are views of one storage: a worker's batch crosses to the main process as one
    shared-memory segment (one file descriptor), not one per tensor."""
    import io
    import multiprocessing.reduction as mpr

    from torch.multiprocessing.reductions import init_reductions

    from neurotrain.tasks.vision import cache as cache_mod

    ds = build_dataset(seg(seg_folder), "train")
    assert set_raw(ds)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # as inside a loader worker
    batch = cache_mod.cached_batch(ds, [3, 0, 2])
    tensors = [batch[k] for k in ("image", "mask", "index")]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1 and batch["image"].is_shared()
    assert batch["index"].tolist() == [3, 0, 2] and batch["index"].dtype == torch.int64
    ref = torch.utils.data.default_collate([ds[i] for i in [3, 0, 2]])
    assert torch.equal(batch["image"], ref["image"]) and torch.equal(batch["mask"], ref["mask"])
    sent = []
    real = mpr.DupFd
    monkeypatch.setattr(mpr, "DupFd", lambda fd: sent.append(fd) or real(fd))
    init_reductions()
    mpr.ForkingPickler(io.BytesIO()).dump(batch)
    assert len(sent) == 1
