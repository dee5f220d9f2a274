"""Config schema of the ``vision`` task: what to learn (``kind``), the data sections (``data_config.py``), the
network, loss, metrics, post-processing, the Otsu + watershed baseline, prediction and evaluation.

The names follow the seed (NeuroTrain): ``model.name`` picks a network by registry name, ``loss`` the criterion
(CrossEntropy, BCEWithLogits, Dice, Focal and their combinations), ``metrics.names`` the metric list
(``dice``, ``iou``, ``nsd``, ``accuracy``, ``precision``, ``recall``, ``f1``, ``auroc``, top-k, ``map``, ``mf1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator

from neurotrain.config import Config, Section
from neurotrain.tasks.vision.data_config import (
    AugmentSection,
    DatasetSpec,
    HybridSection,
    LoaderSection,
    PatchSection,
    SamplerSection,
    TaskKind,
)

SYNTHETIC_CLASSES = ("disc", "square", "triangle")  # synthetic.CLASSIFICATION_CLASSES
VOLUME_DATASETS = ("nifti_folder", "btcv", "brats")
DEFAULT_METRICS: dict[str, list[str]] = {
    "segmentation": ["dice", "iou"],
    "classification": ["accuracy", "precision", "recall", "f1", "auroc", "top_k"],
    "detection": ["map", "mf1"],
}


class ModelSection(Section):
    """A network by registry name (``models.py``) with its keyword arguments. ``pretrained_path``: a local
    state-dict file; nothing is downloaded. ``pretrained_strict: false`` skips entries that do not fit (a head
    for another class count)."""

    name: str = "unet"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained_path: Path | None = None
    pretrained_strict: bool = False
    channels_last: bool = False  # NHWC memory layout for 2D convolutions (faster with bf16 on tensor cores)


class LossSection(Section):
    """``name`` one loss or a preset sum; ``terms`` any weighted sum (``{dice: 1.0, ce: 0.5}``; overrides name)."""

    name: Literal["ce", "bce", "dice", "focal", "dice_ce", "dice_focal"] = "dice_ce"
    terms: dict[Literal["ce", "bce", "dice", "focal"], float] = Field(default_factory=dict)
    class_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0)  # Lin et al. 2017 use 2
    focal_alpha: float | None = Field(None, ge=0, le=1)
    dice_include_background: bool = False
    dice_smooth: float = Field(1e-5, gt=0)


class MetricsSection(Section):
    """Validation/test metrics; ``names`` None = the kind's default (:data:`DEFAULT_METRICS`)."""

    names: list[str] | None = None
    top_k: int = Field(3, ge=2)
    nsd_tolerance_px: float = Field(1.0, gt=0)  # surface-Dice tolerance, pixels
    #: IoU thresholds of the instance/box F1 (mF1 is their mean); 0.5 is the usual detection criterion
    iou_thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])


class PostprocessSection(Section):
    """Network output -> masks (``postprocess.py``): sizes in pixels (voxels)."""

    threshold: float = Field(0.5, gt=0, lt=1)  # binary: foreground where p(class 1) >= threshold
    open_radius: int = Field(0, ge=0)
    close_radius: int = Field(0, ge=0)
    min_size: int = Field(0, ge=0)  # components smaller than this become background
    tta_flips: bool = False  # average the probabilities over flips along each spatial axis
    instances: Literal["components", "watershed"] = "components"
    min_distance: int = Field(3, ge=1)  # watershed markers at least this far apart
    score_threshold: float = Field(0.5, ge=0, le=1)  # detection: boxes kept at or above this score


class BaselineSection(Section):
    """Otsu + watershed (``baseline.py``)."""

    smooth_sigma: float = Field(1.0, ge=0)  # Gaussian pre-smoothing, pixels
    polarity: Literal["auto", "bright", "dark"] = "auto"
    min_size: int = Field(10, ge=0)
    min_distance: int = Field(3, ge=1)
    watershed: bool = True
    #: ``evaluate``: sweep the grid below on the training split (stardist folds: the three training quadrants
    #: whole) by instance F1 at IoU ``tune_iou`` (ties: the higher mF1, then the earlier setting) and score the
    #: held-out split with the best; ``smooth_sigma``, ``min_distance`` and ``min_size`` above are then replaced
    tune: bool = False
    tune_smooth_sigma: list[float] = Field(default_factory=lambda: [0.0, 1.0, 2.0])  # pixels; 0: no smoothing
    tune_min_distance: list[int] = Field(default_factory=lambda: [3, 4, 5, 6, 7, 8, 9])  # peak_local_max, pixels
    tune_min_size: list[int] = Field(default_factory=lambda: [0, 15, 30, 60, 120])  # pixels (stardist nuclei: 25-751)
    tune_iou: float = Field(0.5, gt=0, lt=1)
    tune_max_images: int = Field(64, ge=1)  # training images swept at most (the first ones)

    @field_validator("tune_smooth_sigma", "tune_min_distance", "tune_min_size")
    @classmethod
    def _grid(cls, v: list[Any]) -> list[Any]:
        if not v or min(v) < 0:
            raise ValueError(f"expected a non-empty list of values >= 0 (got {v})")
        return v


