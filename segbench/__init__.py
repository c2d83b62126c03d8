"""segbench: normalization layers for segmentation networks, compared on equal terms."""

__version__ = "0.1.0"
