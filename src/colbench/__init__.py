"""colbench: ColBERT late-interaction retrieval on ModernBERT, as a reproducible DVC + papermill study."""

__version__ = "0.1.0"
