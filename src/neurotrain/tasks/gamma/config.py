"""Config schema of the ``gamma`` task: every default of the simulator, network, loss, metrics,
baseline, evaluation and prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from neurotrain.config import Config, Section

LAB_SOURCES = ["Am-241", "Ba-133", "Cs-137", "Co-57", "Co-60", "Na-22", "Eu-152", "Mn-54", "Y-88", "Co-58", "Cd-109"]

#: Typical resolutions at 662 keV (FWHM / E) and power of the FWHM law per crystal, used when a user gives
#: only the crystal name (Knoll, "Radiation Detection and Measurement", 4th ed., ch. 10; Saint-Gobain data).
CRYSTAL_RESOLUTION: dict[str, tuple[float, float]] = {
    "LYSO": (0.10, 0.5),
    "NaI": (0.07, 0.5),
    "CsI": (0.075, 0.5),
    "LaBr3": (0.03, 0.5),
}


class DetectorSection(Section):
    """Crystal cylinder and the slab behind it (lengths in cm)."""

    crystal: Literal["LYSO", "NaI", "CsI", "LaBr3"] = "LYSO"
    radius_cm: float = Field(1.27, gt=0)
    height_cm: float = Field(2.54, gt=0)
    slab_material: Literal["Pb", "Fe", "none"] = "Pb"
    backscatter_fraction: float = Field(0.1, ge=0, le=1)
    #: pulse-pair resolving time (microseconds) of the scintillator's electronics for random pile-up
    #: (cascade.pileup); ~1 us for a scintillator with ~1 us shaping (Knoll, 4th ed., ch. 17)
    pileup_resolving_time_us: float = Field(1.0, ge=0)


class HPGeSection(Section):
    """The germanium detector of the ``hpge`` target (``hpge.py``): a p-type closed-end coaxial crystal.

    Default 60 mm x 60 mm with a 10 mm x 45 mm core and a 0.7 mm lithium-diffused outer contact: 166 cm^3
    active, ~40 % relative efficiency by the rule relative efficiency ~ active volume / 4.3 cm^3 (Gilmore,
    "Practical Gamma-ray Spectrometry", 2nd ed. 2008); the transport gives 50 % (hpge.relative_efficiency).
    FWHM^2 = noise^2 + 2.355^2 F w E + (ccl E)^2: electronic noise 0.85 keV FWHM, Fano factor
    F = 0.12 and w = 2.96 eV per electron-hole pair at 77 K (Knoll, 4th ed., sec. 12.IV), charge-collection
    term 2.4e-4 x E: 0.98 / 1.43 / 1.86 keV at 122 / 662 / 1332 keV, a typical GEM40 specification."""

    diameter_mm: float = Field(60.0, gt=0)
    length_mm: float = Field(60.0, gt=0)
    core_diameter_mm: float = Field(10.0, ge=0)
    core_depth_mm: float = Field(45.0, ge=0)
    dead_layer_mm: float = Field(0.7, ge=0)
    noise_fwhm_kev: float = Field(0.85, ge=0)
    fano: float = Field(0.12, gt=0)
    pair_energy_ev: float = Field(2.96, gt=0)
    charge_collection: float = Field(2.4e-4, ge=0)
    #: the HPGe response's Monte Carlo seed = simulate.response_seed + this (its own random stream)
    seed_offset: int = 1_000_003
    #: Monte Carlo photons per incident energy of the germanium response (None: simulate.response_photons)
    response_photons: int | None = Field(None, ge=10)
    #: pulse-pair resolving time (microseconds) of the germanium chain (~6 us shaping: 2-3 us pulse-pair)
    pileup_resolving_time_us: float = Field(2.5, ge=0)


class SimulateSection(Section):
    """The spectrum simulator (``simulate.py``); energies in keV."""

    n_channels: int = Field(1024, ge=64)
    e_min_kev: float = Field(20.0, ge=0)
    e_max_kev: float = Field(3000.0, gt=0)
    detector: DetectorSection = DetectorSection()
    #: crystals drawn per training batch (same geometry); empty = only ``detector.crystal``. Mixing LYSO, NaI
    #: and CsI lets one FWHM-conditioned model serve all three.
    train_crystals: list[Literal["LYSO", "NaI", "CsI", "LaBr3"]] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=lambda: list(LAB_SOURCES))
    min_sources: int = Field(0, ge=0)
    max_sources: int = Field(4, ge=1)
    random_line_fraction: float = Field(0.4, ge=0, le=1)
    max_random_lines: int = Field(6, ge=1)
    counts_range: tuple[float, float] = (1e3, 1e7)
    fwhm_662_range: tuple[float, float] = (0.06, 0.12)
    power_range: tuple[float, float] = (0.45, 0.65)
    #: (keV, FWHM keV) anchors of the ``resolution_only`` target's law FWHM^2 = a + b E + c E^2 (the ``hpge``
    #: target uses the germanium law of ``hpge`` instead: hpge.target_fwhm_coefficients)
    hpge_fwhm_anchors: list[tuple[float, float]] = Field(
        default_factory=lambda: [(122.0, 0.9), (662.0, 1.3), (1332.0, 1.9)]
    )
    source_rate_cps: tuple[float, float] = (300.0, 30000.0)
    environment: bool = True
    env_rate_cps_per_cm3: float = Field(1.0, ge=0)
    env_continuum_share: float = Field(2.0, ge=0)
    #: photons per emitted line photon that reach the crystal after one Compton scatter in the surroundings
    #: (simulate.room_return), drawn per spectrum from this range: the broad continuum between the
    #: backscatter energy and the line that real lab spectra show. (0, 0) = off. On the real CsI Ba-133 +
    #: Cs-137 file (realdata SGM102432), 1.0 with a 10 counts/s source brought the 150-1500 keV band ratios
    #: (real / simulated, normalised at 600-720 keV) to 0.9-1.4, from 2.3-25 with (0, 0) and 300 counts/s
    room_return_fraction: tuple[float, float] = (0.0, 0.0)
    lu176_bq_per_g: float = Field(37.0, ge=0)
    gain_jitter: float = Field(0.003, ge=0)
    offset_jitter_kev: float = Field(1.0, ge=0)
    detect_sigma: float = Field(5.0, gt=0)
    #: slots of the per-spectrum true-line list (strongest kept). 128 holds the worst case of the library without
    #: merging: environment K-40 + Th-232 (40 lines) + Ra-226 (30) = 71, the four largest lab sources
    #: (Eu-152 19, Ba-133 11, Cd-109 5 with its Ag K x-rays, Y-88 4) = 39, and max_random_lines 6: 116 (82 after 3 keV merging);
    #: with the true-coincidence sum lines of data/cascades.csv (Eu-152 5, Ba-133 2, Y-88 1) 124.
    max_lines: int = Field(128, ge=8)
    line_merge_kev: float = Field(3.0, ge=0)
    response_photons: int = Field(2000, ge=10)
    response_smooth_channels: int = Field(4, ge=0)
    #: Gaussian sigma (keV) on the response's deposits of no fixed energy (see simulate.smooth_deposits)
    response_smooth_kev: float = Field(1.0, ge=0)
    response_seed: int = 12345
    lu176_events: int = Field(200_000, ge=1000)
    cache_dir: Path | None = None
    #: what the network learns to produce. ``hpge``: the same source seen by the germanium detector of
    #: ``hpge`` (its own transport response, photofraction, Compton continuum, Ge K x-ray escapes, FWHM law,
    #: summing and pile-up; no Lu-176). ``resolution_only``: the scintillator's own deposits re-broadened to the
    #: ``hpge_fwhm_anchors`` law (keeps the scintillator's continuum, escapes and Lu-176; the former target).
    target: Literal["hpge", "resolution_only"] = "hpge"
    hpge: HPGeSection = HPGeSection()
    #: source on the scintillator's axis this far from its front face (cm); the HPGe sits where it subtends the
    #: same solid angle, so both see the same photons per decay; sets the true-coincidence summing probability
    source_distance_cm: float = Field(5.0, gt=0)
    #: true-coincidence summing of the cascades in data/cascades.csv (cascade.py)
    coincidence_summing: bool = True
    #: random pile-up (first order, cascade.pileup) at each detector's pileup_resolving_time_us
    pileup: bool = True
    #: count rate (counts/s) for the pile-up; None: each spectrum's own simulated rate in each detector
    pileup_rate_cps: float | None = Field(None, gt=0)

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: list[str]) -> list[str]:
        from neurotrain.tasks.gamma import library

        known = library.sources()
        bad = [s for s in v if s not in known]
        if bad:
            raise ValueError(f"unknown source(s) {bad} (known: {', '.join(known)})")
        return v


class ModelSection(Section):
    """The network (``models.py``). ``FastSpectralUNet1D`` runs the residual U-Net at 1/``stem_stride`` of the
    channel grid; the seed's ``SpectralResNet1D`` / ``ImprovedSpectralResNet1D`` stay for their checkpoints."""

    name: Literal["FastSpectralUNet1D", "SpectralResNet1D", "ImprovedSpectralResNet1D"] = "FastSpectralUNet1D"
    base_channels: int = Field(32, ge=4)
    depth: int = Field(4, ge=1, le=8)
    #: cap on a stage's width (None: base_channels * 2**depth at the bottom). The bottom stages hold most of
    #: the compute (a stage's cost grows as 2**i at fixed kernel), yet see the spectrum only coarsely.
    max_channels: int | None = Field(None, ge=4)
    blocks_per_level: int = Field(1, ge=1)
    bottleneck_blocks: int = Field(2, ge=0)
    kernel_size: int = Field(7, ge=3)
    se_reduction: int = Field(8, ge=1)
    up_kernel: Literal[2, 4] = 2
    condition: bool = True
    #: FastSpectralUNet1D: channels folded into one position by the stem (lossless 1D space-to-depth) and
    #: unfolded by the head, so the network works on a grid this much coarser; n_channels must be divisible by
    #: stem_stride * 2**depth. 8 channels of the 4096-channel 20-3000 keV grid are 5.8 keV, below the narrowest
    #: input line (LaBr3 3 % at 662 keV, power 0.5: 8.5 keV FWHM at 122 keV, 12 channels) and 4.9x below
    #: LYSO's there (28 keV); at train.yaml's size the network needs 7.2x fewer multiply-adds (bench/gamma.py)
    stem_stride: int = Field(8, ge=1)
    #: FastSpectralUNet1D: features per channel of its one full-resolution level (input convolution, skip and
    #: a residual block after depth-to-space), which sharpens a line alike wherever it falls in a stem block;
    #: 0: none (pure space-to-depth in and depth-to-space out)
    full_channels: int = Field(16, ge=0)


