"""The population prompt encoder (issue 15): SAMassist's fit, once, on many organs of labelled volumes.

LiteMedSAM was fine-tuned with boxes only, so clicks give it nothing zero-shot. SAMassist learns a case's prompt
encoder from a few drawn slices (``train.fit_prompt_encoder``); the same fit, run once on every label with enough
pixels on the slices of labelled volumes (frozen image encoder and decoder, embeddings from the cache), teaches the
prompt encoder what clicks mean before a case's first slice is drawn. One training loop, two uses: the data are
``train.TrainItem``s either way, and ``AssistConfig.slices_per_step`` draws a few of the thousands of slices per
step instead of all of them.

Prompt kinds (``AssistConfig.kinds``): ``clicks`` (1 to 10 clicks of Algorithm 1 of Mazurowski et al. 2023, each
placed on the largest error of the mask the clicks before it give; ``interactive.py``), ``box_clicks`` (a jittered
box, then corrective clicks on the error of the box result, with the previous logits as mask input), ``box``
(jittered box alone, which must not get worse). After training, a box alone is routed to whichever of the learned
box copy and the model's own encoder gives the higher mean Dice on validation slices (training labels, slices not
trained on): ``RoutedPromptEncoder.route_box_alone_to``.

Deviation from the SAMMed paper: the paper's SAMassist is per case only; the population fit is ours (issue 15),
with model-in-the-loop click placement (as RITM's iterative training, Sofiiuk et al. 2022) instead of the paper's
random points, because the user it must serve clicks on errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np
import torch

from .. import geometry
from ..evaluate.metrics import dice
from ..jobs import ProgressFn
from ..jobs import StopFn
from ..jobs import check_stop
from ..prompts import Prompts
from ..segmenter import Segmenter
from .config import AssistConfig
from .train import LearnedPromptEncoder
from .train import TrainItem
from .train import check_backend
from .train import frozen
from .train import new_fit
from .train import train_item
from .train import train_loop

POPULATION = "population"  # the volume digest of a population encoder (it belongs to no one volume)


@dataclass
class Source:
    """One labelled volume of the training data.

    Attributes:
        name: short name (``ct``, ``mr``) for the card.
        segmenter: a ``Segmenter`` on the image (its cache gives the embeddings).
        labels_kji: the reference label map on the image grid.
        values: {label value: name} of the labels to train on.
        exclude: {label value: slice indices} never trained on (the evaluation's slices and their neighbours).
        axis: the slice axis.
    """

    name: str
    segmenter: Segmenter
    labels_kji: np.ndarray
    values: dict[int, str]
    exclude: dict[int, set[int]] = field(default_factory=dict)
    axis: int = 0


def slices_of(source: Source, min_pixels: int) -> list[tuple[int, int]]:
    """(label value, slice index) of every label slice with at least ``min_pixels`` pixels, minus the excluded."""
    out = []
    for value in sorted(source.values):
        area = (source.labels_kji == value).sum(axis=tuple(a for a in range(3) if a != source.axis))
        excluded = source.exclude.get(value, set())
        out += [(value, int(i)) for i in np.nonzero(area >= min_pixels)[0] if int(i) not in excluded]
    return out


def collect(
    sources: list[Source],
    cfg: AssistConfig,
    device: torch.device,
    min_pixels: int = 64,
    validation_fraction: float = 0.15,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[list[TrainItem], list[TrainItem], list[dict]]:
    """(training items, validation items, records) of every source; a seeded ``validation_fraction`` of the
    (label, slice) pairs is kept apart to choose the box route. Embeddings are encoded once (cached)."""
    rng = np.random.default_rng(cfg.seed + 7919)
    train: list[TrainItem] = []
    validation: list[TrainItem] = []
    records: list[dict] = []
    for source in sources:
        pairs = slices_of(source, min_pixels)
        held = rng.random(len(pairs)) < validation_fraction
        geom = source.segmenter.input_geometry(source.axis)
        for n, ((value, index), is_validation) in enumerate(zip(pairs, held, strict=True)):
            check_stop(should_stop)
            mask = geometry.extract_slice(source.labels_kji, source.axis, index) == value
            if mask.all() or source.segmenter.slice_is_empty(source.axis, index):
                continue
            emb = source.segmenter.embedding(source.axis, index)
            item = train_item(source.segmenter.backend, emb, mask, geom, cfg, device)
            (validation if is_validation else train).append(item)
            records.append(
                {
                    "source": source.name,
                    "label": source.values[value],
                    "slice": index,
                    "validation": bool(is_validation),
                }
            )
            if progress and n % 20 == 0:
                progress(0.0, f"{source.name}: slice {n + 1} of {len(pairs)}")
    if not train:
        raise ValueError("No labelled slice is large enough to train on; give larger labels or lower min_pixels.")
    return train, validation, records


def box_dice(backend: Any, items: list[TrainItem], encoder: Any, cfg: AssistConfig) -> float:
    """Mean Dice of a jittered box (seeded) on ``items`` decoded with ``encoder`` (None: the model's own)."""
    rng = np.random.default_rng(cfg.seed + 104729)
    scores = []
    with torch.no_grad():
        for item in items:
            box = item.sampler.jittered_box(rng)
            result = backend.decode(item.array, Prompts.make(box_xyxy=box), item.geometry, prompt_encoder=encoder)
            scores.append(dice(result.mask_hw, item.sampler.mask))
    return float(np.mean(scores)) if scores else float("nan")


def train_population(
    sources: list[Source],
    config: AssistConfig,
    min_pixels: int = 64,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[LearnedPromptEncoder, dict]:
    """Learn the population prompt encoder on ``sources``; returns it and a summary (data, box route, timing).

    Raises:
        ValueError: no source, a backend without a prompt encoder, no slice to train on.
        jobs.Cancelled: ``should_stop()`` answered True.
    """
    if not sources:
        raise ValueError("Give at least one labelled volume to train on.")
    config.check()
    backend: Any = sources[0].segmenter.backend
    check_backend(backend)
    device = torch.device(config.device) if config.device else backend.device
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    t0 = time.perf_counter()
    train, validation, records = collect(
        sources, config, device, min_pixels, progress=progress, should_stop=should_stop
    )
    t1 = time.perf_counter()
    fit = new_fit(backend, train, config, device)
    history = train_loop(fit, config, rng, progress, should_stop)
    module = frozen(fit.module)
    original, learned_box = box_dice(backend, validation, None, config), box_dice(backend, validation, module, config)
    route = "original" if original >= learned_box else "learned"
    module.route_box_alone_to(backend.model.prompt_encoder if route == "original" else None)
    summary = {
        "sources": [{"name": s.name, "labels": sorted(s.values.values()), "axis": s.axis} for s in sources],
        "train_slices": len(train),
        "validation_slices": len(validation),
        "records": records,
        "box_alone": {"route": route, "validation_dice_original": original, "validation_dice_learned": learned_box},
        "seconds_data": round(t1 - t0, 1),
        "seconds_training": round(time.perf_counter() - t1, 1),
    }
    learned = LearnedPromptEncoder(
        module=module.to(backend.device),
        model_id=backend.model_id,
        sha256=backend.weights_sha256,
        volume_digest=POPULATION,
        target="clicks",
        axis=sources[0].axis,
        slices=[],
        preprocessing_id=sources[0].segmenter.preprocessing_id,
        config=config.as_dict(),
        history=history,
        seconds=float(time.perf_counter() - t1),
    )
    return learned, summary
