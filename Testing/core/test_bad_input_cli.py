"""Bad input on the command line (issue 17): outputs that would destroy an input, outputs checked before any work and
written together, label values, eval's inputs, cancel by SIGTERM.

Every case asserts the exit code, one line on stderr (no traceback), the input files byte-identical afterwards and
no output or temporary file left. The model is the analytic ``FakeBackend`` (these tests are about files, not
masks); the real model's command line is in test_cli.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat

import numpy as np
import pytest
import SimpleITK as sitk
from support import require

from sammed.backends.fake import FakeBackend
from sammed.cli import main
from sammed.cli import options
from sammed.io import read_volume


@pytest.fixture
def case(tmp_path, monkeypatch):
    """A small CT-like image, a seed label map on its grid, and the fake model behind every command."""
    arr = np.zeros((8, 24, 24), np.int16)
    arr[1:7, 6:16, 5:17] = 300
    img = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(img))
    seed = tmp_path / "seed.nii.gz"
    labels = np.zeros(arr.shape, np.uint8)
    labels[4, 6:16, 5:17] = 5
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(seed))
    monkeypatch.setattr(options, "make_backend", lambda args: FakeBackend())
    return tmp_path, img, seed


def snapshot(folder):
    """name -> bytes of every file under ``folder`` (hidden temporary files included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_refused(capsys, argv, message, code=2):
    """Run ``sammed argv``; assert the exit code and one stderr line holding ``message``."""
    got = main([*argv, "--device", "cpu", "--no-disk-cache"])
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code, err
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    return err[0]


def seg_args(img, out, *extra):
    return ["segment", str(img), "--slice", "4", "--box", "4,5,17,16", "-o", str(out), *extra]


# ---------------------------------------------------------------- 1. an output equal to an input


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (lambda d, img, seed: seg_args(img, img), "is an input"),
        (lambda d, img, seed: ["propagate", str(img), "--seed", str(seed), "-o", str(img)], "is an input"),
        (lambda d, img, seed: ["propagate", str(img), "--seed", str(seed), "-o", str(seed)], "is an input"),
        (
            lambda d, img, seed: [
                "propagate",
                str(img),
                "--seed",
                str(seed),
                "-o",
                str(d / "m.nii"),
                "--report",
                str(img),
            ],
            "report (--report)",
        ),
        (
            lambda d, img, seed: [
                *["propagate", str(img), "--seed", str(seed), "-o", str(d / "m.nii.gz")],
                *["--report", str(d / "report.json")],  # a link to the label map
            ],
            "given twice as an output",
        ),
        (lambda d, img, seed: ["assist", str(img), str(seed), "--label", "5", "-o", str(img)], "use one of .pt"),
        (lambda d, img, seed: ["assist", str(img), str(seed), "--label", "5", "-o", str(d / "link.pt")], "is an input"),
    ],
    ids=["segment", "propagate-o-image", "propagate-o-seed", "report-image", "report-is-o", "assist", "assist-link"],
)
def test_an_output_that_is_an_input_is_refused_before_any_work(case, capsys, argv, message):
    d, img, seed = case
    (d / "link.pt").symlink_to(img)
    (d / "report.json").symlink_to(d / "m.nii.gz")  # dangling until the label map is written
    before = snapshot(d)
    run_refused(capsys, argv(d, img, seed), message)
    assert snapshot(d) == before


def test_a_hard_link_to_the_input_is_the_input(case, capsys):
    d, img, _ = case
    os.link(img, d / "hard.nii.gz")
    before = snapshot(d)
    run_refused(capsys, seg_args(img, d / "hard.nii.gz"), "is an input")
    assert snapshot(d) == before


# ---------------------------------------------------------------- 3. outputs checked first, written together


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing/report.json", "does not exist"),
        ("ct.nii.gz/report.json", "is a file, not a folder"),
        ("sub.json", "it is a folder"),
        ("report.txt", "use one of .json"),
    ],
)
def test_a_bad_report_path_writes_no_label_map(case, capsys, target, message):
    d, img, seed = case
    (d / "sub.json").mkdir()
    (d / "sub.json" / "x").write_text("user file")
    before = snapshot(d)
    argv = ["propagate", str(img), "--seed", str(seed), "-o", str(d / "m.nii.gz"), "--report", str(d / target)]
    run_refused(capsys, argv, message)
    assert snapshot(d) == before


def test_a_failure_while_writing_leaves_no_output(case, capsys, monkeypatch):
    d, img, seed = case

    def broken(*args, **kwargs):
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr("sammed.io.save_labelmap", broken)
    before = snapshot(d)
    argv = ["propagate", str(img), "--seed", str(seed), "-o", str(d / "m.nii.gz"), "--report", str(d / "r.json")]
    run_refused(capsys, [*argv, "--json-progress"], "disk full")
    assert snapshot(d) == before


# ---------------------------------------------------------------- 4. file modes, .mhd