class LossSection(Section):
    name: Literal["peak_weighted", "counting_peak_weighted", "adaptive_peak_weighted", "poisson_nll", "mse"] = (
        "peak_weighted"
    )
    peak_weight: float = Field(5.0, ge=0)
    wavelet_sigma_channels: float = Field(2.0, gt=0)
    peak_threshold: float = Field(0.05, ge=0)
    log_weight: float = Field(0.1, ge=0)
    area_weight: float = Field(0.1, ge=0)
    #: weight of the Anscombe-domain chi^2 in counts (``counting_peak_weighted``; losses.anscombe_chi2)
    anscombe_weight: float = Field(1.0, ge=0)
    #: the counting-noise term: Anscombe-domain chi^2 or Poisson deviance (losses.poisson_deviance)
    counting_term: Literal["anscombe", "deviance"] = "anscombe"
    #: ``poisson_nll``: counts added to prediction and target before the logarithm (Anscombe's 3/8): finite
    #: gradient at a zero prediction, channels with < 1 expected count softened (losses.PoissonNLLLoss)
    deviance_offset_counts: float = Field(0.375, gt=0)


class MetricsSection(Section):
    tolerance_kev: float = Field(3.0, gt=0)
    window_fwhm: float = Field(1.5, gt=0)
    detect_threshold: float = Field(4.0, gt=0)
    #: a found peak within this many input FWHM of a larger one must beat, by 2 ln LR >= detect_threshold^2
    #: against the measured counts, the same spectrum with its area merged into that peak
    #: (postprocess.peaks_the_counts_support); null switches the test off
    merge_reach_fwhm: float | None = Field(1.0, gt=0)
    #: with a value, an isolated found peak must beat, by the same likelihood ratio, the same spectrum with its
    #: area spread as a smooth bump this many times its input FWHM wide (a line, not continuum shape); null:
    #: against its area removed (postprocess.peaks_the_counts_support)
    continuum_width_fwhm: float | None = Field(None, gt=1)
    #: a found peak within this many input FWHM of a step (Compton edge: below it; Lu-176 onset: above it) is
    #: the step's top, not a line (metrics.explained_intervals); 0 = only the peak search's largest scale
    step_reach_fwhm: float = Field(0.5, ge=0)


