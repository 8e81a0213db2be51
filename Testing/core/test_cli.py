"""The command line end to end with the real model: segment, eval, models, cache, demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data import CT_IMAGE
from data import CT_LABELS

from sammed.cli import main
from sammed.io import read_volume


def test_segment_writes_a_mask_on_the_image_grid(tmp_path, capsys, ct_labels):
    ref = ct_labels.array_kji[106] == 5
    rows, cols = np.nonzero(ref)
    box = f"{cols.min()},{rows.min()},{cols.max()},{rows.max()}"
    out = tmp_path / "liver.seg.nrrd"
    code = main(
        [
            "segment",
            str(CT_IMAGE),
            "--slice",
            "106",
            "--box",
            box,
            "-o",
            str(out),
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--name",
            "liver",
        ]
    )
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    mask = read_volume(out).array_kji
    assert mask.shape == ct_labels.array_kji.shape
    assert mask[106].sum() == info["pixels"] and mask.sum() == info["pixels"]
    dice = 2 * (mask[106].astype(bool) & ref).sum() / (mask[106].astype(bool).sum() + ref.sum())
    assert dice > 0.95
    # the disk cache now holds that slice: a second run encodes nothing new
    assert main(["cache", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1


def test_demo_writes_mask_overlay_and_dice_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    for name in ("demo_mask.nii.gz", "demo_mask.seg.nrrd", "demo_overlay.png", "dice.md", "dice.json"):
        assert (out / name).stat().st_size > 0
    rows = {r["label"]: r["dice"] for r in json.loads((out / "dice.json").read_text())["rows"]}
    assert rows["liver"] >= 0.95 and rows["spleen"] >= 0.90
    assert min(rows["kidney_right"], rows["kidney_left"]) >= 0.88
    assert "| liver |" in capsys.readouterr().out


def test_eval_interactive_writes_json_and_markdown(tmp_path, capsys):
    code = main(
        [
            "eval",
            str(CT_IMAGE),
            str(CT_LABELS),
            "--labels",
            "liver,kidney_left",
            "--slices-per-label",
            "1",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "eval_interactive.json").read_text())
    assert set(result["per_label"]) == {"liver", "kidney_left"}
    assert result["per_label"]["liver"]["box"] > 0.9
    assert result["per_label"]["liver"]["box+clicks"] >= result["per_label"]["liver"]["box"]
    assert "| liver | 1 |" in (tmp_path / "eval_interactive.md").read_text()


def test_eval_refuses_absent_label(tmp_path, capsys):
    code = main(["eval", str(CT_IMAGE), str(CT_LABELS), "--labels", "brain", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 2
    assert "Unknown label 'brain'" in capsys.readouterr().err
    code = main(["eval", str(CT_IMAGE), str(CT_LABELS), "--labels", "250", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 2
    assert "not present" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["models"], ["models", "--json"]])
def test_models_lists_weights(capsys, args):
    assert main(args) == 0
    assert "litemedsam" in capsys.readouterr().out
