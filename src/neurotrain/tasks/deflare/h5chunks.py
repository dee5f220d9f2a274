"""Parallel gzip for HDF5 event columns, through HDF5's direct chunk I/O.

h5py compresses and decompresses chunks on one core, holding its lock; for a 100 ms
file of 2.8M events that alone takes longer than the network. Here the chunks are
(de)compressed by :mod:`zlib` in a thread pool (zlib releases the GIL) and moved with
``write_direct_chunk`` / ``read_direct_chunk``. The files are ordinary HDF5 datasets with
the standard ``shuffle`` + ``deflate`` (gzip) filters, byte-identical in meaning to what
h5py would write, and readable by any HDF5 reader.

HDF5 filter formats: deflate = a zlib stream (RFC 1950) of the chunk; shuffle = byte
``k`` of every element grouped together (HDF5 User's Guide, "Shuffle filter"); an edge
chunk is stored at full chunk size.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

H5Z_FILTER_DEFLATE = 1
H5Z_FILTER_SHUFFLE = 2

_POOL: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """A process-wide thread pool (one thread per CPU, at most 32)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(32, os.cpu_count() or 1)), thread_name_prefix="h5zlib")
    return _POOL


def shuffle_bytes(a: np.ndarray) -> bytes:
    s = a.dtype.itemsize
    raw = np.ascontiguousarray(a).view(np.uint8)
    if s == 1:
        return raw.tobytes()
    return raw.reshape(-1, s).T.tobytes()


def unshuffle_bytes(b: bytes, dtype: np.dtype, n: int) -> np.ndarray:
    s = dtype.itemsize
    raw = np.frombuffer(b, np.uint8)
    if s == 1:
        return raw.view(dtype)[:n]
    return np.ascontiguousarray(raw.reshape(s, -1).T).view(dtype).ravel()[:n]


def filters_of(d: h5py.Dataset) -> list[int]:
    plist = d.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


def direct_ok(d: h5py.Dataset) -> bool:
    """True when ``d`` is a chunked 1-D dataset filtered by (shuffle +) deflate only."""
    if d.chunks is None or d.ndim != 1:
        return False
    f = filters_of(d)
    return f in ([H5Z_FILTER_DEFLATE], [H5Z_FILTER_SHUFFLE, H5Z_FILTER_DEFLATE])


def _encode(a: np.ndarray, chunk: int, shuffle: bool, level: int) -> bytes:
    if a.shape[0] < chunk:
        a = np.concatenate([a, np.zeros(chunk - a.shape[0], a.dtype)])
    raw = shuffle_bytes(a) if shuffle else np.ascontiguousarray(a).tobytes()
    return zlib.compress(raw, level)


def write_rows(d: h5py.Dataset, start: int, a: np.ndarray, level: int) -> None:
    """Write ``a`` at row ``start`` (a multiple of the chunk size) of ``d``, compressing the
    chunks in parallel. ``d`` must already be resized to hold the rows."""
    chunk = d.chunks[0]
    if start % chunk:
        raise ValueError(f"direct chunk write must start on a chunk boundary (row {start}, chunk {chunk})")
    a = a.astype(d.dtype, copy=False)
    shuffle = H5Z_FILTER_SHUFFLE in filters_of(d)
    pieces = [a[i : i + chunk] for i in range(0, a.shape[0], chunk)]
    blobs = list(pool().map(lambda p: _encode(p, chunk, shuffle, level), pieces))
    for k, blob in enumerate(blobs):
        d.id.write_direct_chunk((start + k * chunk,), blob, 0)


def read_rows(d: h5py.Dataset, a: int, b: int) -> np.ndarray:
    """Rows ``[a, b)`` of ``d``, decompressing chunks in parallel when the filters allow
    (otherwise an ordinary h5py read)."""
    if b <= a:
        return np.zeros(0, d.dtype)
    if not direct_ok(d):
        return np.asarray(d[a:b])
    chunk = d.chunks[0]
    shuffle = H5Z_FILTER_SHUFFLE in filters_of(d)
    first, last = a // chunk, (b - 1) // chunk
    raw = []
    for c in range(first, last + 1):
        mask, blob = d.id.read_direct_chunk((c * chunk,))
        if mask:  # a filter was skipped for this chunk: let HDF5 handle it
            return np.asarray(d[a:b])
        raw.append(blob)

    def dec(blob: bytes) -> np.ndarray:
        data = zlib.decompress(blob)
        if shuffle:
            return unshuffle_bytes(data, d.dtype, chunk)
        return np.frombuffer(data, d.dtype)

    parts = list(pool().map(dec, raw))
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    off = first * chunk
    return out[a - off : b - off]