class BaselineSection(Section):
    """Classical deconvolution (``baseline.py``) and its tuning per count level (``tuning.py``,
    docs/results/gamma.md "Classical baselines")."""

    method: Literal["richardson_lucy", "gold"] = "richardson_lucy"
    iterations: int = Field(200, ge=1)
    boost_repetitions: int = Field(5, ge=1)
    boost: float = Field(1.2, gt=0)
    fwhm_662: float = Field(0.10, gt=0)
    power: float = Field(0.5, gt=0)
    #: Richardson-Lucy iterations swept on the validation scenes (one run, snapshots at these iterations)
    rl_iterations: list[int] = Field(default_factory=lambda: [5, 10, 20, 50, 100, 200, 500, 1000])
    #: boosted Gold: iterations per repetition x boost repetitions swept (snapshot after each repetition)
    gold_iterations: list[int] = Field(default_factory=lambda: [20, 100, 500])
    gold_repetitions: int = Field(5, ge=1)
    #: unexplained false peaks per spectrum allowed to a tuned baseline when no network sets the budget
    false_peak_budget: float = Field(0.5, ge=0)
    #: "sweep": the setting of highest recall within the false-peak budget; "discrepancy": Richardson-Lucy
    #: stops per spectrum at the first snapshot with Poisson chi^2 / channel <= 1 (Morozov)
    stop_rule: Literal["sweep", "discrepancy"] = "sweep"

    @field_validator("rl_iterations", "gold_iterations")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError(f"expected a non-empty list of positive iteration counts (got {v})")
        return sorted(set(v))