class PredictSection(Section):
    """``neurotrain predict``: outputs and the sliding window for large images / volumes."""

    mask_format: Literal["png", "tif"] = "png"  # 2D masks; volumes are written as NIfTI
    save_probabilities: bool = False  # also write the foreground probability (float32 TIFF / NIfTI)
    save_instances: bool = False  # also write instance labels (16-bit TIFF / NIfTI)
    #: sliding-window tile (H, W) or (D, H, W); None = whole image (2D) / patch.size (3D)
    roi_size: list[int] | None = None
    sw_overlap: float = Field(0.25, ge=0, lt=1)
    sw_batch_size: int = Field(4, ge=1)
    recursive: bool = False
    suffixes: list[str] = Field(default_factory=lambda: [".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz"])
    explain: Literal["none", "gradcam", "integrated_gradients"] = "none"  # classification: write attribution overlays
    #: detection: the fixed (H, W) the ONNX graph of ``neurotrain export`` takes (images are resized to it, boxes
    #: scaled back; the sidecar says how); None: ``data_source.size``
    export_size: tuple[PositiveInt, PositiveInt] | None = None


class EvaluateSection(Section):
    """``neurotrain evaluate`` / ``test``: network and baseline on the held-out split."""

    split: Literal["val", "test"] = "test"
    max_images: int | None = Field(None, ge=1)
    baseline: bool = True  # segmentation: Otsu + watershed side by side
    figures: bool = True
    n_examples: int = Field(6, ge=0)
    #: other configs trained (when their run has no checkpoint yet) and evaluated with this one, reported under
    #: ``companions`` (the demo's classifier next to its segmentation U-Net). Relative paths: to the working folder,
    #: else to the source checkout
    companions: list[Path] = Field(default_factory=list)
    #: a companion whose run already has a checkpoint: "retrain" trains it again (the checkpoint may come from an
    #: older config or older code); "reuse" evaluates that checkpoint when its embedded config equals the
    #: companion config as it reads now (else it retrains), and the report says which checkpoint was reused
    companion_checkpoint: Literal["retrain", "reuse"] = "retrain"


class VisionConfig(Config):
    task: str = "vision"
    kind: TaskKind | None = None  # None: the kind data_source.name yields
    data_source: DatasetSpec = DatasetSpec()
    hybrid: HybridSection = HybridSection()
    sampler: SamplerSection = SamplerSection()
    augment: AugmentSection = AugmentSection()
    patch: PatchSection = PatchSection()
    loader: LoaderSection = LoaderSection()
    model: ModelSection = ModelSection()
    loss: LossSection = LossSection()
    metrics: MetricsSection = MetricsSection()
    postprocess: PostprocessSection = PostprocessSection()
    baseline: BaselineSection = BaselineSection()
    predict: PredictSection = PredictSection()
    evaluate: EvaluateSection = EvaluateSection()

    @property
    def primary_source(self) -> DatasetSpec:
        """The dataset that sets channels and classes: the first of a hybrid mix, else ``data_source``."""
        return self.hybrid.datasets[0] if self.hybrid.datasets else self.data_source

    @property
    def task_kind(self) -> str:
        src = self.primary_source
        if self.kind is not None:
            return self.kind
        if src.name == "synthetic_shapes" and src.kind is None:
            return src.synthetic.kind
        return src.task_kind

    @property
    def num_classes(self) -> int:
        """Classes including the background (segmentation, detection); the synthetic sets fix their own."""
        src = self.primary_source
        if src.name == "synthetic_shapes":
            return src.synthetic.n_classes if self.task_kind == "segmentation" else len(SYNTHETIC_CLASSES)
        return src.n_classes

    @property
    def in_channels(self) -> int:
        src = self.primary_source
        if src.name in ("brats",):
            return len(src.modalities)
        return src.channels

    @property
    def spatial_dims(self) -> int:
        return 3 if self.primary_source.name in VOLUME_DATASETS else 2

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics.names) if self.metrics.names is not None else list(DEFAULT_METRICS[self.task_kind])
