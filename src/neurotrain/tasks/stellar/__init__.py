"""stellar: stellar labels (Teff, log g, [Fe/H]) and abundances ([X/Fe]) from LAMOST low-resolution spectra.

Rooms beyond the common ones:

- ``lines.py``       the spectral features that carry each label (wavelengths, air <-> vacuum)
- ``synth.py``       the generator's lines assembled: line widths, profiles at resolution R, absorption
- ``photosphere.py`` the one-layer photosphere behind the line strengths: electron pressure, Saha-Boltzmann
                     optical depths, ionisation saturation, van der Waals damping, curve of growth
- ``line_tables.py`` the generator's line tables: named lines and bands with solar strengths, the forest's
                     species, the solar blanketing it is calibrated to
- ``preprocess.py``  the seed's pipeline as batched tensor steps (mask, denoise, rest frame, log-lambda
                     resampling, per-arm continuum, final normalisation, S/N)
- ``prepare.py``     catalogues + FITS folders -> resumable prepared HDF5 (7:1:2 splits), drop summary
- ``stream.py``      batched, parallel FITS reading for the streaming ``predict`` (input order kept)
- ``table_csv.py``   whole-array CSV formatting of the labels table (pandas ``to_csv`` byte for byte)
- ``emulator.py``    Payne-format (``.npz`` MLP) spectrum emulators evaluated in torch
- ``baseline_cache.py`` the baselines' held-out predictions kept between ``evaluate`` runs of one folder
- ``crlb.py``        Cramér–Rao bounds of the labels from the generator's Jacobian
- ``analysis.py``    feature importance by wavelength and residual analysis (``neurotrain analyze``)
"""
