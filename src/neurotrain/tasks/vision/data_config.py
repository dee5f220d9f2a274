"""Config sections of the vision task's data side: datasets, mixing, samplers, augmentation, 3D patches.

Every default of the data side lives here. ``VisionConfig`` (``config.py``) holds them as
``data_source: DatasetSpec``, ``hybrid: HybridSection``, ``sampler: SamplerSection``,
``augment: AugmentSection`` and ``patch: PatchSection``.

Names a NeuroTrain user knows (seed 003): the dataset registry names (``drive``,
``chase_db1``, ``stare``, ``isic``, ``btcv``, ``brats``, ``mnist``, ``cifar10``,
``cifar100``, ``coco``), the hybrid dataset with ratios, and the weighted / balanced /
priority samplers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from neurotrain.config import Section

DatasetName = Literal[
    "seg_folder",
    "class_folder",
    "class_csv",
    "coco",
    "nifti_folder",
    "drive",
    "chase_db1",
    "stare",
    "isic",
    "btcv",
    "brats",
    "mnist",
    "cifar10",
    "cifar100",
    "synthetic_shapes",
    "stardist_nuclei",
]
TaskKind = Literal["segmentation", "classification", "detection"]
Split = Literal["train", "val", "test"]

# Which kind of target each registered dataset yields (used when ``kind`` is left unset).
DATASET_KINDS: dict[str, TaskKind] = {
    "seg_folder": "segmentation",
    "nifti_folder": "segmentation",
    "drive": "segmentation",
    "chase_db1": "segmentation",
    "stare": "segmentation",
    "isic": "segmentation",
    "btcv": "segmentation",
    "brats": "segmentation",
    "synthetic_shapes": "segmentation",
    "stardist_nuclei": "segmentation",
    "class_folder": "classification",
    "class_csv": "classification",
    "mnist": "classification",
    "cifar10": "classification",
    "cifar100": "classification",
    "coco": "detection",
}


class SyntheticSection(Section):
    """What ``synthetic_shapes`` writes under ``root`` when the folder does not exist yet.

    ``kind: segmentation`` writes ``images/*.png`` + ``masks/*.png`` (``n`` images);
    ``kind: classification`` writes ``<class>/*.png`` (``n`` images per class).
    """

    kind: Literal["segmentation", "classification"] = "segmentation"
    n: int = Field(64, ge=1)
    size: int = Field(64, ge=8)
    seed: int = 0
    n_classes: int = Field(2, ge=2)  # segmentation: 2 = binary shape mask; 4 = background + disc/rect/triangle


class DatasetSpec(Section):
    """One dataset: which loader (``name``), where (``root``), and how to read it.

    Segmentation folders pair ``<image_dir>/<stem><image_suffix>`` with
    ``<mask_dir>/<stem><mask_suffix>`` (defaults ``images/*.png`` with ``masks/*.png``). When ``root/<split>`` exists it is used as the split's
    folder; otherwise the sorted file list is split by ``split_fractions`` with ``split_seed``
    (classification: per class, so every split keeps the class ratios).
    """

    name: DatasetName = "seg_folder"
    root: Path | None = None
    kind: TaskKind | None = None  # None: the kind the named dataset yields (DATASET_KINDS)

    # --- folder layout
    # None: the dataset's own default (2D folders: images/ masks/ .png; nifti_folder: imagesTr/ labelsTr/
    # .nii.gz; coco: images/). Named layouts (drive, isic, ...) know their own folders and ignore these.
    image_dir: str | None = None
    mask_dir: str | None = None
    image_suffix: str | None = None
    mask_suffix: str | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0

    # --- pixels
    channels: int = Field(3, ge=1)  # 1: grayscale; 3: RGB (grayscale files are promoted); other: as stored
    convert_gray: bool = False  # True: an RGB file where 1 channel is expected is converted (ITU-R 601 luma)
    n_classes: int = Field(2, ge=2)
    label_map: dict[int, int] | None = None  # stored mask value -> class index (BraTS: {0:0, 1:1, 2:2, 4:3})
    size: tuple[int, int] | None = None  # resize every 2D sample to (H, W): image bilinear, mask nearest
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)  # NIfTI / stardist robust min-max, percent

    # --- classification from CSV
    csv_file: str = "labels.csv"
    path_column: str = "path"
    label_column: str = "label"
    class_names: list[str] | None = None  # None: sorted folder names / sorted CSV labels

    # --- detection (COCO)
    annotation_file: str = "annotations.json"
    min_box_size: float = Field(1.0, ge=0)  # px; smaller boxes (after clipping) are dropped

    # --- named layouts
    fov: bool = False  # drive: add the field-of-view mask (training/mask/*_mask.gif) as sample["fov"]

    # --- NIfTI
    modalities: list[str] = ["t1", "t1ce", "t2", "flair"]  # BraTS channel order

    # --- decoded-image cache (cache.py): 2D image folders are decoded once into a memory-mapped file
    cache: bool = True
    cache_dir: Path | None = None  # None: <root>/.neurotrain-cache when writable, else ~/.cache/neurotrain/vision
    cache_workers: int = Field(4, ge=1)  # decoding threads while the cache is built (first use only)

    # --- bad input
    on_bad_file: Literal["error", "skip"] = "error"
    validate_files: Literal["header", "full"] = "header"  # full: decode every file up front (slow, exact)

    # --- mixing and synthesis
    weight: float = Field(1.0, gt=0)  # share in a HybridSection without explicit ratios
    synthetic: SyntheticSection = SyntheticSection()
    tile: int = Field(128, ge=8)  # stardist_nuclei: tile side (px)
    tile_stride: int = Field(128, ge=1)  # stardist_nuclei: stride between tiles (px)
    # stardist_nuclei: 4-fold spatial cross-validation over the image's quadrants (0 top-left, 1 top-right,
    # 2 bottom-left, 3 bottom-right): test = quadrant ``fold`` whole, train/val = tiles of the other three.
    # None: held-out tile cells by split_fractions (the single split)
    fold: int | None = Field(None, ge=0, le=3)

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1 (got {list(v)})")
        return v

    @field_validator("intensity_percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 100:
            raise ValueError(f"expected 0 <= low < high <= 100 (got {list(v)})")
        return v

    @property
    def task_kind(self) -> TaskKind:
        if self.kind:
            return self.kind
        if self.name == "synthetic_shapes":
            return self.synthetic.kind
        return DATASET_KINDS[self.name]


class HybridSection(Section):
    """Several datasets mixed in one epoch (seed: HybridDataset).

    ``ratios`` (or each spec's ``weight`` when ``ratios`` is unset) are normalised to sum to
    1; an epoch draws ``epoch_length`` samples (default: the sum of the datasets' lengths),
    ``round(ratio * epoch_length)`` from each dataset, reshuffled every epoch with ``seed``.
    """

    datasets: list[DatasetSpec] = []
    ratios: list[float] | None = None
    epoch_length: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _ratios_match(self) -> HybridSection:
        if self.ratios is not None:
            if len(self.ratios) != len(self.datasets):
                raise ValueError(
                    f"hybrid.ratios: expected one ratio per dataset ({len(self.datasets)}) (got {len(self.ratios)})"
                )
            if any(r < 0 for r in self.ratios) or sum(self.ratios) <= 0:
                raise ValueError(f"hybrid.ratios: expected >= 0 with a positive sum (got {self.ratios})")
        return self


class SamplerSection(Section):
    """How training samples are drawn (seed: weighted / balanced / priority sampling).

    - ``weighted``: sample i drawn with probability proportional to ``class_weights[label_i]``.
    - ``class_balanced``: weight 1 / (count of the sample's class); segmentation groups by
      foreground presence (any mask pixel > 0), so images with and without foreground are
      drawn equally often.
    - ``priority``: probability proportional to (priority + ``priority_eps``) ** ``priority_alpha``
      (prioritised replay, Schaul et al. 2016, alpha 0.6); priorities start from
      ``class_priorities`` (``priority_key: class``) or uniform (``priority_key: loss``) and are
      updated from per-sample losses with ``sampler.update(indices, losses)``.
    """

    kind: Literal["none", "weighted", "class_balanced", "priority"] = "none"
    class_weights: list[float] | None = None
    num_samples: int | None = Field(None, ge=1)  # per epoch; None: len(dataset)
    replacement: bool = True
    priority_key: Literal["loss", "class"] = "loss"
    class_priorities: list[float] | None = None
    priority_alpha: float = Field(0.6, ge=0)
    priority_eps: float = Field(1e-3, gt=0)
    seed: int = 0


class AugmentSection(Section):
    """Augmentations applied on the device to image and target together (``augment.py``, ``augment2d.py``).

    Angles in degrees, sizes in pixels; each ``p_*`` is the per-sample probability.
    Intensity: ``x' = clamp(((x * s + b) ** gamma), 0, 1)`` with s ~ U(scale), b ~ U(shift),
    gamma ~ U(gamma). Elastic: a smooth random displacement of scale ``elastic_alpha`` px whose
    correlation length is about ``elastic_sigma`` px (2D: U(-1, 1) * alpha on a control grid of one
    point per sigma px, upsampled bicubically, rms about alpha / 2; 3D: white noise smoothed by a
    Gaussian of sigma voxels, scaled to a largest displacement of alpha voxels); off for detection.
    Masks are resampled nearest and stay integer; boxes follow the geometry.
    """

    enabled: bool = False
    on_gpu: bool = True  # run on the batch's device (the training device); False: on the CPU
    hflip: bool = True
    vflip: bool = True
    p_flip: float = Field(0.5, ge=0, le=1)
    rotate90: bool = True
    p_rotate90: float = Field(0.5, ge=0, le=1)
    rotate_deg: float = Field(0.0, ge=0, le=180)
    p_rotate: float = Field(0.5, ge=0, le=1)
    crop_size: tuple[int, int] | None = None  # random crop (H, W); 3D: (D, H, W) via crop_size_3d
    crop_size_3d: tuple[int, int, int] | None = None
    elastic_alpha: float = Field(0.0, ge=0)  # displacement scale, px; 0: off
    elastic_sigma: float = Field(8.0, gt=0)  # correlation length of the field, px
    p_elastic: float = Field(0.3, ge=0, le=1)
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: tuple[float, float] = (-0.05, 0.05)
    intensity_gamma: tuple[float, float] = (0.9, 1.1)
    p_intensity: float = Field(0.5, ge=0, le=1)

    @field_validator("intensity_scale", "intensity_shift", "intensity_gamma")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"expected low <= high (got {list(v)})")
        return v


class LoaderSection(Section):
    """How the task's datasets feed the training loaders (``data.num_workers``, ``data.pin_memory`` and
    ``data.persistent_workers`` are the engine's): ``raw_uint8`` hands cached 8-bit images and masks over as
    uint8 (4x fewer bytes to collate, pin and copy) and scales them on the device; ``prefetch_factor`` batches
    per worker are loaded ahead (with workers).

    ``device_cache`` (``device_cache.py``): the decoded training split uploaded once to the training device and
    every batch gathered there by index (MONAI's "fast training" recipe: CacheDataset + ToDeviced +
    ThreadDataLoader with no workers), so no worker, pinned copy or inter-process batch costs the Python thread
    that issues the GPU's kernels anything per step. The sampler still chooses the indices; only where the bytes
    come from changes. ``auto``: on when the accelerator is CUDA, the split is a 2D segmentation or
    classification set served from the decoded uint8 cache (``data_source.cache``, ``raw_uint8``), every image
    has one size after the configured resize (``data_source.size``) and the stacked bytes fit the budget;
    otherwise the worker loader, as before (one log line says which and why). ``on``: whenever the set allows it,
    on any device and whatever the budget (the CPU tests use it); a set that cannot is a config error. ``off``:
    the worker loader. Budget: ``device_cache_max_gb`` GB, or when unset ``device_cache_memory_fraction`` of
    the device's total memory (0.25: 35 GB of an H200's 141 GB, the rest left to the network's weights,
    optimiser state, activations and cuDNN workspaces).
    """

    raw_uint8: bool = True
    prefetch_factor: int = Field(4, ge=1)
    device_cache: Literal["auto", "on", "off"] = "auto"
    device_cache_max_gb: float | None = Field(None, gt=0)  # GB (1e9 bytes); None: the fraction below
    device_cache_memory_fraction: float = Field(0.25, gt=0, le=1)  # of the device's total memory


class PatchSection(Section):
    """Training on random patches of 3D volumes (volumes larger than memory are read by slab).

    Each volume yields ``samples_per_volume`` patches per epoch; a fraction
    ``foreground_ratio`` of them is centred on a random foreground voxel (nnU-Net uses 1/3),
    the rest anywhere. ``enabled: false`` loads whole volumes (they must fit in memory).
    Size in voxels, (D, H, W).
    """

    enabled: bool = True
    size: tuple[int, int, int] = (64, 64, 64)
    samples_per_volume: int = Field(4, ge=1)
    foreground_ratio: float = Field(1 / 3, ge=0, le=1)
    max_foreground_points: int = Field(10000, ge=1)  # foreground voxels kept per volume for centring
    stats_stride: int = Field(4, ge=1)  # voxel stride of the subsample that sets the intensity percentiles
    seed: int = 0
