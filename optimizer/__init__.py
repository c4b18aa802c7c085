"""costopt: measure quality and speed of compressed open models, and what they cost to serve."""

__version__ = "0.1.0"