class EvaluateSection(Section):
    count_levels: list[float] = Field(default_factory=lambda: [1e4, 1e5, 1e6])
    spectra_per_level: int = Field(32, ge=1)
    #: detection thresholds (sigma) of the peak-search operating curve per count level, to compare methods that
    #: find different numbers of lines at equal recall (metrics.detection_tradeoff); empty: no curve
    detect_thresholds: list[float] = Field(default_factory=lambda: [3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0])
    fwhm_662: float = Field(0.10, gt=0)
    power: float = Field(0.5, gt=0)
    figures: bool = True
    html: bool = True
    #: Monte Carlo seed and photons per incident energy of the evaluation responses: another seed than
    #: ``simulate.response_seed`` (validated), and enough photons that the response's MC noise stays below
    #: the target's counting noise (checked and reported per level: docs/results/gamma.md "Data")
    response_seed: int = 424243
    response_photons: int = Field(20000, ge=10)
    #: the MC-noise check (a second evaluation response of seed response_seed + 1); off saves one build
    mc_check: bool = True
    #: generator seed of the held-out scenes (None: 900000007 + 7 x seed); validation scenes use + 1000003
    scene_seed: int | None = None
    #: input crystals of the result table, each at its CRYSTAL_RESOLUTION law
    crystals: list[Literal["LYSO", "NaI", "CsI", "LaBr3"]] = Field(default_factory=lambda: ["LYSO", "NaI", "CsI"])
    #: validation spectra per (crystal, level) on which the baselines are tuned (tuning.py); 0: no tuning
    validation_spectra: int = Field(8, ge=0)
    #: the robustness row: input simulated with an FWHM this much wider than the law the methods are given
    fwhm_law_offset: float = Field(0.2, gt=-1)
    #: spectra of each named set (doublet, Lu-176, robustness, negative control, unknown lines)
    spectra_per_set: int = Field(16, ge=1)


class PredictSection(Section):
    """``neurotrain predict`` for gamma (``predict.py``); each key is also a ``--opt key=value`` option."""

    crystal: Literal["LYSO", "NaI", "CsI", "LaBr3"] | None = None
    fwhm_662: float | None = None
    power: float | None = None
    conserve_counts: bool = True
    plot: bool = True
    #: a file whose detector (declared by the format, else measured from its peaks' FWHM or its channel count:
    #: detector_check.py) is not of the model's input class - an HPGe file for a scintillator model - is
    #: refused, run with a warning, or run without the check
    detector_check: Literal["refuse", "warn", "off"] = "refuse"
    #: a listed peak must have a positive net area, a finite FWHM and significance above this (sigma); others
    #: are physically impossible (a negative area is no emission line) and dropped, counted in the output
    min_peak_sigma: float = 0.0


class RefineSection(Section):
    """Data-consistency refinement of the network's spectrum (``postprocess.refine_to_counts``): Richardson-Lucy
    iterations against the measured counts, started from the network output instead of a flat spectrum.
    Evaluate reports it as the row ``network_refined`` when ``iterations`` > 0; predict applies it only with
    ``in_predict``, off by default: the refinement trusts the FWHM law and calibration, which real files get
    only approximately (on a real CsI spectrum an early CPU-trained model gained a false peak at 586 keV from
    it; the GPU-trained ``train.yaml`` model kept its lines and energies, so that config turns it on)."""

    iterations: int = Field(0, ge=0)
    in_predict: bool = False


class GammaConfig(Config):
    task: str = "gamma"
    model: ModelSection = ModelSection()
    simulate: SimulateSection = SimulateSection()
    loss: LossSection = LossSection()
    metrics: MetricsSection = MetricsSection()
    baseline: BaselineSection = BaselineSection()
    evaluate: EvaluateSection = EvaluateSection()
    predict: PredictSection = PredictSection()
    refine: RefineSection = RefineSection()
