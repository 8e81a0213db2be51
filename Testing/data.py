"""The example data every test uses: the bundled TotalSegmentator CT and MR in Testing/Data (no ../shared needed)."""

from __future__ import annotations

from sammed.demo import example_paths
from sammed.geometry import largest_slice

_PATHS = example_paths()
CT_IMAGE = _PATHS["ct"]
CT_LABELS = _PATHS["ct_labels"]
MR_IMAGE = _PATHS["mr"]
MR_LABELS = _PATHS["mr_labels"]
CT_LABEL_IDS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5}
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

__all__ = ["CT_IMAGE", "CT_LABELS", "CT_LABEL_IDS", "LITEMEDSAM_SHA256", "MR_IMAGE", "MR_LABELS", "largest_slice"]
