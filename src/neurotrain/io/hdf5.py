"""HDF5 dataset store: a resumable chunked writer, a lazy worker-safe reader, seeded splits.

Layout of a store: one HDF5 file, one dataset per named array, all with the same number
of rows (axis 0 = sample). Datasets are chunked along the rows and compressed (gzip level
4 by default), so a reader can fetch single samples without decompressing the file.

The store lives in two modules, one job each, whose names are re-exported here
(``from neurotrain.io.hdf5 import H5Writer`` keeps working):

* ``h5writer.py``: :class:`H5Writer` (writes go to ``<path>.part``, whole chunks only, the
  count of complete rows in the ``n_complete_rows`` attribute, resumable after a crash,
  renamed onto ``path`` by a clean close), :func:`part_path`, ``ROWS_ATTR``.
* ``h5dataset.py``: :class:`H5Dataset` (map-style torch Dataset, one lazy handle per
  process, one sorted read per key and batch), :func:`dataset_length`, :func:`split_indices`.
"""

from __future__ import annotations

from neurotrain.io.h5dataset import H5Dataset, dataset_length, split_indices
from neurotrain.io.h5writer import ROWS_ATTR, H5Writer, part_path

__all__ = ["ROWS_ATTR", "H5Dataset", "H5Writer", "dataset_length", "part_path", "split_indices"]
