"""scail_lab: a research framework for SCAIL-2 style character animation on the Wan 2.1 video DiT."""

__version__ = "0.1.0"