def test_a_replaced_output_keeps_its_mode_and_a_new_one_follows_the_umask(case, capsys):
    d, img, _ = case
    kept = d / "kept.nii.gz"
    kept.write_bytes(b"old")
    os.chmod(kept, 0o640)
    old_mask = os.umask(0o022)
    try:
        assert main([*seg_args(img, kept), "--device", "cpu", "--no-disk-cache"]) == 0
        assert main([*seg_args(img, d / "new.nrrd"), "--device", "cpu", "--no-disk-cache"]) == 0
    finally:
        os.umask(old_mask)
    capsys.readouterr()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and read_volume(kept).array_kji.any()
    assert stat.S_IMODE((d / "new.nrrd").stat().st_mode) == 0o644
    assert not [p for p in d.iterdir() if p.name.startswith(".sammed-")]


def test_mhd_is_refused_with_the_reason(case, capsys):
    d, img, _ = case
    before = snapshot(d)
    run_refused(capsys, seg_args(img, d / "m.mhd"), "use .mha")
    assert snapshot(d) == before


# ---------------------------------------------------------------- 8. assist's annotation on another grid


def test_assist_refuses_an_annotation_on_another_grid(case, capsys):
    d, img, seed = case
    other = sitk.ReadImage(str(seed))
    other.SetSpacing((1.0, 1.0, 2.5))  # same shape, other grid
    moved = d / "moved.nii.gz"
    sitk.WriteImage(other, str(moved))
    before = snapshot(d)
    run_refused(
        capsys, ["assist", str(img), str(moved), "--label", "5", "-o", str(d / "a.pt")], "not on the image grid"
    )
    assert snapshot(d) == before


# ---------------------------------------------------------------- 9, 10. label values and output paths


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label", "300"], None),
        (["--label", "70000"], "--label must be a label value from 1 to 65535"),
        (["--label", "-1"], "--label must be a label value"),
        (["--label", "0"], "0 is the background"),
    ],
)
def test_segment_label_values(case, capsys, extra, message):
    d, img, _ = case
    out = d / "m.nii.gz"
    if message is None:  # 300 is a valid label value: written as uint16
        assert main([*seg_args(img, out, *extra), "--device", "cpu", "--no-disk-cache"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert set(np.unique(read_volume(out).array_kji)) == {0, 300} and info["pixels"] > 0
        return
    before = snapshot(d)
    run_refused(capsys, seg_args(img, out, *extra), message)
    assert snapshot(d) == before


@pytest.mark.parametrize("extra", [["--out-label", "70000"], ["--out-label", "0"], ["--label", "-5"]])
def test_propagate_label_values(case, capsys, extra):
    d, img, seed = case
    before = snapshot(d)
    run_refused(capsys, ["propagate", str(img), "--seed", str(seed), "-o", str(d / "m.nii.gz"), *extra], "1 to 65535")
    assert snapshot(d) == before


@pytest.mark.parametrize(
    ("command", "target", "message"),
    [
        ("segment", "folder", "it is a folder"),
        ("segment", "ct.nii.gz/m.nii.gz", "is a file, not a folder"),
        ("segment", "m.png", "use one of .nii"),
        ("propagate", "m.png", "use one of .nii"),
        ("propagate", "folder", "it is a folder"),
        ("assist", "folder/a.txt", "use one of .pt"),
    ],
)
def test_output_paths_are_checked_before_the_image_is_read(case, capsys, command, target, message):
    d, img, seed = case
    (d / "folder").mkdir()
    out = d / target
    argv = {
        "segment": seg_args(img, out),
        "propagate": ["propagate", str(img), "--seed", str(seed), "-o", str(out)],
        "assist": ["assist", str(img), str(seed), "--label", "5", "-o", str(out)],
    }[command]
    before = snapshot(d)
    run_refused(capsys, argv, message)
    assert snapshot(d) == before


def test_an_unwritable_folder_is_refused(case, capsys, monkeypatch):
    d, img, _ = case
    (d / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("locked") else real_access(p, mode))
    before = snapshot(d)
    run_refused(capsys, seg_args(img, d / "locked" / "m.nii.gz"), "is not writable")
    assert snapshot(d) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder; the case above covers the check")
def test_a_read_only_folder_is_refused(case, capsys):
    d, img, _ = case
    (d / "ro").mkdir()
    os.chmod(d / "ro", 0o500)
    try:
        run_refused(capsys, seg_args(img, d / "ro" / "m.nii.gz"), "is not writable")
    finally:
        os.chmod(d / "ro", 0o700)


# ---------------------------------------------------------------- 11. eval's inputs


def eval_args(img, labels, out, *extra):
    return ["eval", str(img), str(labels), "--out", str(out), "--slices-per-label", "1", *extra]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ('["liver", "spleen"]', "not a JSON object"),
        ('{"5": {"voxels": 10}}', "label 5 has no name"),
        ('{"labels_present": {"5": {"colour": "red"}}}', "label 5 has no name"),
        ("not json", "Cannot read label names file"),
    ],
)
def test_eval_refuses_a_bad_label_names_file(case, capsys, names, message):
    d, img, seed = case
    (d / "names.json").write_text(names)
    before = snapshot(d)
    run_refused(capsys, eval_args(img, seed, d / "ev", "--label-names", str(d / "names.json")), message)
    assert snapshot(d) == before


