"""SAMassist: learning on a real case helps, files round-trip, cancel, bad input, and the SAM code path."""

from __future__ import annotations

import numpy as np
import pytest

from sammed import assist
from sammed.assist.sampling import SliceSampler
from sammed.evaluate.assist import choose_training_slices
from sammed.evaluate.assist import evaluate_slice
from sammed.geometry import extract_slice
from sammed.jobs import Cancelled
from sammed.segmenter import Segmenter

KIDNEY = 2  # kidney_right: LiteMedSAM with one click gives almost nothing zero-shot
TRAIN = (80, 88)
HELD_OUT = (76, 84, 92, 96)
FAST = dict(steps=10, prompts_per_slice=2, seed=0)


@pytest.fixture(scope="module")
def ct_segmenter(ct_volume, litemedsam, shared_cache):
    return Segmenter(ct_volume, litemedsam, cache=shared_cache)


@pytest.fixture(scope="module")
def kidney_learned(ct_segmenter, ct_labels):
    masks = assist.annotations_from_labels(ct_labels.array_kji, KIDNEY, TRAIN)
    return assist.fit_prompt_encoder(ct_segmenter, masks, target="kidney_right", config=assist.AssistConfig(**FAST))


@pytest.mark.model
@pytest.mark.slow
def test_learning_improves_one_click_on_held_out_slices(ct_segmenter, ct_labels, kidney_learned):
    assert kidney_learned.slices == list(TRAIN)
    assert kidney_learned.steps_done == FAST["steps"]
    assert kidney_learned.history[-1] < kidney_learned.history[0]
    zero, learned = [], []
    try:
        ct_segmenter.prompt_encoder = kidney_learned.module
        for s in HELD_OUT:
            ref = extract_slice(ct_labels.array_kji, 0, s) == KIDNEY
            zero.append(evaluate_slice(ct_segmenter, 0, s, ref, False, 0, KIDNEY, clicks=(1,), composite=False))
            learned.append(evaluate_slice(ct_segmenter, 0, s, ref, True, 0, KIDNEY, clicks=(1,), composite=False))
    finally:
        assist.detach(ct_segmenter)
    gain = np.mean([r["click1"] for r in learned]) - np.mean([r["click1"] for r in zero])
    assert gain > 0.15, (zero, learned)


@pytest.mark.model
def test_save_load_round_trip_gives_identical_masks(ct_volume, litemedsam, shared_cache, kidney_learned, tmp_path):
    path = assist.default_path(tmp_path, ct_volume.digest, "kidney_right", litemedsam.model_id)
    assist.save_learned(kidney_learned, path)
    meta = assist.read_metadata(path)
    assert meta["format_version"] == assist.FORMAT_VERSION
    assert meta["base_model_id"] == "litemedsam" and meta["base_model_sha256"] == litemedsam.weights_sha256
    assert meta["target"] == "kidney_right" and meta["slices"] == list(TRAIN)
    assert meta["config"]["steps"] == FAST["steps"]

    a = Segmenter(ct_volume, litemedsam, cache=shared_cache)
    assist.attach(a, kidney_learned)
    b = Segmenter(ct_volume, litemedsam, cache=shared_cache)
    loaded = assist.load_for(b, "kidney_right", tmp_path)
    assert loaded is not None and b.prompt_encoder is loaded.module
    pts, lab = np.array([[60.0, 50.0], [40.0, 30.0]]), np.array([1, 0])
    ra = a.segment(0, HELD_OUT[0], points_xy=pts, point_labels=lab)
    rb = b.segment(0, HELD_OUT[0], points_xy=pts, point_labels=lab)
    np.testing.assert_array_equal(ra.mask_hw, rb.mask_hw)
    np.testing.assert_array_equal(ra.logits_hw, rb.logits_hw)
    # falling back to the original encoder gives the zero-shot result
    c = Segmenter(ct_volume, litemedsam, cache=shared_cache)
    r0 = c.segment(0, HELD_OUT[0], points_xy=pts, point_labels=lab)
    b.use_learned = False
    np.testing.assert_array_equal(b.segment(0, HELD_OUT[0], points_xy=pts, point_labels=lab).logits_hw, r0.logits_hw)
    assert not np.array_equal(r0.logits_hw, ra.logits_hw)
    assert assist.load_for(c, "liver", tmp_path) is None and c.prompt_encoder is None


