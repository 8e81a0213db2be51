"""Settings of a SAMassist fit (no torch here: the CLI and the Slicer side build them before anything heavy loads)."""

from __future__ import annotations

from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field

SAMPLING_SCHEMES = ("uniform", "center", "boundary", "mixed")
PROMPT_KINDS = ("points", "box", "composite", "clicks", "box_clicks")


@dataclass
class AssistConfig:
    """Settings of one SAMassist fit.

    Attributes:
        steps: optimisation steps; each step decodes ``prompts_per_slice`` prompts on every annotated slice.
        lr: Adam learning rate.
        prompts_per_slice: prompts sampled per slice per step (decoded as one batch on that slice's embedding).
        n_pt: N_pt of the paper: positive points per prompt drawn from [1, N_pt), negative from [0, N_pt). Used
            for composite prompts, and for point prompts when ``max_points`` is 0.
        max_points: point prompts (no box) have 1 point with probability ``p_single``, otherwise 2..max_points
            points (uniform), the first positive and each later one positive or negative with probability 1/2 (as
            a user's corrective clicks); 0 = the paper's rule with ``n_pt``.
        p_single: probability of a single positive point among point prompts (when ``max_points`` > 0).
        d_in: box jitter, largest inward move of a side (slice pixels).
        d_out: box jitter, largest outward move of a side (slice pixels).
        sampling: point scheme inside the mask: ``uniform``, ``center``, ``boundary`` or ``mixed`` (one of the
            three drawn per prompt).
        kinds: prompt kinds to train and their sampling weights, e.g. ``{"points": 2, "box": 1, "composite": 1}``;
            ``clicks`` (a user's clicks, each placed on the error of the mask the clicks before it give) and
            ``box_clicks`` (a box, then corrective clicks with the previous logits as mask input) decode with the
            encoder being trained to place their clicks (``interactive.py``); ``max_points`` (or 10) bounds
            ``clicks``.
        box_lr_scale: the box copy's learning rate is ``lr * box_lr_scale`` (LiteMedSAM was trained with boxes:
            its box prompt needs small changes only, large ones cost Dice on slices unlike the annotated ones).
        box_prox: proximal penalty ``box_prox * sum((w - w0)^2)`` on the box copy's distance to the original
            weights w0 (0 = off).
        slices_per_step: slices drawn (without replacement) for each step; 0 = every slice (a per-case fit); the
            population fit draws a few of its thousands.
        time_budget_s: stop after the step that passes this many seconds (None: run all steps). Results with a
            budget depend on the machine's speed; without one they are deterministic for a seed.
        seed: seeds numpy and torch sampling.
        device: torch device for training (the backend's device when None).
    """

    steps: int = 12
    lr: float = 0.05
    prompts_per_slice: int = 2
    n_pt: int = 3
    max_points: int = 0
    p_single: float = 0.3
    d_in: float = 2.0
    d_out: float = 5.0
    sampling: str = "mixed"
    kinds: dict = field(default_factory=lambda: {"points": 2.0, "box": 1.0, "composite": 1.0})
    box_lr_scale: float = 0.05
    box_prox: float = 0.0
    slices_per_step: int = 0
    time_budget_s: float | None = None
    seed: int = 0
    device: str | None = None

    def check(self) -> None:
        """Raises ValueError for settings that cannot work."""
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps}).")
        if not (self.lr > 0):
            raise ValueError(f"The learning rate must be positive (got {self.lr}).")
        if self.prompts_per_slice < 1:
            raise ValueError(f"prompts_per_slice must be at least 1 (got {self.prompts_per_slice}).")
        if self.n_pt < 2:
            raise ValueError(f"n_pt (N_pt) must be at least 2, points are drawn from [1, N_pt) (got {self.n_pt}).")
        if self.max_points < 0 or not (0 <= self.p_single <= 1):
            raise ValueError("max_points must be >= 0 and p_single in [0, 1].")
        if self.slices_per_step < 0:
            raise ValueError(f"slices_per_step must be 0 (all) or more (got {self.slices_per_step}).")
        if self.box_lr_scale < 0 or self.box_prox < 0:
            raise ValueError("box_lr_scale and box_prox must not be negative.")
        if self.d_in < 0 or self.d_out < 0:
            raise ValueError("Box jitter d_in and d_out must not be negative.")
        if self.sampling not in SAMPLING_SCHEMES:
            raise ValueError(f"Unknown point sampling '{self.sampling}'; use one of {SAMPLING_SCHEMES}.")
        bad = [k for k in self.kinds if k not in PROMPT_KINDS]
        if bad or not any(float(w) > 0 for w in self.kinds.values()):
            raise ValueError(f"kinds must give positive weights to some of {PROMPT_KINDS} (got {self.kinds}).")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError("The time budget must be positive seconds (or None).")

    def as_dict(self) -> dict:
        """JSON-able copy (stored in SAMassist files and evaluation results)."""
        d = asdict(self)
        d["kinds"] = {k: float(v) for k, v in self.kinds.items()}
        return d
