"""SAMauto volume generators: sliding window (Slide-SAM), threshold propagation, SAP-Net; stop rules.

``propagate(segmenter, user_masks, axis, generator, config)`` fills one target's slices from the user's annotated
slices. torch is needed only by the ``sapnet`` generator and is imported when it runs.
"""

from .api import GENERATORS
from .api import PropagationConfig
from .api import PropagationResult
from .api import SliceRecord
from .api import propagate
from .stop import StopRules

__all__ = ["GENERATORS", "PropagationConfig", "PropagationResult", "SliceRecord", "StopRules", "propagate"]