def test_eval_refuses_an_empty_label_map_and_an_out_that_is_a_file(case, capsys):
    d, img, seed = case
    empty = d / "empty.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 24, 24), np.uint8)), str(empty))
    (d / "out.txt").write_text("user file")
    before = snapshot(d)
    run_refused(capsys, eval_args(img, empty, d / "ev"), "holds no labels")
    run_refused(capsys, eval_args(img, seed, d / "out.txt"), "is a file")
    assert snapshot(d) == before


def test_eval_with_names_writes_both_tables(case, capsys):
    d, img, seed = case
    (d / "names.json").write_text('{"5": "liver"}')
    argv = eval_args(img, seed, d / "ev", "--label-names", str(d / "names.json"), "--labels", "liver")
    assert main([*argv, "--device", "cpu", "--no-disk-cache"]) == 0
    assert "liver" in capsys.readouterr().out
    assert sorted(p.name for p in (d / "ev").iterdir()) == ["eval_interactive.json", "eval_interactive.md"]


# ---------------------------------------------------------------- 14, 16. SIGTERM, --name, final progress


def test_propagate_turns_sigterm_into_exit_3_and_writes_nothing(case, capsys, monkeypatch):
    d, img, seed = case
    from sammed.jobs import JsonLinesReporter

    def reporter_that_is_killed(self, fraction, message):
        os.kill(os.getpid(), signal.SIGTERM)  # the signal a job manager sends; the handler sets the cancel token

    monkeypatch.setattr(JsonLinesReporter, "__call__", reporter_that_is_killed)
    handler = signal.getsignal(signal.SIGTERM)
    before = snapshot(d)
    argv = ["propagate", str(img), "--seed", str(seed), "-o", str(d / "m.nii.gz"), "--report", str(d / "r.json")]
    line = run_refused(capsys, [*argv, "--json-progress"], "nothing was written", code=3)
    assert line.startswith("sammed propagate: cancelled")
    assert snapshot(d) == before
    assert signal.getsignal(signal.SIGTERM) == handler  # the command's handler is gone


def test_propagate_names_the_segment_and_ends_its_progress_at_one(case, capsys):
    slicerio = require("slicerio", "it is part of the test extras: run bash scripts/test.sh")
    d, img, seed = case
    out = d / "m.seg.nrrd"
    argv = ["propagate", str(img), "--seed", str(seed), "-o", str(out), "--name", "liver", "--json-progress"]
    assert main([*argv, "--device", "cpu", "--no-disk-cache"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    fractions = [m["progress"] for m in lines if "progress" in m]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert [s["name"] for s in slicerio.read_segmentation(str(out))["segments"]] == ["liver"]


def test_a_nan_box_is_one_plain_line(case, capsys):
    d, img, _ = case
    argv = ["segment", str(img), "--slice", "4", "--box", "nan,5,17,16", "-o", str(d / "m.nii.gz")]
    line = run_refused(capsys, argv, "--box")
    assert "np.float64" not in line


def test_the_demo_overlay_has_captions_and_a_legend():
    from sammed.demo import LEGEND
    from sammed.render import figure
    from sammed.render import tile

    panels = [np.zeros((40, 50, 3), np.uint8) for _ in range(4)]
    picture = figure(panels, [f"organ {n}, axial slice {n}: Dice 0.9" for n in range(4)], LEGEND, columns=2, scale=2)
    plain = tile([np.zeros((80, 100, 3), np.uint8)] * 4, columns=2)
    assert picture.shape[1] == plain.shape[1] and picture.shape[0] > plain.shape[0] + 40
    caption_rows = picture[4:24, 4:104]  # the first panel's caption band
    legend_rows = picture[-30:]
    assert caption_rows.max() > 150 and legend_rows.max() > 150  # text was drawn
    assert "White outline: the reference label" in LEGEND[1]


def test_the_documented_boxes_outline_an_organ_of_the_bundled_ct():
    """Issue 17, 15: every ``--slice N --box x0,y0,x1,y1`` in the README, docs and CLI help is the tight box of a
    label of the bundled CT on that slice (a box that outlines nothing teaches a new user nothing)."""
    import re
    from pathlib import Path

    from data import CT_LABELS

    from sammed.geometry import box_from_mask

    root = Path(__file__).resolve().parents[2]
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "sammed" / "cli").glob("*.py"))]
    found = {m for p in texts for m in re.findall(r"--slice (\d+) --box ([\d,]+)", p.read_text(encoding="utf-8"))}
    assert found, "no documented box found"
    labels = read_volume(CT_LABELS).array_kji
    for index, box in found:
        on_slice = labels[int(index)]
        tight = {tuple(int(v) for v in box_from_mask(on_slice == value)) for value in np.unique(on_slice) if value}
        assert tuple(int(v) for v in box.split(",")) in tight, (index, box)
