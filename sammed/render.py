"""PNG overlays of masks on slices (numpy + Pillow), for the demo, README pictures and reviews."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .geometry import slice_ijk_axes

COLORS = ((230, 80, 60), (60, 170, 230), (250, 200, 40), (120, 220, 100), (200, 100, 230), (240, 140, 40))


def overlay_rgb(
    image_u8_hw: np.ndarray, masks: list[np.ndarray], alpha: float = 0.45, reference: list[np.ndarray] | None = None
) -> np.ndarray:
    """HxWx3 uint8: the grey slice with each mask blended in its colour and (optional) reference outlines in white."""
    from scipy import ndimage

    rgb = np.repeat(np.asarray(image_u8_hw, dtype=np.float32)[:, :, None], 3, axis=2)
    for n, m in enumerate(masks):
        m = np.asarray(m, bool)
        color = np.array(COLORS[n % len(COLORS)], dtype=np.float32)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * color
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = color
    for r in reference or []:
        r = np.asarray(r, bool)
        rgb[r & ~ndimage.binary_erosion(r)] = 255.0
    return np.clip(rgb, 0, 255).astype(np.uint8)


def display_orientation(slice_hw: np.ndarray, axis: int, direction_lps: np.ndarray) -> np.ndarray:
    """Flip a slice (extract_slice layout) for radiological display: anterior/superior up, patient right on the left."""
    d = np.asarray(direction_lps, dtype=float).reshape(3, 3)
    out = slice_hw
    col_ax, row_ax = slice_ijk_axes(axis)  # the IJK axes that columns (x) and rows (y) run along
    # in LPS, +S is up: flip rows when they run towards inferior/posterior-to-anterior the wrong way
    row_dir, col_dir = d[:, row_ax], d[:, col_ax]
    up = np.argmax(np.abs(row_dir))
    if (up == 2 and row_dir[2] > 0) or (up == 1 and row_dir[1] < 0):
        out = out[::-1]
    side = np.argmax(np.abs(col_dir))
    if (side == 0 and col_dir[0] < 0) or (side == 1 and col_dir[1] > 0):
        out = out[:, ::-1]
    return out


def save_png(path: str | Path, rgb: np.ndarray, scale: int = 1) -> Path:
    from PIL import Image

    img = Image.fromarray(rgb)
    if scale != 1:
        img = img.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST)
    img.save(path)
    return Path(path)


def tile(images: list[np.ndarray], columns: int = 2, pad: int = 4) -> np.ndarray:
    """Arrange HxWx3 images in a grid (each padded to the largest)."""
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    rows = (len(images) + columns - 1) // columns
    out = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), dtype=np.uint8)
    for n, im in enumerate(images):
        r, c = divmod(n, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
    return out


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(lines: list[str], fits: Any) -> list[str]:
    """``lines`` broken at spaces so that ``fits(text)`` holds for each piece (a long word stays whole)."""
    out: list[str] = []
    for line in lines:
        current = ""
        for word in line.split():
            trial = f"{current} {word}".strip()
            if current and not fits(trial):
                out.append(current)
                trial = word
            current = trial
        out.append(current)
    return out


def text_band(
    width: int, lines: list[str], size: int = 14, color: tuple[int, int, int] = (235, 235, 235)
) -> np.ndarray:
    """A black band ``width`` pixels wide with ``lines`` of text, wrapped to the width (captions and legends)."""
    from PIL import Image
    from PIL import ImageDraw

    font = _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrap(lines, lambda text: measure.textlength(text, font=font) <= width - 12)
    band = Image.new("RGB", (width, (size + 6) * len(lines) + 6))
    draw = ImageDraw.Draw(band)
    for n, line in enumerate(lines):
        draw.text((6, 4 + n * (size + 6)), line, fill=color, font=font)
    return np.asarray(band)


def captioned(rgb: np.ndarray, caption: str, scale: int = 1) -> np.ndarray:
    """``rgb`` enlarged ``scale`` times (nearest) with ``caption`` in a band above it."""
    big = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    return np.concatenate([text_band(big.shape[1], [caption]), big], axis=0)


def figure(
    panels: list[np.ndarray], captions: list[str], legend: list[str], columns: int = 2, scale: int = 2
) -> np.ndarray:
    """Captioned panels in a grid with a legend band under it."""
    grid = tile([captioned(p, c, scale) for p, c in zip(panels, captions, strict=True)], columns=columns)
    return np.concatenate([grid, text_band(grid.shape[1], legend, size=13, color=(200, 200, 200))], axis=0)
