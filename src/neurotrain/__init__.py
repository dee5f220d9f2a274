"""neurotrain: train, evaluate and deploy deep networks on scientific measurements."""

__version__ = "0.1.0"
