"""SAMauto volume generators: sliding window (Slide-SAM), threshold propagation, SAP-Net; stop rules.

``propagate(segmenter, user_masks, axis, generator, config)`` fills one target's slices from the user's annotated
slices. torch is needed only by the ``sapnet`` generator and is imported when it runs.
"""

from .api import propagate
from .api import seeds_from_labelmap
from .refine import seed_from_box
from .registry import GENERATORS
from .run import PropagationConfig
from .run import PropagationResult
from .run import SliceRecord
from .stop import StopRules

__all__ = [
    "GENERATORS",
    "PropagationConfig",
    "PropagationResult",
    "SliceRecord",
    "StopRules",
    "propagate",
    "seed_from_box",
    "seeds_from_labelmap",
]