@pytest.mark.model
def test_same_seed_same_result_and_cancel_within_one_step(ct_segmenter, ct_labels, tmp_path):
    masks = assist.annotations_from_labels(ct_labels.array_kji, KIDNEY, TRAIN[:1])
    cfg = dict(steps=2, prompts_per_slice=1, seed=3)
    one = assist.fit_prompt_encoder(ct_segmenter, masks, config=assist.AssistConfig(**cfg))
    two = assist.fit_prompt_encoder(ct_segmenter, masks, config=assist.AssistConfig(**cfg))
    assert one.history == two.history
    for k, v in one.module.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), two.module.state_dict()[k].numpy())

    steps_seen = []

    def progress(fraction, message):
        if message.startswith("step"):
            steps_seen.append(message)

    def stop_after_first_step():
        return len(steps_seen) >= 1

    out = tmp_path / "cancelled.pt"
    with pytest.raises(Cancelled):
        assist.fit_and_save(
            ct_segmenter,
            masks,
            out,
            config=assist.AssistConfig(steps=50, prompts_per_slice=1),
            progress=progress,
            should_stop=stop_after_first_step,
        )
    assert len(steps_seen) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.model
def test_bad_input_gives_clear_errors(ct_segmenter, ct_labels, ct_volume, fake_backend, kidney_learned, tmp_path):
    with pytest.raises(ValueError, match="No annotated slice"):
        assist.fit_prompt_encoder(ct_segmenter, {})
    shape = extract_slice(ct_labels.array_kji, 0, 80).shape
    with pytest.raises(ValueError, match="is empty"):
        assist.fit_prompt_encoder(ct_segmenter, {80: np.zeros(shape, bool)})
    with pytest.raises(ValueError, match="does not match the volume"):
        assist.fit_prompt_encoder(ct_segmenter, {80: np.ones((10, 10), bool)})
    with pytest.raises(ValueError, match="out of range|outside|range"):
        assist.fit_prompt_encoder(ct_segmenter, {500: np.ones(shape, bool)})
    with pytest.raises(ValueError, match="does not occur"):
        assist.annotations_from_labels(ct_labels.array_kji, 250)
    with pytest.raises(ValueError, match="SAM-family"):
        assist.fit_prompt_encoder(Segmenter(ct_volume, fake_backend), {80: np.ones(shape, bool)})
    with pytest.raises(ValueError, match="steps"):
        assist.AssistConfig(steps=0).check()
    # a file learned with another base model is refused
    path = assist.save_learned(kidney_learned, tmp_path / "k.pt")
    other = type(ct_segmenter.backend).__new__(type(ct_segmenter.backend))
    other.__dict__.update(ct_segmenter.backend.__dict__)
    other.model_id, other.weights_sha256 = "sam_vit_b", "0" * 64
    with pytest.raises(ValueError, match="base model 'litemedsam'"):
        assist.load_learned(path, other)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="Cannot read SAMassist file"):
        assist.load_learned(tmp_path / "junk.pt", ct_segmenter.backend)


def test_cli_rejects_annotation_of_another_grid(tmp_path, capsys):
    from sammed.cli import main
    from sammed.io import Volume
    from sammed.io import write_labelmap

    image = Volume(np.random.default_rng(0).normal(size=(4, 32, 32)).astype(np.float32))
    ann = Volume(np.zeros((4, 16, 16), np.uint8))
    write_labelmap(tmp_path / "img.nii.gz", image.array_kji, image, {})
    write_labelmap(tmp_path / "ann.nii.gz", ann.array_kji, ann, {})
    code = main(["assist", str(tmp_path / "img.nii.gz"), str(tmp_path / "ann.nii.gz"), "--device", "cpu"])
    assert code == 2
    assert "annotation must be on the image grid" in capsys.readouterr().err


def test_training_slices_follow_the_paper_rule():
    rng = np.random.default_rng(0)
    fg = list(range(40, 71))
    picks = [choose_training_slices(fg, 2, rng) for _ in range(200)]
    assert all(len(set(p)) == 2 and set(p) <= set(fg) for p in picks)
    flat = np.concatenate(picks)
    assert abs(np.median(flat) - 55) <= 2  # centred on the median foreground slice
    with pytest.raises(ValueError, match="at least 3"):
        choose_training_slices([1, 2], 2, rng)


