"""The population prompt encoder's training protocols on the bundled example CT and MR (``sammed train-prompts``).

Every protocol trains ``population.train_population`` on some labels of some volumes and evaluates the interactive
protocol (``evaluate.interactive``: Algorithm 1 clicks, box, box + corrective clicks) with the original and the
learned encoder side by side, on slices never trained on:

- ``ship``: train on every label of the CT and the MR; evaluate on the labels of the README's interactive tables
  (``EVALUATED``; their evaluation slices and 2 slices either side are left out of training for those labels).
  This is the file the package ships.
- ``label-split``: train on half of the CT's labels (every other one by size), evaluate on the 8 largest of the other
  half: labels never seen in training.
- ``ct-to-mr`` / ``mr-to-ct``: train on one volume, evaluate on the other (leave one volume out).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..demo import example_paths
from ..evaluate.interactive import pick_slices
from ..evaluate.interactive import run_interactive_protocol
from ..evaluate.labels import load_label_names
from ..evaluate.labels import resolve_labels
from ..io import read_volume
from ..jobs import ProgressFn
from ..jobs import StopFn
from ..segmenter import Segmenter
from .config import AssistConfig
from .population import Source
from .population import train_population

PROTOCOLS = ("ship", "label-split", "ct-to-mr", "mr-to-ct")
EVAL_LABELS = 8  # label-split: the 8 largest held-out labels are evaluated (sammed eval's default count)
EVALUATED = {  # the labels of the README's interactive tables (large organs the reference labels get right)
    "ct": "spleen,kidney_right,kidney_left,gallbladder,liver,stomach,aorta,urinary_bladder",
    "mr": "spleen,kidney_right,kidney_left,liver,stomach,aorta",
}
MARGIN = 2  # slices either side of an evaluation slice also left out of training
MIN_VOXELS = 500  # labels smaller than this in the volume are not trained on


def population_config(steps: int = 300, seed: int = 0) -> AssistConfig:
    """The population fit's settings: clicks (weight 2), box + corrective clicks (1), box alone (1); 4 slices of
    2 prompts per step; the box copy at a fifth of the points copy's rate (LiteMedSAM's box prompt is good)."""
    return AssistConfig(
        steps=steps,
        lr=0.02,
        prompts_per_slice=2,
        slices_per_step=4,
        max_points=10,
        kinds={"clicks": 2.0, "box_clicks": 1.0, "box": 1.0},
        box_lr_scale=0.2,
        seed=seed,
    )


@dataclass
class Case:
    """One labelled example volume: its segmenter, labels, names and evaluation slices."""

    name: str
    segmenter: Segmenter
    labels_kji: np.ndarray
    names: dict[int, str]
    eval_labels: dict[str, int]
    eval_slices: dict[int, list[int]]

    def trainable(self) -> list[int]:
        values, counts = np.unique(self.labels_kji[self.labels_kji > 0], return_counts=True)
        order = sorted(zip(counts, values, strict=True), reverse=True)
        return [int(v) for c, v in order if c >= MIN_VOXELS]

    def source(self, values: list[int], exclude_eval: bool = True) -> Source:
        exclude = {}
        if exclude_eval:
            for value, slices in self.eval_slices.items():
                exclude[value] = {i + d for i in slices for d in range(-MARGIN, MARGIN + 1)}
        return Source(
            self.name, self.segmenter, self.labels_kji, {v: self.names.get(v, str(v)) for v in values}, exclude
        )


def load_case(name: str, backend: Any, cache: Any, eval_slices: int) -> Case:
    """The bundled ``ct`` or ``mr`` with the labels of ``EVALUATED`` to evaluate."""
    paths = example_paths()
    volume, label_path = read_volume(paths[name]), paths[f"{name}_labels"]
    labels_kji = read_volume(label_path).array_kji.astype(np.int32)
    names = load_label_names(label_path, label_path.parent / f"{name}_labels.json")
    chosen = resolve_labels(EVALUATED[name], labels_kji, names)
    slices = {v: pick_slices(labels_kji == v, 0, eval_slices) for v in chosen.values()}
    return Case(name, Segmenter(volume, backend, cache=cache), labels_kji, names, chosen, slices)


def plan(protocol: str, ct: Case, mr: Case) -> tuple[list[Source], list[Case]]:
    """(training sources, cases to evaluate) of a protocol; ``label-split`` changes ``ct``'s evaluation labels.

    Raises:
        ValueError: an unknown protocol.
    """
    if protocol == "ship":
        return [ct.source(ct.trainable()), mr.source(mr.trainable())], [ct, mr]
    if protocol == "ct-to-mr":
        return [ct.source(ct.trainable(), exclude_eval=False)], [mr]
    if protocol == "mr-to-ct":
        return [mr.source(mr.trainable(), exclude_eval=False)], [ct]
    if protocol == "label-split":
        ranked = ct.trainable()
        train, held = ranked[0::2], ranked[1::2]
        count = max((len(s) for s in ct.eval_slices.values()), default=5)
        ct.eval_labels = {ct.names.get(v, str(v)): v for v in held[:EVAL_LABELS]}
        ct.eval_slices = {v: pick_slices(ct.labels_kji == v, 0, count) for v in ct.eval_labels.values()}
        return [ct.source(train)], [ct]
    raise ValueError(f"Unknown protocol '{protocol}'; use one of {', '.join(PROTOCOLS)}.")


def evaluate(case: Case, module: Any, seed: int, progress: ProgressFn | None = None) -> dict:
    """The interactive protocol on ``case``'s evaluation slices with the original and the learned encoder."""
    out = {}
    for name, encoder in (("original", None), ("learned", module)):
        case.segmenter.base_prompt_encoder = encoder
        result = _protocol_on_slices(case, seed, progress)
        out[name] = {"mean": result["mean"], "per_label": result["per_label"], "per_slice": result["per_slice"]}
    case.segmenter.base_prompt_encoder = None
    return out


