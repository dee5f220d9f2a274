"""smlm: DECODE-style single-molecule localisation microscopy (simulate, train, localise, score).

File formats: ``io.py`` re-exports ``tiff.py`` (TIFF movies), ``loc_table.py`` (canonical table),
``thunderstorm.py`` and ``picasso.py`` (their columns), ``loc_writer.py``, ``table_read.py`` (tables
written and read) and ``render.py`` (super-resolution images).
"""
