"""Config schema of the ``stellar`` task: every default of reading, preprocessing, the synthetic
spectrum generator, the network, the loss, the baselines, evaluation and prediction.

Wavelengths are in Angstrom (vacuum, as LAMOST delivers them), Teff in K, log g in dex (cgs),
abundances in dex. Label names follow the seed's catalogue columns (``TEFF``, ``LOGG``, ``FE_H``,
``C_FE``, ``MG_FE``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from neurotrain.config import Config, Section

#: every label the synthetic generator responds to, in the order the generator's label vector uses
GENERATOR_LABELS: tuple[str, ...] = ("TEFF", "LOGG", "FE_H", "C_FE", "MG_FE", "CA_FE", "NA_FE", "TI_FE")

#: physical units of each label, for tables and axes
LABEL_UNITS: dict[str, str] = {"TEFF": "K", "LOGG": "dex", "FE_H": "dex"}


class LabelsSection(Section):
    """Which labels the network predicts, and their per-label normalisation.

    ``mean``/``std`` empty: taken from the training data (a prepared HDF5 file's attributes) or, when
    training on the generator, from the generator's label prior (``simulate.label_ranges``).
    """

    names: list[str] = Field(default_factory=lambda: ["TEFF", "LOGG", "FE_H", "C_FE", "MG_FE", "CA_FE", "NA_FE"])
    mean: list[float] = Field(default_factory=list)
    std: list[float] = Field(default_factory=list)

    @field_validator("names")
    @classmethod
    def _upper_unique(cls, v: list[str]) -> list[str]:
        v = [s.strip().upper() for s in v]
        if not v:
            raise ValueError("at least one label is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"labels repeat (got {v})")
        return v


class ReadSection(Section):
    """Reading spectra and catalogues (``io.py``)."""

    #: use the header redshift ``Z`` to move to the rest frame; a file without ``Z`` is then an error
    require_z: bool = True
    #: LAMOST ``ANDMASK`` bits that mark a pixel bad (0 = any set bit). LAMOST DR bit meanings: 1 bad CCD
    #: pixel, 2 bad profile, 4 no sky, 8 bright sky, 16 bad centre, 32 nodata, ...
    andmask_bits: int = Field(0, ge=0)
    #: catalogue column that holds the spectrum's id (file stem or OBSID); the seed's ``spec`` column
    id_column: str = "spec"
    #: file-name patterns searched inside an input folder
    patterns: list[str] = Field(default_factory=lambda: ["*.fits", "*.fits.gz", "*.fit", "*.csv", "*.h5", "*.hdf5"])
    #: read the two plain LAMOST layouts with a NumPy FITS parser (``fits_fast.py``, ~20x faster per file than
    #: astropy); anything it does not recognise falls back to astropy, so results are the same either way
    fast_fits: bool = True
    #: search input folders recursively
    recursive: bool = True
    #: read with worker processes instead of threads (``catalog.read_workers`` of them): parsing FITS headers
    #: holds Python's GIL, so threads stop scaling at ~1-2 cores; processes scale with the machine
    processes: bool = False


class PreprocessSection(Section):
    """The seed's preprocessing pipeline (``preprocess.py``), each step a switch.

    The common grid is log-linear (LAMOST's own sampling, d log10 lambda = 1e-4, i.e. 69 km/s per pixel) in
    the rest frame. The default 3900-8800 A avoids the blue end below 3900 A where LAMOST S/N collapses and
    the telluric/fringing residuals above 8800 A that the seed lists as known problems.
    """

    mask_bad_pixels: bool = True
    #: pixels with |flux - running median| > clip_sigma * sigma are treated as bad (cosmics, sky residuals)
    clip_sigma: float = Field(6.0, gt=0)
    #: running-median window (pixels, odd) the spike test compares against; wider than a line core (~2.5 px FWHM)
    clip_window_px: int = Field(9, ge=3)
    #: the spike test's noise floor as a fraction of the local median, so that real structure between deep
    #: lines of a high-S/N spectrum is not mistaken for a cosmic ray (only positive spikes are clipped)
    clip_rel_floor: float = Field(0.2, ge=0)
    denoise: bool = False
    #: Gaussian denoising kernel width in pixels (sigma); small compared with the LSF (~2.5 px FWHM at R 1800)
    denoise_sigma_px: float = Field(0.7, gt=0)
    rest_frame: bool = True
    grid_min_aa: float = Field(3900.0, gt=0)
    grid_max_aa: float = Field(8800.0, gt=0)
    grid_step_log10: float = Field(1e-4, gt=0)
    continuum: bool = True
    #: blue/red arm boundary (LAMOST's dichroic at about 5900 A); each arm gets its own continuum
    arm_split_aa: float = Field(5800.0, gt=0)
    #: Chebyshev polynomial degree of the continuum per arm
    continuum_degree: int = Field(5, ge=0, le=15)
    continuum_iterations: int = Field(6, ge=1)
    #: asymmetric clipping: absorption lines lie below the continuum, so low points are clipped harder
    clip_low_sigma: float = Field(1.5, gt=0)
    clip_high_sigma: float = Field(3.0, gt=0)
    #: floor of the relative residual scatter the clipping uses (a noiseless spectrum would have none)
    continuum_min_scatter: float = Field(1e-3, gt=0)
    #: Tikhonov term of the continuum's normal equations, relative to their mean diagonal (keeps an arm
    #: with almost no good pixels solvable; far below any real signal)
    continuum_ridge: float = Field(1e-9, ge=0)
    #: an output pixel whose bin is covered by bad/absent input pixels for more than this fraction gets ivar 0
    max_bad_overlap: float = Field(0.25, ge=0, lt=1)
    #: final normalisation: clip normalised flux to this range (absorption cannot go below 0; emission spikes)
    final_clip: tuple[float, float] = (0.0, 2.0)
    #: spectra with median S/N per pixel below this are dropped (the seed: S/N < 3 cannot be processed)
    min_snr: float = Field(3.0, ge=0)
    #: spectra with fewer good pixels than this fraction of the grid are dropped
    min_good_fraction: float = Field(0.5, gt=0, le=1)
    #: channel 1 of the network input is sqrt(ivar) of the normalised flux divided by this (S/N 100 -> 1.0),
    #: capped at ``inv_sigma_max`` so one over-confident pixel cannot dominate
    inv_sigma_scale: float = Field(100.0, gt=0)
    inv_sigma_max: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _grid_order(self) -> "PreprocessSection":
        if self.grid_max_aa <= self.grid_min_aa:
            raise ValueError(f"grid_max_aa must exceed grid_min_aa (got {self.grid_min_aa}, {self.grid_max_aa})")
        return self


class SimulateSection(Section):
    """The synthetic LAMOST-like spectrum generator (``simulate.py``) or a Payne-format emulator."""

    generator: Literal["lines", "payne"] = "lines"
    #: ``.npz`` of a Payne / DD-Payne emulator (``w_array_*``, ``b_array_*``, ``x_min``, ``x_max``, ``wavelength``)
    emulator_path: Path | None = None
    #: order of the emulator's input labels, when it is given
    emulator_labels: list[str] = Field(default_factory=lambda: ["TEFF", "LOGG", "FE_H"])
    #: resolving power lambda / FWHM of the line-spread function
    resolution: float = Field(1800.0, gt=0)
    #: observed-frame pixel grid: LAMOST's log10 lambda = coeff0 + coeff1 * i, 3909 pixels (3700-9099 A)
    coeff0: float = 3.5682
    coeff1: float = 1e-4
    n_pixels: int = Field(3909, ge=16)
    #: uniform prior on each generator label (TEFF K, LOGG dex, abundances dex); giants and dwarfs follow
    #: from the (TEFF, LOGG) box cut by ``giant_branch``
    label_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "TEFF": (3800.0, 7000.0),
            "LOGG": (0.8, 5.0),
            "FE_H": (-2.0, 0.5),
            "C_FE": (-0.5, 0.5),
            "MG_FE": (-0.3, 0.6),
            "CA_FE": (-0.3, 0.6),
            "NA_FE": (-0.5, 0.5),
            "TI_FE": (-0.3, 0.5),
        }
    )
    #: draw (TEFF, LOGG) near a main sequence and a red-giant branch rather than from the full box
    physical_hr: bool = True
    #: g-band-like S/N per pixel drawn log-uniform from this range for training
    snr_range: tuple[float, float] = (5.0, 150.0)
    #: radial velocity range (km/s); the header-like ``z`` of each spectrum is v / c
    rv_range_kms: tuple[float, float] = (-300.0, 300.0)
    #: relative error of the flux calibration: a smooth multiplicative response drawn per spectrum
    response_error: float = Field(0.15, ge=0)
    #: fraction of pixels hit by cosmic rays / bad columns (masked in ``mask``, ivar 0)
    bad_pixel_fraction: float = Field(0.002, ge=0, le=0.5)
    #: add sky-subtraction residuals in the red (above 6800 A, telluric bands)
    sky_residuals: bool = True
    #: sky-line residual amplitude in units of the local noise sigma (unaccounted for in ivar), and where they start
    sky_residual_sigma: float = Field(3.0, ge=0)
    sky_residual_min_aa: float = Field(6800.0, gt=0)
    #: telluric O2 A/B and H2O bands in the observed frame
    tellurics: bool = True
    #: the spectra were telluric-corrected by their pipeline (LAMOST DR10 LRS: the 25 real spectra show an O2 A-band
    #: depth of +0.5 % median, 16-84 % range -1.4..+5.0 %, docs/results/stellar.md), so only a correction residual
    #: is drawn: the band optical depth times a per-spectrum factor N(0, ``telluric_residual``) (either sign:
    #: under- or over-correction). False: full uncorrected bands (LSS-GAC-style spectra, Xiang et al. 2015)
    telluric_corrected: bool = True
    telluric_residual: float = Field(0.05, ge=0)
    #: the line forest's wavelengths are pseudo-random, not a real line list: > 0 shifts each spectrum's forest by a
    #: random amount, uniform within +- this (log10 lambda; 0.005 = +-1.2 %, ~+-60 A at 5000 A), so that a network
    #: learns the forest's blanketing, not the positions of lines real stars lack (``generator: lines`` only).
    #: Off by default: on the 25 real spectra a quickstart network moved by less than its run-to-run scatter
    #: (docs/results/stellar.md), while the CRLB (fixed forest) would no longer be reachable
    forest_shift_log10: float = Field(0.0, ge=0)
    #: label prior shape with ``physical_hr``: fraction of giants (RGB + red clump), of red clump among giants,
    #: of subgiants among dwarfs, and the scatter about the sequences (log g dex, Teff K)
    giant_fraction: float = Field(0.45, ge=0, le=1)
    red_clump_fraction: float = Field(0.3, ge=0, le=1)
    subgiant_fraction: float = Field(0.1, ge=0, le=1)
    hr_scatter_logg: float = Field(0.12, ge=0)
    hr_scatter_teff: float = Field(80.0, ge=0)
    #: strength 0..1 of the thick-disc/halo alpha enhancement ([Mg,Ca,Ti/Fe] -> ~+0.3 below [Fe/H] = -1);
    #: 0 keeps the abundances independent and uniform
    alpha_trend: float = Field(0.0, ge=0, le=1)
    #: the normalised model is computed on a rest grid this many times finer than the observed grid, then
    #: interpolated onto each spectrum's Doppler-shifted rest wavelengths
    oversample: int = Field(2, ge=1, le=8)
    #: blue/red arm boundary of the flux-calibration response (LAMOST's dichroic crossover)
    arm_split_aa: float = Field(5800.0, gt=0)
    #: Legendre degree of each arm's smooth response curve, and the rms jump between the arms (relative)
    response_degree: int = Field(3, ge=0, le=10)
    response_jump: float = Field(0.03, ge=0)
    #: sky background variance, relative to the median source counts in the S/N band (a flat sky F_lambda through
    #: the same throughput as the source)
    sky_background: float = Field(0.3, ge=0)
    #: observed-frame band whose median S/N per pixel equals the asked S/N (the g band)
    snr_band_aa: tuple[float, float] = (4000.0, 5500.0)
    #: overall flux level (arbitrary LAMOST-like units) drawn log-uniform from this range
    flux_scale_range: tuple[float, float] = (50.0, 5000.0)

    @field_validator("label_ranges")
    @classmethod
    def _ranges_ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for k, (lo, hi) in v.items():
            if hi < lo:
                raise ValueError(f"{k}: low end above high end (got {lo}, {hi})")
        return {k.upper(): r for k, r in v.items()}


class PoolSection(Section):
    """A fixed pool of generator spectra for training on a CPU: drawing and preprocessing a spectrum costs
    far more there than a training step on it, so a laptop run draws ``train`` / ``val`` / ``test`` spectra
    once (seeded) and trains epochs over them. 0 (the default, for GPUs): every training batch is drawn anew."""

    train: int = Field(0, ge=0)
    val: int = Field(256, ge=1)
    test: int = Field(256, ge=1)


class ModelSection(Section):
    """``SpectralResCNN``: input conv, three residual groups, fully connected head (the seed's network)."""

    name: Literal["SpectralResCNN"] = "SpectralResCNN"
    #: channels fed to the network: normalised flux, and its normalised inverse error
    in_channels: Literal[1, 2] = 2
    #: width of the input conv and the first residual group; the three groups are x1, x2, x4
    base_channels: int = Field(16, ge=4)
    blocks_per_group: int = Field(2, ge=1)
    kernel_size: int = Field(7, ge=3)
    #: stride of the first conv and of each group's first block (downsampling along wavelength)
    downsample: int = Field(2, ge=1)
    hidden: int = Field(256, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    #: predict a variance per label (Gaussian negative log-likelihood); off = mean only (MSE)
    heteroscedastic: bool = True
    #: wavelength segments kept by the pooling before the head (1 = global average pooling); a few segments
    #: keep where along the spectrum a feature sits
    pool_size: int = Field(16, ge=1)
    #: squeeze-and-excitation ratio inside the residual blocks (null = off)
    se_reduction: int | None = Field(None, ge=1)


class LossSection(Section):
    name: Literal["gaussian_nll", "mse"] = "gaussian_nll"
    #: floor on the predicted standard deviation in normalised label units, to keep the NLL finite
    #: (added in quadrature: var = exp(log_var) + min_sigma^2, smooth, so the gradient never vanishes)
    min_sigma: float = Field(1e-3, gt=0)
    #: beta-NLL exponent (Seitzer et al. 2022, ICLR): each label's NLL is weighted by its detached variance
    #: ** beta; 0 = plain NLL, 0.5 their recommendation (the mean is not starved where sigma is large),
    #: 1 = MSE-like gradients for the mean. The variance's optimum is unchanged for any beta.
    beta: float = Field(0.5, ge=0, le=1)


class UncertaintySection(Section):
    """Predictive uncertainty: the heteroscedastic head's sigma, plus MC dropout and/or a deep ensemble."""

    mc_samples: int = Field(0, ge=0)
    #: checkpoints of an ensemble (each trained with another seed); empty: the one model
    ensemble: list[Path] = Field(default_factory=list)


class CalibrationSection(Section):
    """Post-hoc calibration of the predicted sigma (``calibration.py``).

    After every validation epoch of training, each label's sigma is multiplied by the factor that puts
    ``coverage`` of a calibration set inside +-1 sigma (the quantile of |error| / sigma; Kuleshov et al. 2018,
    ICML, "Accurate uncertainties for deep learning using calibrated regression"), fitted once over the whole
    set (the global factor) and once per S/N bin around each of ``snr_knots`` (the S/N-dependent factor,
    interpolated linearly in log S/N between the knots and held constant outside them). The S/N is the
    spectrum's own median S/N per LAMOST pixel, measured on the network input (``SpectralResCNN.input_snr``),
    so real spectra get it too. The calibration set is ``n_spectra`` generator spectra over the training S/N
    range, drawn from its own seed (``seed_offset``), disjoint from training batches and from ``evaluate``'s
    held-out sets.
    """

    enabled: bool = True
    n_spectra: int = Field(4096, ge=16)
    #: fraction of errors the calibrated 1 sigma must cover: the Gaussian 68.27 %
    coverage: float = Field(0.6827, gt=0, lt=1)
    seed_offset: int = 500_000_003
    #: spectra simulated and predicted per call
    chunk: int = Field(512, ge=1)
    #: S/N per pixel at which the S/N-dependent factor is fitted (increasing). They span ``simulate.snr_range``
    #: (5-150) and contain ``evaluate.snr_bins``; a spectrum counts towards the knot nearest in log S/N
    #: (the measured S/N of a spectrum drawn at S/N 150 reaches ~200, so the last bin is open-ended). Empty:
    #: the global factor only
    snr_knots: list[float] = Field(default_factory=lambda: [5.0, 10.0, 20.0, 50.0, 100.0, 150.0])
    #: a knot whose bin holds fewer usable spectra than this (per label) keeps the global factor; at 100 the
    #: quantile's own error is ~10 % of sigma (binomial error of the 68 % quantile of |z|)
    min_per_bin: int = Field(100, ge=1)
    #: ``neurotrain evaluate`` refits the factors on the calibration set even when the checkpoint has them
    #: (it always refits when a checkpoint predates the S/N-dependent factor); ``predict`` refits when this is
    #: true or with ``--opt recalibrate=true``
    refit_on_load: bool = False

    @field_validator("snr_knots")
    @classmethod
    def _knots_increasing(cls, v: list[float]) -> list[float]:
        if any(k <= 0 for k in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"expected positive, strictly increasing S/N values (got {v})")
        return v


class CatalogSection(Section):
    """Reference catalogues (labels for training/val/test) and prediction catalogues (only preprocessed)."""

    reference: list[Path] = Field(default_factory=list)
    prediction: list[Path] = Field(default_factory=list)
    #: folder(s) the spectra of the catalogues are looked up in
    spectra_dirs: list[Path] = Field(default_factory=list)
    #: where prepared (preprocessed) HDF5 data go
    prepared_dir: Path = Path("processed_data")
    #: train / val / test fractions of the reference set (the seed's 7:1:2) and the split seed
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 42
    #: spectra read and preprocessed per chunk; the prepared file is committed after each chunk (resumable)
    chunk_size: int = Field(2048, ge=1)
    #: parallel file readers (threads)
    read_workers: int = Field(4, ge=1)
    #: write the stage / S/N / drop figures into ``<prepared_dir>/plots``
    figures: bool = True


class BaselineSection(Section):
    methods: list[Literal["xgboost", "lightgbm", "cannon"]] = Field(
        default_factory=lambda: ["xgboost", "lightgbm", "cannon"]
    )
    #: boosted trees: the usual tuning of their users (depth, rate, rounds with early stopping on val)
    n_estimators: int = Field(600, ge=1)
    max_depth: int = Field(6, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    early_stopping_rounds: int = Field(30, ge=1)
    #: the trees see the spectrum binned by this many pixels (their users' usual feature reduction)
    bin_pixels: int = Field(4, ge=1)
    #: LightGBM leaves per tree (its users keep it below 2**max_depth); both: row / feature subsampling
    num_leaves: int = Field(31, ge=2)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample: float = Field(0.8, gt=0, le=1)
    #: histogram bins per feature, both libraries (their defaults: XGBoost 256, LightGBM 255); fewer bins build
    #: trees faster (64: ~3x for XGBoost on 490 features)
    max_bin: int = Field(256, ge=2)
    #: share of the baseline training set held out for early stopping
    val_fraction: float = Field(0.1, gt=0, lt=1)
    #: where XGBoost builds its trees ("auto": the GPU when there is one); LightGBM runs on the CPU
    tree_device: Literal["auto", "cpu", "cuda"] = "auto"
    #: The Cannon: ridge on the quadratic coefficients (0 = plain least squares)
    cannon_regularization: float = Field(0.0, ge=0)
    #: The Cannon's training: coefficient fit <-> per-pixel scatter s^2 rounds (Ness et al. 2015 iterate)
    cannon_iterations: int = Field(2, ge=1)
    #: The Cannon's test step: Levenberg-Marquardt from the linear-model solution, the training mean and
    #: this many training-set label vectors; the best chi^2 wins
    cannon_starts: int = Field(2, ge=0)
    cannon_max_steps: int = Field(40, ge=1)
    #: spectra per batch of The Cannon's test step
    cannon_batch: int = Field(1024, ge=1)
    n_jobs: int = Field(2, ge=1)


class EvaluateSection(Section):
    """Held-out synthetic evaluation: ``spectra_per_snr`` at each S/N, seeds disjoint from training."""

    snr_bins: list[float] = Field(default_factory=lambda: [10.0, 20.0, 50.0, 100.0])
    spectra_per_snr: int = Field(2000, ge=8)
    #: training set drawn for the baselines (they cannot learn on the fly)
    baseline_train_size: int = Field(20000, ge=16)
    #: spectra per S/N used for the CRLB (one Jacobian each; 0 = no CRLB)
    crlb_spectra: int = Field(200, ge=0)
    #: log g below this is a giant in the dwarf/giant breakdown
    giant_logg: float = 3.5
    #: seed offset of the held-out set: it shares no seed with training batches
    seed_offset: int = 1_000_000_007
    figures: bool = True
    #: spectra simulated and preprocessed per call (memory cap of the held-out and baseline sets)
    sim_chunk: int = Field(512, ge=1)
    #: points drawn per panel in the scatter figures (a random subset beyond that)
    max_points: int = Field(3000, ge=10)
    #: keep the baselines' held-out predictions in ``<output>/baseline_cache/`` keyed by everything that
    #: determines them (config sections, sizes, seeds, methods, device kind, the stellar code): a later
    #: evaluate of another network in the same folder reuses them instead of refitting the trees (XGBoost
    #: took 223 of 300 s on an H200 host with 12 threads)
    baseline_cache: bool = True


class AnalyzeSection(Section):
    """``neurotrain analyze``: feature importance by wavelength and residual analysis."""

    method: Literal["integrated_gradients", "occlusion"] = "integrated_gradients"
    n_spectra: int = Field(256, ge=1)
    ig_steps: int = Field(32, ge=2)
    occlusion_width_aa: float = Field(20.0, gt=0)
    top_regions: int = Field(8, ge=1)


class PredictSection(Section):
    """``neurotrain predict``: a folder or list of spectra -> a labels table."""

    batch_size: int = Field(1024, ge=1)
    #: also write the preprocessed spectra (HDF5) next to the labels
    save_spectra: bool = False
    plot: bool = True


class StellarConfig(Config):
    task: str = "stellar"
    labels: LabelsSection = LabelsSection()
    read: ReadSection = ReadSection()
    preprocess: PreprocessSection = PreprocessSection()
    simulate: SimulateSection = SimulateSection()
    pool: PoolSection = PoolSection()
    model: ModelSection = ModelSection()
    loss: LossSection = LossSection()
    uncertainty: UncertaintySection = UncertaintySection()
    calibration: CalibrationSection = CalibrationSection()
    catalog: CatalogSection = CatalogSection()
    baseline: BaselineSection = BaselineSection()
    evaluate: EvaluateSection = EvaluateSection()
    analyze: AnalyzeSection = AnalyzeSection()
    predict: PredictSection = PredictSection()
