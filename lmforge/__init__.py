"""LMForge: train a large language model from YAML, on a cluster or on one machine."""

__version__ = "0.1.0"
