"""The smlm config schema (every default here). Units are in the field names."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from neurotrain.config import Config, Section

ModelName = Literal["SimpleSMLMNet", "EnhancedSimpleSMLMNet", "DoubleMUnet", "SigmaMUNet", "SigmaMUNetWithUncertainty"]


class PhotonSection(Section):
    """Emitter brightness, photons per frame while on (challenge-like range 500-10000)."""

    dist: Literal["gamma", "uniform", "lognormal"] = "gamma"
    mean: float = Field(3000.0, gt=0)
    std: float = Field(1500.0, gt=0)
    min: float = Field(200.0, ge=0)
    max: float = Field(20000.0, gt=0)


class SimulateSection(Section):
    frame_size: tuple[int, int] = (64, 64)
    pixel_size_nm: float = Field(100.0, gt=0)
    window: int = Field(3, ge=1)
    density_per_um2: float = Field(0.5, ge=0)
    z_range_nm: tuple[float, float] = (-750.0, 750.0)
    photons: PhotonSection = PhotonSection()
    on_lifetime_frames: float = Field(2.0, gt=0)
    bg_photons: tuple[float, float] = (20.0, 100.0)
    bg_variation: float = Field(0.3, ge=0, lt=1)
    bg_length_px: float = Field(24.0, gt=0)

    @model_validator(mode="after")
    def _odd_window(self) -> SimulateSection:
        if self.window % 2 == 0:
            raise ValueError(f"simulate.window must be odd (got {self.window})")
        return self


class PSFSection(Section):
    """Gaussian PSF width ~0.21 lambda/NA ~ 100-130 nm (Zhang et al. 2007); astigmatic defocus
    curve of Huang et al. (2008) with focal offsets +-c and depth d; ``spline``: a measured PSF from
    ``calibration``, a SMAP/DECODE cubic-spline ``*_3dcal.mat`` (MATLAB v5 or v7.3, see
    :mod:`neurotrain.tasks.smlm.spline_mat`) or our HDF5 z-stack (see
    :mod:`neurotrain.tasks.smlm.spline`), where ``sigma_nm`` is only the Gaussian width the
    baseline fit starts from."""

    kind: Literal["gaussian", "astigmatic", "spline"] = "gaussian"
    sigma_nm: float = Field(120.0, gt=0)
    focal_offset_nm: float = 300.0
    depth_nm: float = Field(400.0, gt=0)
    astig_a: float = 0.0
    astig_b: float = 0.0
    calibration: Path | None = None

    @model_validator(mode="after")
    def _spline_needs_calibration(self) -> PSFSection:
        if self.kind == "spline" and self.calibration is None:
            raise ValueError("psf.kind 'spline' needs psf.calibration (a SMAP/DECODE *_3dcal.mat or an HDF5 PSF z-stack)")
        return self


class CameraSection(Section):
    """Defaults: DECODE's SMLM-challenge EMCCD preset (QE of the challenge data 0.9)."""

    kind: Literal["emccd", "scmos", "ideal"] = "emccd"
    qe: float = Field(0.9, gt=0, le=1)
    spurious_charge: float = Field(0.002, ge=0)
    em_gain: float = Field(300.0, gt=0)
    read_noise_e: float = Field(74.4, ge=0)
    e_per_adu: float = Field(45.0, gt=0)
    baseline_adu: float = 100.0
    quantize: bool = True
    read_noise_map: Path | None = None
    gain_map: Path | None = None
    offset_map: Path | None = None


class ModelSection(Section):
    name: ModelName = "SigmaMUNet"
    mode: Literal["5ch", "6ch"] = "6ch"
    depth: int = Field(2, ge=0)
    depth_shared: int = Field(2, ge=0)
    depth_union: int = Field(2, ge=0)
    initial_features: int = Field(48, ge=1)
    inter_features: int = Field(48, ge=1)
    norm: Literal["batch", "instance", "group", "none"] = "none"
    act: Literal["relu", "elu", "gelu", "leaky_relu", "silu"] = "elu"
    use_separate_heads: bool = True
    dropout: float = Field(0.1, ge=0, lt=1)
    input_scale: float = Field(100.0, gt=0)
    photon_scale: float = Field(10000.0, gt=0)
    bg_scale: float = Field(200.0, gt=0)


class LossTerm(Section):
    type: Literal["GaussianMMLoss", "PPXYZBLoss"] = "GaussianMMLoss"
    weight: float = Field(1.0, ge=0)
    warmup_epochs: int = Field(0, ge=0)


class LossSection(Section):
    name: Literal["GaussianMMLoss", "PPXYZBLoss", "UnifiedLoss"] = "GaussianMMLoss"
    bg_weight: float = Field(1.0, ge=0)
    channel_weights: tuple[float, float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    pos_weight: float = Field(1.0, gt=0)
    terms: list[LossTerm] = [LossTerm(type="GaussianMMLoss"), LossTerm(type="PPXYZBLoss", weight=0.1)]
    dynamic_weighting: bool = False
    ema: float = Field(0.98, ge=0, lt=1)
    #: dynamic weighting: a term's normaliser stays >= this share of the largest magnitude it had
    dynamic_floor: float = Field(0.1, ge=0, le=1)


class PostprocessSection(Section):
    method: Literal["spatial_integration", "nms"] = "spatial_integration"
    raw_threshold: float = Field(0.1, ge=0, le=1)
    threshold: float = Field(0.5, ge=0)


class BaselineSection(Section):
    """Box detection + Levenberg-Marquardt Poisson MLE fit (Picasso / ThunderSTORM style)."""

    box: int = Field(7, ge=3)
    min_photons: float = Field(200.0, ge=0)
    iterations: int = Field(20, ge=1)


class EvaluateSection(Section):
    n_frames: int = Field(200, ge=1)
    seed: int = 1234
    lateral_tol_nm: float = Field(250.0, gt=0)
    axial_tol_nm: float = Field(500.0, gt=0)
    alpha_lat: float = 1.0
    alpha_ax: float = 0.5
    baseline: bool = True
    render_px_nm: float = Field(10.0, gt=0)


class PredictSection(Section):
    format: Literal["auto", "h5", "csv", "picasso"] = "auto"
    chunk_frames: int = Field(256, ge=1)
    render: bool = True
    render_px_nm: float = Field(10.0, gt=0)
    mc_samples: int = Field(0, ge=0)
    """Monte-Carlo dropout passes per window at predict time (0 = off, else >= 2; needs
    SigmaMUNetWithUncertainty); adds the samples' spread as x/y/z/photons ``*_mc_sigma`` columns."""


class SMLMConfig(Config):
    task: str = "smlm"
    simulate: SimulateSection = SimulateSection()
    psf: PSFSection = PSFSection()
    camera: CameraSection = CameraSection()
    model: ModelSection = ModelSection()
    loss: LossSection = LossSection()
    postprocess: PostprocessSection = PostprocessSection()
    baseline: BaselineSection = BaselineSection()
    evaluate: EvaluateSection = EvaluateSection()
    predict: PredictSection = PredictSection()