@pytest.mark.slow
def test_sam_vit_b_code_path_random_init(tmp_path):
    """SAM ViT-B by the same code, with a RANDOMLY INITIALISED model and synthetic cached embeddings (cheap)."""
    from sammed.cache import EmbeddingCache
    from sammed.io import Volume
    from sammed.models import load_backend

    backend = load_backend("sam_vit_b", device="cpu", random_init=True)
    assert backend.model_id == "sam_vit_b-random-init"
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(3, 48, 40)).astype(np.float32))
    seg = Segmenter(volume, backend, cache=EmbeddingCache())
    for s in range(3):  # no 1024 px ViT-B encoding in a unit test: put embeddings in the cache
        seg.cache.put(seg.key(0, s), rng.normal(size=backend.embedding_shape).astype(np.float32))
    mask = np.zeros((48, 40), bool)
    mask[10:30, 12:28] = True
    cfg = assist.AssistConfig(steps=2, prompts_per_slice=2, kinds={"points": 1.0, "box": 1.0}, seed=1)
    learned = assist.fit_prompt_encoder(seg, {1: mask}, target="blob", config=cfg)
    assert learned.steps_done == 2 and np.isfinite(learned.history).all()
    path = assist.save_learned(learned, tmp_path / "sam.pt")
    loaded = assist.load_learned(path, backend)
    assist.attach(seg, loaded)
    res = seg.segment(0, 2, points_xy=np.array([[20.0, 20.0]]))
    assert res.mask_hw.shape == (48, 40)
    seg2 = Segmenter(volume, backend, cache=seg.cache)
    assist.attach(seg2, learned)
    np.testing.assert_array_equal(seg2.segment(0, 2, points_xy=np.array([[20.0, 20.0]])).logits_hw, res.logits_hw)
    # the composite user (1 box, then up to 5 corrective clicks, best Dice) runs on the learned encoder
    scores = evaluate_slice(seg, 0, 2, mask, True, 0, 1, clicks=(1, 3), composite=True)
    assert set(scores) == {"click1", "click3", "box", "composite"}
    assert scores["composite"] >= scores["box"]


def test_point_counts_cover_many_clicks_and_keep_single_clicks():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:28] = True
    rng = np.random.default_rng(0)
    cfg = assist.AssistConfig(max_points=10, p_single=0.3)
    sampler = SliceSampler(mask, cfg)
    counts = [sampler.point_counts("points", rng) for _ in range(2000)]
    totals = np.array([p + n for p, n in counts])
    assert all(p >= 1 for p, _ in counts)  # the first click is always positive
    assert totals.max() == 10 and totals.min() == 1
    assert abs(np.mean(totals == 1) - 0.3) < 0.05  # one positive click stays common
    assert any(n >= 3 for _, n in counts)  # negative corrective clicks appear
    paper = SliceSampler(mask, assist.AssistConfig())  # default: the paper's rule, N_pt = 3
    counts = [paper.point_counts("points", rng) for _ in range(500)]
    assert {p for p, _ in counts} == {1, 2} and {n for _, n in counts} == {0, 1, 2}  # the paper's [1, N_pt)
    with pytest.raises(ValueError, match="max_points"):
        assist.AssistConfig(max_points=-1).check()


@pytest.mark.model
def test_box_copy_stays_close_to_the_original(ct_segmenter, ct_labels):
    masks = assist.annotations_from_labels(ct_labels.array_kji, KIDNEY, TRAIN)
    original = dict(ct_segmenter.backend.model.prompt_encoder.named_parameters())

    def drift(cfg):
        learned = assist.fit_prompt_encoder(ct_segmenter, masks, config=assist.AssistConfig(steps=3, seed=0, **cfg))
        return {
            name: sum(float((p - original[n]).norm() ** 2) for n, p in copy.named_parameters()) ** 0.5
            for name, copy in (("points", learned.module.points), ("boxes", learned.module.boxes))
        }

    frozen = drift({"box_lr_scale": 0.0})
    assert frozen["boxes"] == 0.0 and frozen["points"] > 0  # box lr 0: the box copy is the original encoder
    full = drift({"box_lr_scale": 1.0})
    default = drift({})
    assert 0 < default["boxes"] < 0.2 * full["boxes"]  # the default box lr keeps it close
    assert drift({"box_lr_scale": 1.0, "box_prox": 100.0})["boxes"] < full["boxes"]  # so does the penalty
    with pytest.raises(ValueError, match="box_lr_scale"):
        assist.AssistConfig(box_lr_scale=-1).check()
