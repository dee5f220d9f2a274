"""The device-resident training cache (``device_cache.py``), with the CPU standing in for the device
(``loader.device_cache: on`` allows any device): batches equal the worker loader's bit for bit under the same
sampler seed (bad files skipped the same way), the ``auto`` rule says no when sizes differ or the budget is
exceeded, and a short training run through the resident path lowers its loss."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from neurotrain.config import validate_config
from neurotrain.engine.data import TaskDataModule
from neurotrain.errors import ConfigError
from neurotrain.registry import TASKS
from neurotrain.tasks.vision import device_cache as dcm

from .conftest import disc_pair, write_image


def _cfg(root: Path, tmp: Path, *, kind: str = "segmentation", mode: str = "on", workers: int = 0,
         sampler: str = "none", size: list[int] | None = None, **extra: Any) -> Any:
    name = "seg_folder" if kind == "segmentation" else "class_folder"
    data = {
        "task": "vision", "kind": kind, "seed": 0,
        "run": {"name": "dc", "output_dir": str(tmp / "runs")},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "progress_bar": False},
        "logging": {"tensorboard": False, "log_every_n_steps": 1},
        "data": {"batch_size": 4, "num_workers": workers},
        "data_source": {"name": name, "root": str(root), "channels": 3, "on_bad_file": "skip",
                        "cache_dir": str(tmp / "cache"), "size": size,
                        "n_classes": 2 if kind == "segmentation" else 3},
        "sampler": {"kind": sampler, "seed": 3},
        "loader": {"device_cache": mode},
        "model": {"name": "unet", "kwargs": {"depth": 1, "base_channels": 4}} if kind == "segmentation"
        else {"name": "unet"},
    }
    data.update(extra)
    return validate_config(data)


@pytest.fixture
def seg_root(tmp_path: Path) -> Path:
    """12 pairs of 8x8 (every third mask empty) and one corrupt image (skipped under ``on_bad_file: skip``)."""
    root = tmp_path / "seg"
    for split, n in (("train", 12), ("val", 2), ("test", 2)):
        for i in range(n):
            img, msk = disc_pair(8, i)
            if i % 3 == 0:
                msk[:] = 0
            write_image(root / split / "images" / f"im{i:02d}.png", img)
            write_image(root / split / "masks" / f"im{i:02d}.png", msk)
    bad = root / "train" / "images" / "im05.png"
    bad.write_bytes(bad.read_bytes()[:-30])  # truncated: the header reads, the pixels do not decode
    return root


@pytest.fixture
def class_root(tmp_path: Path) -> Path:
    root = tmp_path / "cls"
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 1), ("test", 1)):
        for c in ("a", "b", "c"):
            for i in range(n + (c == "a") * 2 * (split == "train")):  # class a over-represented in train
                write_image(root / split / c / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return root


def _epochs(cfg: Any, n_epochs: int = 2) -> tuple[list[dict[str, Any]], Any]:
    """Every training batch of ``n_epochs`` epochs as the engine's loader yields it (index batches gathered on
    the CPU), with the global RNG (shuffling) and the samplers seeded alike for both paths."""
    task = TASKS.get("vision")
    dm = TaskDataModule(cfg, task)
    dm.setup("fit")
    loader = dm.train_dataloader()
    out = []
    for epoch in range(n_epochs):
        torch.manual_seed(100 + epoch)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        out += [dcm.resolve(b) for b in loader]
    return out, loader


def _assert_same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            if torch.is_tensor(x[k]):
                assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


@pytest.mark.parametrize("sampler,workers", [("none", 0), ("class_balanced", 2)])
def test_resident_batches_equal_loader_batches(seg_root: Path, tmp_path: Path, sampler: str, workers: int) -> None:
    on, on_loader = _epochs(_cfg(seg_root, tmp_path, mode="on", sampler=sampler))
    off, off_loader = _epochs(_cfg(seg_root, tmp_path, mode="off", sampler=sampler, workers=workers))
    assert on_loader.num_workers == 0 and not on_loader.pin_memory
    assert off_loader.num_workers == workers
    assert on[0]["image"].dtype == torch.uint8 and on[0]["mask"].dtype == torch.uint8
    _assert_same(on, off)
    served = torch.cat([b["index"] for b in on])
    assert 5 not in served.tolist()  # the corrupt file stays skipped
    ds = on_loader.dataset
    assert ds.device_cache is not None and len(ds.device_cache) == 11
    assert ds.device_cache._resident["cpu"]["image"].shape == (11, 3, 8, 8)


@pytest.mark.parametrize("sampler", ["none", "class_balanced"])
def test_each_ddp_rank_gets_its_share_as_before(seg_root: Path, tmp_path: Path, sampler: str) -> None:
    """Lightning's DDP sampler swap (DistributedSampler, or DistributedSamplerWrapper around the task's sampler)
    re-creates the loader: it keeps the resident path, and each rank's batches equal the worker loader's."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DataLoader, DistributedSampler

    def rank_batches(mode: str, rank: int) -> list[dict[str, Any]]:
        cfg = _cfg(seg_root, tmp_path, mode=mode, sampler=sampler)
        dm = TaskDataModule(cfg, TASKS.get("vision"))
        dm.setup("fit")
        with _replace_dunder_methods(DataLoader, "dataset"):  # how Lightning records the loader's arguments
            loader = dm.train_dataloader()
        if sampler == "none":
            dist = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=7)
        else:
            dist = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, shuffle=True, seed=7)
        ranked = _update_dataloader(loader, dist)
        assert ranked.num_workers == 0 or mode == "off"
        return [dcm.resolve(b) for b in ranked]

    for rank in (0, 1):
        on = rank_batches("on", rank)
        assert "image" in on[0]
        _assert_same(on, rank_batches("off", rank))
    shares = [torch.cat([b["index"] for b in rank_batches("on", r)]).tolist() for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 6 and 5 not in shares[0] + shares[1]  # 12 items over 2 ranks
    if sampler == "none":  # a permutation dealt over the ranks: every good item is served
        assert set(shares[0]) | set(shares[1]) == set(range(12)) - {5}


def test_classification_batches_equal(class_root: Path, tmp_path: Path) -> None:
    on, _ = _epochs(_cfg(class_root, tmp_path, kind="classification", mode="on", sampler="class_balanced"))
    off, _ = _epochs(_cfg(class_root, tmp_path, kind="classification", mode="off", sampler="class_balanced"))
    assert "label" in on[0] and on[0]["label"].dtype == torch.int64
    _assert_same(on, off)


def test_index_batch_is_small_and_on_batch_gathers(seg_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(seg_root, tmp_path, mode="on")
    task = TASKS.get("vision")
    dm = TaskDataModule(cfg, task)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert dcm.is_index_batch(raw) and "image" not in raw and raw[dcm.ROWS_KEY].shape == (2, 4)
    got = task.on_batch(cfg, raw, training=True)
    assert got["image"].dtype == torch.float32 and got["image"].max() <= 1 and got["mask"].dtype == torch.int64
    host = dcm.resolve_on_host(raw)  # what int8 calibration reads instead (no upload)
    assert torch.equal(host["image"], dcm.resolve(raw)["image"])


def test_auto_rule(seg_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   caplog: pytest.LogCaptureFixture) -> None:
    task = TASKS.get("vision")

    def decide(cfg: Any) -> tuple[Any, str]:
        ds = task.datasets(cfg)["train"]
        return dcm.choose(cfg, ds)

    cpu = _cfg(seg_root, tmp_path, mode="auto")
    dc, why = decide(cpu)
    assert dc is None and "not CUDA" in why
    monkeypatch.setattr(dcm, "accelerator_is_cuda", lambda cfg: True)
    fits = _cfg(seg_root, tmp_path, mode="auto", loader={"device_cache": "auto", "device_cache_max_gb": 1.0})
    dc, why = decide(fits)
    assert dc is not None and dc.nbytes == 11 * (3 * 8 * 8 + 8 * 8)
    small = _cfg(seg_root, tmp_path, mode="auto", loader={"device_cache": "auto", "device_cache_max_gb": 1e-6})
    dc, why = decide(small)
    assert dc is None and "over the budget" in why
    # the engine's loader logs which path and why, once
    with caplog.at_level(logging.INFO, logger=dcm.__name__):
        dm = TaskDataModule(small, task)
        dm.setup("fit")
        loader = dm.train_dataloader()
    assert loader.num_workers == 0 and "worker DataLoader" in caplog.text and "budget" in caplog.text
    assert not dcm.is_index_batch(next(iter(loader)))
    # one image of another size: no stack without a resize; with data_source.size it fits again
    img, msk = disc_pair(12, 99)
    write_image(seg_root / "train" / "images" / "big.png", img)
    write_image(seg_root / "train" / "masks" / "big.png", msk)
    dc, why = decide(_cfg(seg_root, tmp_path, mode="auto", loader={"device_cache": "auto", "device_cache_max_gb": 1.0}))
    assert dc is None and "differ in size" in why
    with pytest.raises(ConfigError, match="loader.device_cache"):
        decide(_cfg(seg_root, tmp_path, mode="on"))
    dc, _ = decide(_cfg(seg_root, tmp_path, size=[8, 8], loader={"device_cache": "auto", "device_cache_max_gb": 1.0}))
    assert dc is not None and dc.shape == (3, 8, 8)


def test_detection_stays_on_the_loader() -> None:
    dc, why = dcm.build(object(), "detection")
    assert dc is None and "detection" in why


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.values.append(float(outputs["loss"]))


def test_training_through_the_resident_path_lowers_the_loss(tmp_path: Path) -> None:
    from neurotrain.config import config_to_dict
    from neurotrain.engine.module import TaskModule
    from neurotrain.engine.trainer import build_trainer
    from neurotrain.tasks.vision.synthetic import write_segmentation_set

    root = write_segmentation_set(tmp_path / "shapes", n=16, size=32, seed=0)
    cfg = _cfg(root, tmp_path, mode="on", optim={"lr": 0.01},
               trainer={"max_epochs": 8, "accelerator": "cpu", "devices": 1, "progress_bar": False},
               augment={"enabled": True, "p_intensity": 0.0},
               model={"name": "unet", "kwargs": {"depth": 2, "base_channels": 8}})
    L.seed_everything(0)
    task = TASKS.get("vision")
    module = TaskModule(config_to_dict(cfg))
    data = TaskDataModule(cfg, task)
    rec = _Losses()
    trainer = build_trainer(cfg, tmp_path / "run", [rec])
    trainer.fit(module, datamodule=data)
    assert data.sets["train"].device_cache is not None  # the resident path fed the run
    k = len(rec.values) // 4
    first, last = np.mean(rec.values[:k]), np.mean(rec.values[-k:])
    assert last < 0.8 * first, (first, last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gather_on_cuda_without_host_sync(seg_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(seg_root, tmp_path, mode="on")
    task = TASKS.get("vision")
    dm = TaskDataModule(cfg, task)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    dev = torch.device("cuda")

    def move(b: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}

    first = next(it)
    ref = dcm.resolve_on_host(first)
    got = dcm.resolve(move(first))  # uploads the split
    assert torch.equal(got["image"].cpu(), ref["image"]) and torch.equal(got["mask"].cpu(), ref["mask"])
    torch.cuda.synchronize()
    b = move(next(it))
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = task.on_batch(cfg, b, training=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out["image"].is_cuda and out["image"].dtype == torch.float32
