"""The shipped population prompt encoder (issue 15): checked before use (SHA256, base model), a clear error for a
damaged or foreign file, clicks that work on held-out slices of the bundled CT, and the choice in the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from data import CT_LABEL_IDS

from sammed import geometry
from sammed import prompt_encoders
from sammed.assist import recipes
from sammed.assist.train import RoutedPromptEncoder
from sammed.assist.train import new_routed
from sammed.evaluate.interactive import simulate_clicks
from sammed.models import file_sha256
from sammed.segmenter import Segmenter

pytestmark = pytest.mark.model
SHIPPED = prompt_encoders.SHIPPED["litemedsam"]
HELD_OUT = ("liver", "spleen", "kidney_right")  # evaluated in the card: their evaluation slices were not trained on


def test_the_shipped_file_is_checked_and_its_card_describes_it(litemedsam):
    assert file_sha256(SHIPPED.path) == SHIPPED.sha256
    card = json.loads(SHIPPED.card.read_text(encoding="utf-8"))
    assert card["file_sha256"] == SHIPPED.sha256
    assert card["base_model"] == {"id": "litemedsam", "sha256": litemedsam.weights_sha256}
    assert card["seed"] is not None and card["command"].startswith("sammed train-prompts")
    assert "Apache-2.0" in card["licences"]["training data"] and "Apache-2.0" in card["licences"]["base model"]
    assert card["box_alone"]["route"] in ("original", "learned")
    module = prompt_encoders.resolve(litemedsam, "learned")
    assert isinstance(module, RoutedPromptEncoder)
    assert prompt_encoders.resolve(litemedsam, "learned") is module, "loaded once per backend"
    assert prompt_encoders.resolve(litemedsam, "original") is None


def test_a_damaged_or_foreign_file_gives_a_clear_error(litemedsam, tmp_path):
    damaged = tmp_path / "damaged.pt"
    data = bytearray(SHIPPED.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its SHA256"):
        prompt_encoders.load_file(damaged, litemedsam, SHIPPED.sha256)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(SHIPPED.path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="Cannot read"):
        prompt_encoders.resolve(litemedsam, str(truncated))
    foreign = tmp_path / "foreign.pt"
    payload = torch.load(SHIPPED.path, weights_only=True)
    payload["base_model_sha256"] = "0" * 64
    torch.save(payload, foreign)
    with pytest.raises(ValueError, match="learned with base model"):
        prompt_encoders.resolve(litemedsam, str(foreign))
    with pytest.raises(ValueError, match="original, learned or a prompt-encoder file"):
        prompt_encoders.check_choice("clever")


def test_one_click_with_the_learned_encoder_beats_the_original_on_held_out_slices(
    ct_volume, ct_labels, litemedsam, shared_cache
):
    segmenter = Segmenter(ct_volume, litemedsam, cache=shared_cache)
    gains = []
    for name in HELD_OUT:
        mask = ct_labels.array_kji == CT_LABEL_IDS[name]
        for index in recipes.pick_slices(mask, 0, 5)[:2]:
            ref = geometry.extract_slice(mask, 0, index)
            scores = {}
            for choice in ("original", "learned"):
                segmenter.base_prompt_encoder = prompt_encoders.resolve(litemedsam, choice)
                scores[choice] = simulate_clicks(segmenter, 0, index, ref, 1, np.random.default_rng(index))[1]["dice"]
            gains.append(scores["learned"] - scores["original"])
    print("one-click gains", np.round(gains, 3))
    assert np.mean(gains) >= 0.3


def test_a_case_fit_starts_from_the_learned_encoder(litemedsam):
    shipped = prompt_encoders.resolve(litemedsam, "learned")
    start = new_routed(litemedsam, shipped)
    for (name, a), b in zip(start.state_dict().items(), shipped.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert start.original is shipped.original


def test_the_cli_compares_encoders_and_refuses_a_bad_choice(tmp_path, capsys):
    from data import CT_IMAGE
    from data import CT_LABELS

    from sammed.cli.main import main

    shutil.copy(CT_LABELS, tmp_path / "labels.nii.gz")
    args = ["eval", str(CT_IMAGE), str(tmp_path / "labels.nii.gz"), "--labels", "1", "--slices-per-label", "1"]
    assert main([*args, "--prompt-encoder", "original,learned", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval_interactive.json").read_text())
    means = {k: v["mean"]["click_1"] for k, v in result["prompt_encoders"].items()}
    assert means["learned"] > means["original"] + 0.1, means
    assert "click_1 original | click_1 learned" in capsys.readouterr().out
    assert main([*args, "--prompt-encoder", "clever", "--out", str(tmp_path / "bad")]) == 2
    assert "original, learned or a prompt-encoder file" in capsys.readouterr().err
