"""Adapters: one module (or package) per backend, each implementing ports from ``core.ports``."""
