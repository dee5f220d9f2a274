"""Event files: HDF5 in the seed's layout and in the DSEC layout, read in chunks, written atomically.

The room holds three modules, one job each, and re-exports their names here (``from
neurotrain.tasks.deflare.io import read_events`` keeps working):

* ``events.py``: events in memory (:class:`EventChunk`, :class:`EventFileInfo`, the polarity rule,
  the sensor-size check, fixed-duration :class:`Segment` s via :func:`iter_segments`).
* ``h5read.py``: reading -- :func:`inspect_events`, :func:`iter_chunks`, :func:`read_events`,
  :func:`list_h5`, :func:`read_column`; the seed and DSEC layouts are described there.
* ``h5write.py``: writing -- :class:`EventWriter`, :func:`write_events`, :func:`sort_events_file`.

Prophesee EVT 2.0/3.0 raw files are read by ``evt.py``.
"""

from __future__ import annotations

from neurotrain.tasks.deflare.events import (
    EVENT_KEYS,
    MAX_SENSOR_SIDE,
    SEED_DTYPES,
    EventChunk,
    EventFileInfo,
    Segment,
    check_sensor_size,
    iter_segments,
    polarity_to_sign,
    segment_grid_start,
)
from neurotrain.tasks.deflare.h5read import (
    DEFAULT_CHUNK_EVENTS,
    inspect_events,
    iter_chunks,
    list_h5,
    open_h5,
    read_column,
    read_events,
)
from neurotrain.tasks.deflare.h5write import EventWriter, sort_events_file, write_events

__all__ = [
    "DEFAULT_CHUNK_EVENTS", "EVENT_KEYS", "MAX_SENSOR_SIDE", "SEED_DTYPES", "EventChunk", "EventFileInfo", "EventWriter",
    "Segment", "check_sensor_size", "inspect_events", "iter_chunks", "iter_segments", "list_h5", "open_h5",
    "polarity_to_sign", "read_column", "read_events", "segment_grid_start", "sort_events_file", "write_events",
]
