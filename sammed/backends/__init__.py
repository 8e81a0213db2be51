"""Model backends: one class per model family with ``encode`` and ``decode``.

``sammed.backends.base`` and ``sammed.backends.fake`` are numpy only. ``sammed.backends.sam_family`` imports torch.
"""

from .base import Backend
from .base import DecodeResult
from .base import ModelInputGeometry
from .base import model_input_geometry

__all__ = ["Backend", "DecodeResult", "ModelInputGeometry", "model_input_geometry"]
