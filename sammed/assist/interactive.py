"""Model-in-the-loop prompts for prompt-encoder training: clicks placed where the current model is wrong.

``clicks``: a user's clicks alone, Algorithm 1 of Mazurowski et al. 2023 (as ``evaluate.interactive`` simulates
them): the first click farthest from the background, each next one at the largest error region of the mask the
clicks so far give, positive on missed foreground, negative on false positives; ``box_clicks``: a jittered box, then
corrective clicks on the error of the box result, each decode fed the previous low-res logits as mask input (as the
composite protocol and the Slicer effect do). Every decode that places a click runs without gradients with the
encoder being trained (so the clicks follow its errors, as in iterative training of interactive segmentation,
Sofiiuk et al. 2022 "RITM"); only the final prompt is trained. The click functions are the evaluation's
(``evaluate.clicks``), so training and measuring use one user.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..evaluate.clicks import first_click
from ..evaluate.clicks import next_click
from ..prompts import Prompts

MODEL_IN_LOOP_KINDS = ("clicks", "box_clicks")
COMPOSITE_MAX_CLICKS = 5  # as evaluate.interactive.COMPOSITE_CLICKS


def click_count(kind: str, max_clicks: int, rng: np.random.Generator) -> int:
    """How many clicks one training prompt has: ``clicks`` 1 (probability 0.35) or 2..``max_clicks``;
    ``box_clicks`` 1..5 corrective clicks after the box."""
    if kind == "box_clicks":
        return int(rng.integers(1, COMPOSITE_MAX_CLICKS + 1))
    return 1 if rng.random() < 0.35 else int(rng.integers(2, max(max_clicks, 2) + 1))


def _decode(backend: Any, embedding: np.ndarray, prompts: Prompts, geometry: Any, encoder: Any) -> Any:
    with torch.no_grad():
        return backend.decode(embedding, prompts, geometry, prompt_encoder=encoder)


def click_prompt(
    backend: Any,
    encoder: Any,
    embedding: np.ndarray,
    geometry: Any,
    mask_hw: np.ndarray,
    kind: str,
    max_clicks: int,
    box_xyxy: np.ndarray | None,
    rng: np.random.Generator,
) -> Prompts:
    """One training prompt of ``kind`` on one slice (slice pixels; ``box_clicks`` prompts carry ``mask_input``).

    Args:
        backend: the SAM-family backend (its frozen decoder places the clicks).
        encoder: the prompt encoder being trained.
        embedding: the slice's CxHxW embedding.
        geometry: the slice's ``ModelInputGeometry``.
        mask_hw: the reference mask.
        kind: ``clicks`` or ``box_clicks``.
        max_clicks: most clicks of a ``clicks`` prompt.
        box_xyxy: the (jittered) box of ``box_clicks``.
        rng: the fit's random generator.
    """
    n = click_count(kind, max_clicks, rng)
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    mask_input = None
    if kind == "box_clicks":
        result = _decode(backend, embedding, Prompts.make(box_xyxy=box_xyxy), geometry, encoder)
    else:
        xy = first_click(mask_hw, rng)
        points, labels = [xy], [1]  # type: ignore[list-item]
        result = None
    while len(points) < n:
        if result is None:
            result = _decode(
                backend, embedding, Prompts.make(None, np.array(points), np.array(labels)), geometry, encoder
            )
        click = next_click(result.mask_hw, mask_hw, rng)
        if click is None:  # perfect already: the prompt keeps the clicks it has
            break
        points.append(click[0])
        labels.append(click[1])
        if kind == "box_clicks":
            mask_input = result.low_res_logits
            prompts = Prompts.make(box_xyxy, np.array(points), np.array(labels), mask_input=mask_input)
            result = _decode(backend, embedding, prompts, geometry, encoder) if len(points) < n else result
        else:
            result = None
    if not points:  # a box_clicks prompt whose box was already perfect: train the box itself
        return Prompts.make(box_xyxy=box_xyxy)
    return Prompts.make(box_xyxy, np.array(points), np.array(labels), mask_input=mask_input)
