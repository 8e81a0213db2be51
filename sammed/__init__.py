"""SAMMed core: Segment-Anything-family segmentation of CT/MR volumes.

This package stays light on import: numpy, scipy and SimpleITK only. torch and the model libraries are
imported inside ``sammed.backends``, ``sammed.assist`` and ``sammed.propagate.sapnet`` on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
