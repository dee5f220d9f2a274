"""Reading an HDF5 dataset store: :class:`H5Dataset`, a lazy, worker-safe map-style torch Dataset over
its rows, :func:`dataset_length`, and :func:`split_indices`, the seeded disjoint splits of its rows.
The store's layout is described in :mod:`neurotrain.io.hdf5`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from neurotrain.errors import ConfigError, DataError
from neurotrain.io.h5writer import first_line


def dataset_length(path: str | Path, key: str) -> int:
    """Number of rows (axis 0) of dataset ``key`` in the HDF5 file ``path``.

    Raises :class:`DataError` naming the file (and the key) when the file is missing,
    not HDF5, or has no such array dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({first_line(exc)})") from None
    with f:
        return int(row_dataset(f, path, key).shape[0])


def row_dataset(f: h5py.File, path: str | Path, key: str) -> h5py.Dataset:
    """Dataset ``key`` of the open file ``f`` with a row axis, or one ``DataError`` naming ``path`` and ``key``."""
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        have = sorted(k for k, v in f.items() if isinstance(v, h5py.Dataset))
        raise DataError(f"{path}: {key}: dataset not found (the file holds {have})")
    if obj.ndim == 0:
        raise DataError(f"{path}: {key}: expected a dataset with a row axis (got a scalar)")
    return obj


class H5Dataset(Dataset):
    """A map-style torch Dataset over rows of an HDF5 store.

    Args:
        path: the HDF5 file.
        keys: batch key -> HDF5 dataset name, or a list of dataset names (used as keys).
        indices: optional subset of rows (e.g. one part of :func:`split_indices`).

    The file is checked once at construction (exists, is HDF5, holds the keys with equal
    row counts) and then closed; each process opens its own handle lazily on first read
    (the owning pid is tracked), so the dataset is safe with forked or spawned DataLoader
    workers. Items are ``dict[str, Tensor]``. With ``__getitems__`` a DataLoader fetches a
    whole batch with one sorted fancy-index read per key.
    """

    def __init__(
        self,
        path: str | Path,
        keys: Mapping[str, str] | Sequence[str],
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        if isinstance(keys, Mapping):
            self.keys = dict(keys)
        else:
            self.keys = {str(k): str(k) for k in keys}
        if not self.keys:
            raise DataError(f"{self.path}: no dataset keys requested")
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self.n_file_rows, self.shapes, self.dtypes = self._inspect()
        if indices is None:
            self.indices: np.ndarray | None = None
        else:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_file_rows):
                raise DataError(
                    f"{self.path}: indices: expected values in [0, {self.n_file_rows}) "
                    f"(got min {idx.min()}, max {idx.max()})"
                )
            self.indices = idx

    def _inspect(self) -> tuple[int, dict[str, tuple[int, ...]], dict[str, np.dtype]]:
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({first_line(exc)})") from None
        try:
            lengths: dict[str, int] = {}
            shapes: dict[str, tuple[int, ...]] = {}
            dtypes: dict[str, np.dtype] = {}
            for bkey, name in self.keys.items():
                obj = row_dataset(f, self.path, name)
                lengths[name] = obj.shape[0]
                shapes[bkey] = tuple(obj.shape[1:])
                dtypes[bkey] = obj.dtype
        finally:
            f.close()
        if len(set(lengths.values())) > 1:
            raise DataError(f"{self.path}: datasets must have equal row counts (got {lengths})")
        return next(iter(lengths.values())), shapes, dtypes

    # ------------------------------------------------------------------ handle
    def _handle(self) -> h5py.File:
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            # a handle inherited through fork is never used (nor closed) by the child
            try:
                self._file = h5py.File(self.path, "r", rdcc_nbytes=16 << 20)
            except OSError as exc:
                raise DataError(f"{self.path}: not a readable HDF5 file ({first_line(exc)})") from None
            self._pid = pid
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            try:
                self._file.close()
            except Exception:  # noqa: BLE001  (closing at interpreter exit)
                pass
        self._file = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (at interpreter exit modules may be gone)
            pass

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.n_file_rows if self.indices is None else int(self.indices.size)

    def _row(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: index {i} out of range for {n} rows")
        i = i % n if n else i
        return int(self.indices[i]) if self.indices is not None else i

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self._row(int(i))
        f = self._handle()
        out: dict[str, torch.Tensor] = {}
        for bkey, name in self.keys.items():
            try:
                value = f[name][row]
            except (OSError, KeyError, ValueError) as exc:
                raise DataError(f"{self.path}: {name}: cannot read row {row} ({first_line(exc)})") from None
            out[bkey] = torch.as_tensor(np.asarray(value))
        return out

    def __getitems__(self, idx: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        rows = np.asarray([self._row(int(i)) for i in idx], dtype=np.int64)
        if rows.size == 0:
            return []
        uniq, inverse = np.unique(rows, return_inverse=True)
        f = self._handle()
        cols: dict[str, torch.Tensor] = {}
        for bkey, name in self.keys.items():
            ds = f[name]
            try:
                if int(uniq[-1] - uniq[0]) + 1 == uniq.size:  # contiguous: one slice read
                    block = ds[int(uniq[0]) : int(uniq[-1]) + 1]
                else:
                    block = ds[uniq]
            except (OSError, KeyError, ValueError) as exc:
                raise DataError(f"{self.path}: {name}: cannot read rows ({first_line(exc)})") from None
            cols[bkey] = torch.from_numpy(np.ascontiguousarray(np.asarray(block)[inverse]))
        return [{k: v[j] for k, v in cols.items()} for j in range(rows.size)]

    def __repr__(self) -> str:
        return f"H5Dataset({str(self.path)!r}, keys={self.keys}, rows={len(self)})"


# --------------------------------------------------------------------------- splits


def split_indices(n: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """Split ``range(n)`` into disjoint parts by ``fractions`` with a fixed-seed permutation.

    Every index lands in exactly one part; part sizes are ``floor(n * f)`` with the
    remainder given to the parts with the largest fractional parts (ties: earlier part
    first), so the sizes sum to ``n``. Each part is returned sorted (sequential reads are
    faster in HDF5; shuffling is the DataLoader's job). Same ``(n, fractions, seed)`` ->
    same split, on every platform (NumPy's PCG64 ``default_rng``).
    """
    if n < 0:
        raise ConfigError(f"split: n: expected >= 0 (got {n})")
    fr = np.asarray(list(fractions), dtype=np.float64)
    if fr.size == 0 or np.any(fr < 0) or abs(float(fr.sum()) - 1.0) > 1e-6:
        raise ConfigError(f"data.splits: fractions must be >= 0 and sum to 1 (got {list(fractions)})")
    exact = fr * n
    sizes = np.floor(exact).astype(np.int64)
    remainder = int(n - sizes.sum())
    if remainder > 0:
        order = np.argsort(-(exact - sizes), kind="stable")
        sizes[order[:remainder]] += 1
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return tuple(np.sort(perm[bounds[i] : bounds[i + 1]]) for i in range(fr.size))
