"""stellar: stellar labels (Teff, log g, [Fe/H]) and abundances ([X/Fe]) from LAMOST low-resolution spectra.

Rooms beyond the common ones:

- ``lines.py``       the spectral features that carry each label (wavelengths, air <-> vacuum)
- ``preprocess.py``  the seed's pipeline as batched tensor steps (mask, denoise, rest frame, log-lambda
                     resampling, per-arm continuum, final normalisation, S/N)
- ``prepare.py``     catalogues + FITS folders -> resumable prepared HDF5 (7:1:2 splits), drop summary
- ``emulator.py``    Payne-format (``.npz`` MLP) spectrum emulators evaluated in torch
- ``crlb.py``        Cramér–Rao bounds of the labels from the generator's Jacobian
- ``analysis.py``    feature importance by wavelength and residual analysis (``neurotrain analyze``)
"""
