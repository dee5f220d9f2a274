"""smlm: DECODE-style single-molecule localisation microscopy (simulate, train, localise, score)."""