def _protocol_on_slices(case: Case, seed: int, progress: ProgressFn | None) -> dict:
    """``run_interactive_protocol`` restricted to the case's evaluation slices (its own pick, the same slices)."""
    count = max((len(s) for s in case.eval_slices.values()), default=5)
    return run_interactive_protocol(case.segmenter, case.labels_kji, case.eval_labels, 0, count, seed, progress)


def run_protocol(
    protocol: str,
    backend: Any,
    cache: Any,
    config: AssistConfig,
    eval_slices: int = 5,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[Any, dict]:
    """Train and evaluate one protocol; returns (the ``LearnedPromptEncoder``, its report for the card)."""
    ct, mr = load_case("ct", backend, cache, eval_slices), load_case("mr", backend, cache, eval_slices)
    sources, cases = plan(protocol, ct, mr)
    learned, summary = train_population(sources, config, progress=progress, should_stop=should_stop)
    report: dict[str, Any] = {"protocol": protocol}
    report["training"] = {k: v for k, v in summary.items() if k != "records"}
    report["training"]["slices"] = slices_by_label(summary["records"])
    report["training"]["labels"] = {s.name: sorted(s.values.values()) for s in sources}
    report["evaluation"] = {}
    for case in cases:
        result = evaluate(case, learned.module, config.seed, progress)
        report["evaluation"][case.name] = {
            "labels": list(case.eval_labels),
            "slices": {case.names.get(v, str(v)): s for v, s in case.eval_slices.items()},
            **result,
        }
    return learned, report


def slices_by_label(records: list[dict]) -> dict:
    """{source: {label: {"train": [slices], "validation": [slices]}}} of the training records."""
    out: dict[str, dict] = {}
    for r in records:
        entry = out.setdefault(r["source"], {}).setdefault(r["label"], {"train": [], "validation": []})
        entry["validation" if r["validation"] else "train"].append(int(r["slice"]))
    return out


def card(report: dict, learned: Any, command: str, file_sha256: str, data: dict[str, str]) -> dict:
    """The JSON card of a shipped encoder: what it was trained on, how, and how well it does."""
    return {
        "name": "SAMMed population prompt encoder (clicks) for LiteMedSAM",
        "file_sha256": file_sha256,
        "base_model": {"id": learned.model_id, "sha256": learned.sha256},
        "command": command,
        "seed": learned.config.get("seed"),
        "config": learned.config,
        "box_alone": report["training"]["box_alone"],
        "data": data,
        "training": report["training"],
        "metrics": {
            name: {k: v["mean"] for k, v in ev.items() if k in ("original", "learned")}
            for name, ev in report["evaluation"].items()
        },
        "evaluation": {
            name: {"labels": ev["labels"], "slices": ev["slices"], "axis": 0}
            for name, ev in report["evaluation"].items()
        },
        "licences": {
            "base model": "LiteMedSAM (bowang-lab/MedSAM, LiteMedSAM branch), Apache-2.0",
            "training data": "TotalSegmentator example CT and MR with their labels (wasserth/TotalSegmentator "
            "tests/reference_files), Apache-2.0",
            "this file": "Apache-2.0",
        },
        "sammed": __version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "created": time.strftime("%Y-%m-%d"),
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=float)
