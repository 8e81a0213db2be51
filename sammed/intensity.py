"""Intensity presets: map a volume's grey values to 0..255 for the encoder, without changing the voxels.

One mapping per volume (a percentile clip is computed once over the whole volume, never per slice), so all
slices agree. Each mapping has a stable ``id`` that is part of the embedding cache key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUTO = "auto"  # the preset chosen from the volume (``default_preset``): CT window or MR percentile clip
# name -> (kind, parameters, description)
PRESETS: dict[str, tuple[str, tuple[float, float], str]] = {
    "ct_abdomen": ("window", (40.0, 400.0), "CT abdomen, level 40 / width 400 HU"),
    "ct_lung": ("window", (-600.0, 1500.0), "CT lung, level -600 / width 1500 HU"),
    "ct_bone": ("window", (400.0, 1800.0), "CT bone, level 400 / width 1800 HU"),
    "ct_brain": ("window", (40.0, 80.0), "CT brain, level 40 / width 80 HU"),
    "slidesam_ct": ("range", (-200.0, 400.0), "Slide-SAM CT clip [-200, 400]"),
    "slidesam_mr": ("range", (0.0, 600.0), "Slide-SAM MR clip [0, 600]"),
    "mr_percentile": ("percentile", (0.5, 99.5), "MR percentile clip 0.5-99.5 % of the volume"),
}
PRESET_CHOICES = (AUTO, *PRESETS)  # what a user can pick (the Slicer module's list is checked against it)


@dataclass(frozen=True)
class IntensityMapping:
    """Linear map of [low, high] to [0, 255] with clipping.

    Attributes:
        low, high: grey values mapped to 0 and 255.
        id: stable identifier, e.g. ``window:40:400``; part of the embedding cache key.
        description: human-readable text.
    """

    low: float
    high: float
    id: str
    description: str = ""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            raise ValueError(
                f"Intensity mapping '{self.id}' has grey range {self.low:g}..{self.high:g}; both ends must be finite "
                "numbers (a volume with NaN or infinite voxels has no such range)."
            )

    def apply(self, array: np.ndarray) -> np.ndarray:
        """uint8 array of the same shape; the input is not modified."""
        scale = 255.0 / max(self.high - self.low, 1e-6)
        out = (np.asarray(array, dtype=np.float32) - self.low) * scale
        return np.clip(out, 0.0, 255.0).round().astype(np.uint8)


def window_mapping(level: float, width: float) -> IntensityMapping:
    """Window ``level`` +- ``width`` / 2.

    Raises:
        ValueError: a level or width that is not a finite number, a width that is not positive.
    """
    if not (np.isfinite(level) and np.isfinite(width)):
        raise ValueError(f"--level/--width must be finite numbers; got level {level:g}, width {width:g}.")
    if width <= 0:
        raise ValueError(f"Window width must be positive; got {width}.")
    low, high = level - width / 2, level + width / 2
    return IntensityMapping(low, high, f"window:{level:g}:{width:g}", f"L{level:g}/W{width:g}")


def is_ct_like(volume_kji: np.ndarray) -> bool:
    """Heuristic: CT in HU has air near -1000."""
    lo = float(np.percentile(volume_kji[:: max(1, volume_kji.shape[0] // 16)], 1))
    return lo < -500.0


def default_preset(volume_kji: np.ndarray) -> str:
    """``ct_abdomen`` for a CT-like volume, else ``mr_percentile``."""
    return "ct_abdomen" if is_ct_like(volume_kji) else "mr_percentile"


def make_mapping(
    volume_kji: np.ndarray,
    preset: str | None = None,
    level: float | None = None,
    width: float | None = None,
) -> IntensityMapping:
    """The mapping for a preset name (None or ``"auto"``: chosen from the volume) or an explicit window/level.

    Raises:
        ValueError: unknown preset, only one of level/width, a level or width that is not a finite number, a
            percentile clip of a volume with NaN or infinite voxels.
    """
    if (level is None) != (width is None):
        raise ValueError("Give both --level and --width for an explicit window, or neither.")
    if level is not None and width is not None:
        return window_mapping(float(level), float(width))
    name = default_preset(volume_kji) if preset in (None, "", AUTO) else str(preset)
    if name not in PRESETS:
        raise ValueError(f"Unknown intensity preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    kind, (a, b), text = PRESETS[name]
    if kind == "window":
        m = window_mapping(a, b)
        return IntensityMapping(m.low, m.high, f"{name}:{m.id}", text)
    if kind == "range":
        return IntensityMapping(a, b, f"{name}:range:{a:g}:{b:g}", text)
    lo, hi = np.percentile(volume_kji, [a, b]).astype(float)
    if hi <= lo:
        hi = lo + 1.0
    return IntensityMapping(float(lo), float(hi), f"{name}:{a:g}:{b:g}", f"{text} ({lo:.4g}..{hi:.4g})")
