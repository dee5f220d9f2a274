"""The generator's line tables: which lines and bands it draws, how strong they are in the Sun, and the
solar numbers the forest is calibrated against (the line physics that uses them is in ``synth.py``).

* :data:`LINE_TABLE`: ~40 named atomic lines and molecular bands (laboratory air wavelengths, as in
  ``lines.FEATURES``), each with its species, excitation and ionisation energies (eV), the solar equivalent
  width of the Rowland table (Moore, Minnaert & Houtgast 1966; e.g. Ca II K 20 A, Mg b 5184 1.58 A, Na D2
  0.75 A, Ca II 8542 3.66 A, H alpha 4.0 A), the solar Voigt damping parameter and its gravity slope, and the
  atomic mass; bands carry an optical depth at a reference star and a width. :data:`BALMER_FLUX_SCALE` turns
  the Rowland (disk-centre) Balmer widths into flux widths.
* :data:`BAND_PARAMS`: the temperature and gravity slopes of the CH and TiO bands and their reference stars.
* :data:`ELEMENT_LABEL`: which [X/Fe] label scales each element's lines.
* The forest: :data:`FOREST_N` weak lines drawn once from :data:`FOREST_SEED` over :data:`FOREST_RANGE` with
  a density ~ lambda^-:data:`FOREST_DENSITY_POWER`, species by :data:`FOREST_SPECIES`; count, density and
  strengths are set so that the model's line blanketing at solar labels follows :data:`SOLAR_BLANKETING`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the Sun, reference star of the solar equivalent widths (Teff K, log g dex)
TEFF_SUN, LOGG_SUN = 5777.0, 4.44
#: the line forest: fixed count, seed and rest range (vacuum A), and its density ~ lambda^-FOREST_DENSITY_POWER.
#: Count, density and the log tau_sun ranges of ``FOREST_SPECIES`` are set so that the model's line blanketing
#: at solar labels follows ``SOLAR_BLANKETING`` (with 2400 lines ~ lambda^-3 it was 2-3x too weak: the Lick
#: Fe5270 index of a 5800 K dwarf came out 0.4 A against ~2.4 A in real LAMOST G dwarfs)
FOREST_SEED, FOREST_N, FOREST_RANGE = 20_240_517, 6000, (3600.0, 9400.0)
FOREST_DENSITY_POWER = 5.0
#: approximate line blanketing of the Sun as a star: the fraction of the continuum flux that all absorption lines
#: remove, averaged over each band (vacuum A). It falls from ~20 % in the blue to a few % in the near-IR (solar
#: flux atlas against its continuum, e.g. Neckel & Labs 1984, Sol. Phys. 90, 205; uncertain by ~30 % per band)
SOLAR_BLANKETING: tuple[tuple[float, float, float], ...] = (
    (4000.0, 4500.0, 0.20), (4500.0, 5000.0, 0.12), (5000.0, 5500.0, 0.10), (5500.0, 6000.0, 0.07),
    (6000.0, 6500.0, 0.05), (6500.0, 7500.0, 0.03), (7500.0, 8800.0, 0.025),
)
#: the Rowland equivalent widths of the Balmer lines (H alpha 4.0 A, H beta 3.7 A) are disk-centre intensities; a
#: star is seen in flux, where the limb, whose Balmer wings are weaker, lowers them. The generator's solar Balmer
#: EWs are the Rowland ones times this factor. 0.78 is the ratio measured at R 1800 through our preprocessing
#: (+-12 A, H alpha and H beta) between the 8 real LAMOST G0-G3 dwarfs (Pecaut & Mamajek 2013 Teff 5805 K) and
#: the generator at 5800 K (2.71 vs 3.47 A, 3.08 vs 4.06 A): the one constant set on the real sample (solar
#: analogues; with it the generator's +-12 A EWs at 5800 K are 2.92 and 3.53 A); the Teff slope is not fitted
#: (real F2-F5 / G0-G3 H alpha ratio 1.29, generator 1.39)
BALMER_FLUX_SCALE = 0.78

#: Milne-Eddington depth of a saturated metal line (``synth.absorption``): with the line-to-continuum opacity ratio
#: eta(x) = c / x^2 of a damping wing, the depth is D_max eta / (1 + eta) = D_max c / (x^2 + c) (Gray 2005, ch. 13:
#: the Milne-Eddington residual flux F/F_c = (a + 2/3 b / (1 + eta)) / (a + 2/3 b) for a source function a + b tau),
#: a Lorentzian in depth of HWHM sqrt(c) and EW pi D_max sqrt(c) ("square-root" part of the curve of growth). Its
#: central depth D_max is set by how far the source function falls at the top of the photosphere; the strongest
#: solar lines keep ~5-10 % of the continuum in their cores (Kurucz et al. 1984 flux atlas: Na D, Mg b 5183; the
#: Sun's 1 A Ca II K index ~0.09, White & Livingston 1981, ApJ 249, 798). (The old mapping used this Lorentzian,
#: HWHM ~W/4, as an optical depth: exp(-A) capped every damped line's core at exp(-4/pi) = 0.28 whatever its EW.)
LINE_DEPTH_MAX = 0.9
#: van der Waals damping (metal lines) away from the Sun: gamma_6 ~ N_H v^(3/5) ~ P_g T^(-0.7) (Unsoeld's C6 / r^6
#: interaction; Gray 2005, "The Observation and Analysis of Stellar Photospheres", eq. 11.35: log gamma_6 = 19.6 +
#: 0.4 log C6 + log P_g - 0.7 log T), and a = gamma / (4 pi dnu_D). The gas pressure at the continuum-forming
#: layer follows hydrostatic equilibrium P_g ~ g / kappa with the H- opacity kappa ~ P_e theta^2.5 10^(0.754 theta)
#: of ``synth.log_pe``: log P_g rises ~2 dex per unit theta (a K5 dwarf's photosphere is ~4x denser than the Sun's,
#: the reason the wings of Na D, Mg b and Ca I 4227 grow so fast from G to K dwarfs). Exponent of T:
VDW_T_POWER = -0.7
#: ionisation of each metal in the line-forming layer (Saha): first ionisation potential (eV) and log10(2 U+ / U0)
#: from the partition functions at 5000 K (Gray 2005, appendix D: Fe I/II 1.40/1.62, Mg 0.00/0.30, Ca 0.07/0.34,
#: Na 0.31/0.00, Ti 1.47/1.75 in log U). Metals are mostly ionised in the Sun, but Fe and Mg turn half neutral in
#: the cooler, lower-P_e layers of K dwarfs: their neutral lines then stop following the minority-species slope
#: (chi_ion - chi_exc - 0.754) while Na I and Ca I (5.1, 6.1 eV) stay minorities and keep growing
SAHA_ELEMENT: dict[str, tuple[float, float]] = {
    "FE": (7.90, 0.52), "MG": (7.65, 0.60), "CA": (6.11, 0.57), "NA": (5.14, -0.01), "TI": (6.83, 0.58),
}
#: temperature (K) of the Sun's line-forming layer, log tau_5000 ~ -1 (Holweger & Mueller 1974 model: ~5000 K);
#: the layer of another star is at theta_sun_layer + THETA_TEMPER (theta - theta_sun)
LAYER_T_SUN = 5000.0


@dataclass(frozen=True)
class LineStrength:
    """Strength parameters of one feature (names match ``lines.FEATURES`` where they exist).

    ``species``: ``neutral`` (minority neutral of an ionised metal), ``ion`` (majority ion), ``hydrogen``,
    ``CH``, ``CN``, ``MgH`` or ``TiO`` (bands). ``ew_sun_aa``: solar equivalent width (lines) or band optical
    depth at the head at the reference star (bands: the Sun for CH and CN, a 4400 K / log g 4.65 dwarf for MgH, a
    3800 K / log g 4.7 dwarf for TiO). ``log_a``: log10 Voigt damping
    parameter in the Sun; ``damp_logg``: d log a / d log g."""

    name: str
    air_aa: float
    element: str
    species: str
    chi_exc: float = 0.0
    chi_ion: float = 0.0
    ew_sun_aa: float = 0.1
    log_a: float = -1.8
    damp_logg: float = 0.4
    mass_amu: float = 55.85
    width_aa: float = 0.0


_H, _FE, _MG, _CA, _NA = 1.008, 55.85, 24.31, 40.08, 22.99
LINE_TABLE: tuple[LineStrength, ...] = (
    LineStrength("Fe I 3820", 3820.43, "FE", "neutral", 0.86, 7.90, 1.71, -1.7, 0.4, _FE),
    LineStrength("Fe I 3826", 3825.88, "FE", "neutral", 0.92, 7.90, 1.52, -1.7, 0.4, _FE),
    LineStrength("Mg I 3829", 3829.36, "MG", "neutral", 2.71, 7.65, 0.87, -1.5, 0.4, _MG),
    LineStrength("Mg I 3832", 3832.30, "MG", "neutral", 2.71, 7.65, 1.68, -1.5, 0.4, _MG),
    LineStrength("Mg I 3838", 3838.29, "MG", "neutral", 2.72, 7.65, 1.92, -1.5, 0.4, _MG),
    LineStrength("Fe I 3856", 3856.37, "FE", "neutral", 0.05, 7.90, 0.64, -1.7, 0.4, _FE),
    LineStrength("Fe I 3860", 3859.91, "FE", "neutral", 0.00, 7.90, 1.55, -1.7, 0.4, _FE),
    LineStrength("CN 3883", 3883.0, "C", "CN", 0, 0, 0.10, width_aa=40.0),
    LineStrength("Fe I 3886", 3886.28, "FE", "neutral", 0.05, 7.90, 0.92, -1.7, 0.4, _FE),
    LineStrength("Ca II K", 3933.66, "CA", "ion", 0.0, 0, 20.0, -2.0, 0.4, _CA),
    LineStrength("Ca II H", 3968.47, "CA", "ion", 0.0, 0, 15.0, -2.0, 0.4, _CA),
    LineStrength("H theta", 3797.90, "H", "hydrogen", 10.2, 13.6, 2.0, -2.0, 1 / 3, _H),
    LineStrength("H eta", 3835.38, "H", "hydrogen", 10.2, 13.6, 2.2, -2.0, 1 / 3, _H),
    LineStrength("H zeta", 3889.05, "H", "hydrogen", 10.2, 13.6, 2.5, -2.0, 1 / 3, _H),
    LineStrength("H epsilon", 3970.07, "H", "hydrogen", 10.2, 13.6, 2.8, -2.0, 1 / 3, _H),
    LineStrength("Fe I 4046", 4045.81, "FE", "neutral", 1.485, 7.90, 0.80, -1.7, 0.4, _FE),
    LineStrength("Sr II 4077", 4077.71, "FE", "ion", 0.0, 0, 0.43, -2.0, 0.4, 87.62),
    LineStrength("H delta", 4101.73, "H", "hydrogen", 10.2, 13.6, 3.0, -2.0, 1 / 3, _H),
    LineStrength("CN 4216", 4216.0, "C", "CN", 0, 0, 0.05, width_aa=40.0),
    LineStrength("Ca I 4227", 4226.73, "CA", "neutral", 0.0, 6.11, 1.48, -1.5, 0.6, _CA),
    LineStrength("Fe I 4260", 4260.47, "FE", "neutral", 2.40, 7.90, 0.60, -1.7, 0.4, _FE),
    LineStrength("Fe I 4272", 4271.76, "FE", "neutral", 1.49, 7.90, 0.76, -1.7, 0.4, _FE),
    LineStrength("CH G band", 4304.0, "C", "CH", 0, 0, 0.30, width_aa=30.0),
    LineStrength("Fe I 4325", 4325.76, "FE", "neutral", 1.61, 7.90, 0.79, -1.7, 0.4, _FE),
    LineStrength("H gamma", 4340.46, "H", "hydrogen", 10.2, 13.6, 3.0, -2.0, 1 / 3, _H),
    LineStrength("Fe I 4384", 4383.55, "FE", "neutral", 1.485, 7.90, 1.00, -1.7, 0.4, _FE),
    LineStrength("Fe I 4405", 4404.75, "FE", "neutral", 1.56, 7.90, 0.90, -1.7, 0.4, _FE),
    LineStrength("Ba II 4554", 4554.03, "FE", "ion", 0.0, 0, 0.16, -2.0, 0.4, 137.3),
    LineStrength("H beta", 4861.33, "H", "hydrogen", 10.2, 13.6, 3.7, -2.0, 1 / 3, _H),
    LineStrength("Fe II 4924", 4923.93, "FE", "ion", 2.89, 0, 0.17, -2.0, 0.4, _FE),
    LineStrength("TiO 4955", 4954.6, "TI", "TiO", 0, 0, 0.45, width_aa=80.0),
    LineStrength("Fe II 5018", 5018.44, "FE", "ion", 2.89, 0, 0.20, -2.0, 0.4, _FE),
    LineStrength("Mg b 5167", 5167.32, "MG", "neutral", 2.71, 7.65, 0.94, -1.5, 0.4, _MG),
    LineStrength("Mg b 5173", 5172.68, "MG", "neutral", 2.71, 7.65, 1.26, -1.5, 0.4, _MG),
    LineStrength("Mg b 5184", 5183.60, "MG", "neutral", 2.72, 7.65, 1.58, -1.5, 0.4, _MG),
    LineStrength("MgH 5211", 5211.0, "MG", "MgH", 0, 0, 0.30, width_aa=150.0),
    LineStrength("Fe I 5270", 5269.54, "FE", "neutral", 0.86, 7.90, 0.48, -1.7, 0.4, _FE),
    LineStrength("Fe I 5328", 5328.04, "FE", "neutral", 0.92, 7.90, 0.38, -1.7, 0.4, _FE),
    LineStrength("Fe I 5406", 5405.77, "FE", "neutral", 0.99, 7.90, 0.34, -1.7, 0.4, _FE),
    LineStrength("TiO 5448", 5448.0, "TI", "TiO", 0, 0, 0.50, width_aa=100.0),
    LineStrength("Mg I 5528", 5528.40, "MG", "neutral", 4.35, 7.65, 0.29, -1.5, 0.4, _MG),
    LineStrength("Na D2", 5889.95, "NA", "neutral", 0.0, 5.14, 0.75, -1.7, 0.6, _NA),
    LineStrength("Na D1", 5895.92, "NA", "neutral", 0.0, 5.14, 0.56, -1.7, 0.6, _NA),
    LineStrength("TiO 6159", 6158.0, "TI", "TiO", 0, 0, 0.60, width_aa=100.0),
    LineStrength("Ca I 6162", 6162.17, "CA", "neutral", 1.90, 6.11, 0.22, -1.7, 0.6, _CA),
    LineStrength("Fe I 6495", 6494.98, "FE", "neutral", 2.40, 7.90, 0.16, -1.7, 0.4, _FE),
    LineStrength("H alpha", 6562.79, "H", "hydrogen", 10.2, 13.6, 4.0, -2.0, 1 / 3, _H),
    LineStrength("TiO 7054", 7054.0, "TI", "TiO", 0, 0, 0.90, width_aa=120.0),
    LineStrength("K I 7699", 7698.96, "FE", "neutral", 0.0, 4.34, 0.18, -1.7, 0.6, 39.10),
    LineStrength("Na I 8183", 8183.26, "NA", "neutral", 2.10, 5.14, 0.23, -1.7, 0.6, _NA),
    LineStrength("Na I 8195", 8194.82, "NA", "neutral", 2.10, 5.14, 0.30, -1.7, 0.6, _NA),
    LineStrength("Ca II 8498", 8498.02, "CA", "ion", 1.69, 0, 1.46, -2.0, 0.2, _CA),
    LineStrength("Ca II 8542", 8542.09, "CA", "ion", 1.69, 0, 3.66, -2.0, 0.2, _CA),
    LineStrength("Ca II 8662", 8662.14, "CA", "ion", 1.69, 0, 2.60, -2.0, 0.2, _CA),
)
#: band-specific constants: d log tau / d theta, d log tau / d log g, reference (Teff, log g) of ``ew_sun_aa``, and
#: the theta where the band's strength peaks (None: no peak). CH peaks near 5000 K (theta 1.0): below that carbon
#: is locked into CO and the G band stops growing; the Lick G4300 index of dwarfs rises from F to early K and
#: flattens or falls in late K and M dwarfs (Worthey et al. 1994, ApJS 94, 687, G4300 fitting function). The
#: quadratic term is set so the slope is 0 at the peak: CH in a 4000 K dwarf is 0.3 dex weaker than at 5040 K.
#: CN violet (B-X, heads 3883 and 4216 A): weak in solar-type dwarfs (optical depth ~0.1 at the 3883 head in the
#: Sun, ~0.05 at 4216), growing to K dwarfs (dissociation energy 7.7 eV) and flattening below ~4400 K where N2 and
#: CO take the N and C; it is strong only in giants, whose mixed-in nitrogen the labels do not carry. MgH (A-X,
#: heads 5211 and 5621 A, the 4800-5211 A absorption under Mg b): the classic dwarf/giant discriminant of K stars,
#: weak in the Sun (optical depth ~0.01 at the head) and ~0.3 in a K5 V (dissociation energy 1.3 eV: it forms only
#: in cool, dense photospheres; log tau ~ +4.5 per unit theta and ~ g^(1/2), molecule formation ~ the hydrogen
#: partial pressure; Bell, Edvardsson & Gustafsson 1985, MNRAS 212, 497). The band optical depths are rounded
#: order-of-magnitude values; their absorption falls off blueward of the head with the band width as e-folding.
BAND_PARAMS: dict[str, tuple[float, float, float, float, float | None]] = {
    "CH": (1.5, 0.0, TEFF_SUN, LOGG_SUN, 1.0),
    "TiO": (8.0, 1.0 / 3.0, 3800.0, 4.7, None),
    "CN": (2.0, 0.0, TEFF_SUN, LOGG_SUN, 1.15),
    "MgH": (4.5, 0.5, 4400.0, 4.65, None),
}
#: bands whose head is at their red end, absorbing blueward of it (CN violet system, MgH A-X); TiO's alpha and
#: gamma systems degrade redward; CH is drawn as a box
BLUE_DEGRADED_BANDS = ("CN", "MgH")
#: extra [Fe/H] per band: CN forms from C and N, and N (no label of its own) follows iron, so log tau ~ [C/H] + [N/H]
BAND_EXTRA_FEH = {"CN": 1.0}
#: [X/Fe] label of each element (metals without their own label follow [Fe/H])
ELEMENT_LABEL = {"C": "C_FE", "MG": "MG_FE", "CA": "CA_FE", "NA": "NA_FE", "TI": "TI_FE"}
#: forest species: element, species, chi_ion (eV), fraction, chi_exc range (eV), log tau_sun range, mass
FOREST_SPECIES = (
    ("FE", "neutral", 7.90, 0.62, (0.0, 5.0), (-0.7, 2.3), _FE),
    ("FE", "ion", 16.2, 0.12, (2.5, 4.0), (-0.7, 1.5), _FE),
    ("TI", "neutral", 6.83, 0.12, (0.0, 2.2), (-0.9, 1.8), 47.87),
    ("CA", "neutral", 6.11, 0.08, (1.5, 3.0), (-0.9, 1.5), _CA),
    ("MG", "neutral", 7.65, 0.06, (4.0, 6.0), (-0.9, 1.5), _MG),
)

