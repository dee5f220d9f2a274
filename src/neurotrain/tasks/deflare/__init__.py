"""deflare: event-camera flare removal, event by event.

Rooms beyond the common ones: ``scene.py`` (light source, glare, streaks, ghosts rendered per
time step), ``sensor.py`` (v2e DVS pixel with cause attribution, leak/shot noise, hot
pixels), ``voxel.py`` (events <-> voxels and the per-event cell lookup), ``evt.py``
(Prophesee EVT 2.0/3.0 readers), ``h5chunks.py`` (parallel gzip for HDF5 columns),
``dataset.py`` (the seed's paired-folder dataset), ``evaluate.py`` (per-event evaluation
with filters tuned on validation). ``io.py`` re-exports the event-file modules: ``events.py``
(events in memory, segments), ``h5read.py`` (HDF5 seed/DSEC readers), ``h5write.py`` (atomic writer).
"""
