"""xdrec: cross-domain sequential recommendation (SASRec per domain, transfer, per-segment evaluation)."""

__version__ = "0.1.0"
