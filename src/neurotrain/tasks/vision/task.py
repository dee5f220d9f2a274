"""The ``vision`` task: segmentation, classification and detection of images from one config file.

Registration: wires the schema (``config.py``), datasets (``datasets.py``), samplers, on-device augmentation,
networks, losses, metrics, the Otsu + watershed baseline, prediction and the report to the engine
(see ``neurotrain.task.Task``). Batches are the datasets' sample dicts (``image``, ``mask`` | ``label`` |
``boxes`` + ``labels``, ``path``, ``index``), stacked by the default collate or, for detection, kept as lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurotrain.config import Config
from neurotrain.errors import NotAvailableError
from neurotrain.registry import TASKS
from neurotrain.task import EvalResult, Task, TaskOptions
from neurotrain.tasks.vision.config import VisionConfig

CHANNELS_LAST_ATTR = "_neurotrain_channels_last"


class VisionPredictOptions(TaskOptions):
    """``neurotrain predict`` of vision takes no ``--opt`` keys: its settings are the config's ``predict.*``."""


class VisionEvaluateOptions(TaskOptions):
    """``neurotrain evaluate`` of vision takes no options: every knob is in the config's ``evaluate.*``."""


class VisionTask(Task):
    """Images (2D, or 3D volumes) -> masks, labels or boxes."""

    name = "vision"
    config_cls = VisionConfig
    predict_options = VisionPredictOptions
    evaluate_options = VisionEvaluateOptions

    def __init__(self) -> None:
        self._augmenters: dict[str, Any] = {}

    # ------------------------------------------------------------------ building blocks
    def build_model(self, cfg: Config) -> nn.Module:
        from neurotrain.tasks.vision.models import create_model

        c: VisionConfig = cfg  # type: ignore[assignment]
        m = c.model
        net = create_model(m.name, in_channels=c.in_channels, num_classes=c.num_classes, spatial_dims=c.spatial_dims,
                           kwargs=m.kwargs, pretrained_path=m.pretrained_path, pretrained_strict=m.pretrained_strict)
        if m.channels_last and c.spatial_dims == 2 and c.task_kind != "detection":
            net = net.to(memory_format=torch.channels_last)
            setattr(net, CHANNELS_LAST_ATTR, True)
        return net

    def build_loss(self, cfg: Config) -> nn.Module:
        from neurotrain.tasks.vision.losses import build_loss

        c: VisionConfig = cfg  # type: ignore[assignment]
        return build_loss(c.task_kind, c.loss, c.num_classes)

    def build_metrics(self, cfg: Config) -> Any:
        from neurotrain.tasks.vision.metrics import build_metrics

        c: VisionConfig = cfg  # type: ignore[assignment]
        return build_metrics(c.task_kind, c.num_classes, c.metric_names, top_k=c.metrics.top_k,
                             nsd_tolerance=c.metrics.nsd_tolerance_px, iou_thresholds=c.metrics.iou_thresholds)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        images = batch["image"]
        if isinstance(images, (list, tuple)):  # detection: torchvision takes lists (and targets when training)
            if model.training:
                targets = [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])]
                return model(list(images), targets)
            return model(list(images))
        if getattr(model, CHANNELS_LAST_ATTR, False):
            images = images.contiguous(memory_format=torch.channels_last)
        return model(images)

    def update_metrics(self, metrics: Any, pred: Any, batch: dict[str, Any]) -> None:
        from neurotrain.tasks.vision.augment import to_float_batch
        from neurotrain.tasks.vision.metrics import update_metrics

        batch = to_float_batch(batch)  # uint8 masks of a cached loader (export scoring skips on_batch)
        kind = "detection" if isinstance(batch["image"], (list, tuple)) else (
            "classification" if "label" in batch else "segmentation")
        update_metrics(kind, metrics, pred, batch)

    # ------------------------------------------------------------------ data
    def datasets(self, cfg: Config) -> dict[str, Any]:
        from neurotrain.tasks.vision.datasets import build_training_dataset

        c: VisionConfig = cfg  # type: ignore[assignment]
        sets = {s: build_training_dataset(c.data_source, c.hybrid, s, c.patch) for s in ("train", "val", "test")}
        if c.loader.raw_uint8:
            from neurotrain.tasks.vision.datasets import set_raw

            for ds in sets.values():
                set_raw(ds)
        return sets

    def loader_options(self, cfg: Config, split: str, dataset: Any) -> dict[str, Any]:
        """Collate (detection), sampler (train), epoch tags for datasets that draw per epoch, prefetching.

        Training from a device-resident cache (``loader.device_cache``, ``device_cache.py``): the same sampler,
        but no workers and no pinning: the loader yields index batches, gathered on the device in :meth:`on_batch`.
        """
        from neurotrain.tasks.vision.datasets import detection_collate, vision_collate

        c: VisionConfig = cfg  # type: ignore[assignment]
        opts: dict[str, Any] = {"collate_fn": detection_collate if c.task_kind == "detection" else vision_collate}
        resident = False
        if split == "train":
            from neurotrain.tasks.vision.device_cache import attach
            from neurotrain.tasks.vision.samplers import EpochSampler, build_sampler

            base = build_sampler(c.sampler, dataset) if c.sampler.kind != "none" else None
            if hasattr(dataset, "set_epoch"):  # the epoch travels with each index to the workers' copies
                base = EpochSampler(len(dataset), base, seed=c.seed)
            if base is not None:
                opts["sampler"] = base
            resident = attach(c, dataset) is not None
        if resident:
            from neurotrain.tasks.vision.device_cache import accelerator_is_cuda

            # an index batch is a few hundred bytes: a worker would only cost the host time; pinning it (in the
            # main thread, no pin-memory thread without workers) keeps its copy to the GPU asynchronous
            opts.update(num_workers=0, pin_memory=accelerator_is_cuda(c), persistent_workers=False)
        elif cfg.data.num_workers > 0:
            opts["prefetch_factor"] = c.loader.prefetch_factor
        return opts

    def on_batch(self, cfg: Config, batch: Any, training: bool) -> Any:
        from neurotrain.tasks.vision.augment import to_float_batch

        from neurotrain.tasks.vision.device_cache import resolve

        c: VisionConfig = cfg  # type: ignore[assignment]
        batch = resolve(batch)  # an index batch of the device-resident cache: gathered here, on the device
        batch = to_float_batch(batch)  # cached loaders deliver uint8: scaled here, on the training device
        if not training or not c.augment.enabled:
            return batch
        key = c.augment.model_dump_json() + c.task_kind
        aug = self._augmenters.get(key)
        if aug is None:
            from neurotrain.tasks.vision.augment import build_augment

            aug = self._augmenters[key] = build_augment(c.augment, c.task_kind)
        return aug(batch)

    def calibration_batches(self, cfg: Config, n: int, split: str = "val") -> list[dict[str, Any]]:
        """The base class's CPU batches; index batches of a device-resident training cache are read from the
        memory-mapped cache instead (the worker loader's batches), never uploading the split for them."""
        from neurotrain.tasks.vision.device_cache import resolve_on_host

        return [resolve_on_host(b) for b in super().calibration_batches(cfg, n, split)]

    # ------------------------------------------------------------------ commands
    def test(self, cfg: Config, model: nn.Module | None, **options: Any) -> dict[str, Any] | None:
        from neurotrain.tasks.vision.evaluate import run_test

        return run_test(cfg, model, **options)  # type: ignore[arg-type]

    def evaluate(self, cfg: Config, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:
        from neurotrain.tasks.vision.evaluate import evaluate

        return evaluate(cfg, model, run_dir, **options)  # type: ignore[arg-type]

    def predict(self, cfg: Config, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:
        from neurotrain.tasks.vision.predict import predict_files

        return predict_files(cfg, model, inputs, output, **options)  # type: ignore[arg-type]

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "optim.lr": trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True),
            "optim.weight_decay": trial.suggest_float("optim.weight_decay", 1e-6, 1e-2, log=True),
            "loss.name": trial.suggest_categorical("loss.name", ["ce", "dice_ce", "dice_focal"]),
        }

    def example_input(self, cfg: Config) -> tuple[torch.Tensor, ...]:
        c: VisionConfig = cfg  # type: ignore[assignment]
        if c.task_kind == "detection":
            raise NotAvailableError(
                "vision detectors take image lists and return a box count per image: they export through "
                "VisionTask.export_model (neurotrain export; detection_export.export_detector), "
                "not from an example input")
        return (torch.rand(1, c.in_channels, *example_size(c)),)

    # ------------------------------------------------------------------ deploy (neurotrain export)
    def export_model(self, cfg: Config, model: nn.Module, path: Path, *, opset: int, atol: float) -> Any:
        """Detectors export their own way (one fixed-size image in, boxes / scores / labels out); the rest: None."""
        c: VisionConfig = cfg  # type: ignore[assignment]
        if c.task_kind != "detection":
            return None
        from neurotrain.tasks.vision.detection_export import export_detection_for_deploy

        return export_detection_for_deploy(c, model, path, opset=opset, atol=atol)

    def export_inputs(self, cfg: Config, batch: Any) -> Any:
        from neurotrain.tasks.vision.deploy import vision_export_inputs

        return vision_export_inputs(cfg, batch)

    def export_metadata(self, cfg: Config) -> dict[str, Any]:
        from neurotrain.tasks.vision.deploy import vision_export_metadata

        return vision_export_metadata(cfg)

    def export_dynamic_spatial(self, cfg: Config) -> bool:
        from neurotrain.tasks.vision.deploy import vision_export_dynamic_spatial

        return vision_export_dynamic_spatial(cfg)


def example_size(cfg: VisionConfig) -> tuple[int, ...]:
    """A spatial size the network accepts: the configured resize, the synthetic set's side, the 3D patch, or
    64 px (every registered 2D network down-samples at most 32x)."""
    src = cfg.primary_source
    if cfg.spatial_dims == 3:
        return tuple(cfg.patch.size)
    if src.size is not None:
        return tuple(src.size)
    if src.name == "synthetic_shapes":
        return (src.synthetic.size, src.synthetic.size)
    if src.name == "stardist_nuclei":
        return (src.tile, src.tile)
    return (64, 64)


TASKS.register("vision")(VisionTask())
