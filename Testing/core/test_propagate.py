"""Volume generators: bookkeeping with the fake backend, Dice floors with the real LiteMedSAM."""

from __future__ import annotations

import numpy as np
import pytest
from data import CT_IMAGE
from data import CT_LABEL_IDS
from data import largest_slice

from sammed import geometry
from sammed.evaluate.metrics import dice
from sammed.io import Volume
from sammed.propagate import GENERATORS
from sammed.propagate import PropagationConfig
from sammed.propagate import PropagationResult
from sammed.propagate import propagate
from sammed.propagate.refine import seed_from_box
from sammed.segmenter import Segmenter


# ---------------------------------------------------------------------- a synthetic case for the fake backend
def _ellipsoid_volume(n: int = 24, h: int = 48, w: int = 56):
    """A bright ellipsoid (slices 4..19) in a dark, slightly noisy body; returns (volume, reference mask)."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[0:n, 0:h, 0:w]
    ref = ((zz - 11.5) / 8.2) ** 2 + ((yy - 24) / 14) ** 2 + ((xx - 28) / 16) ** 2 <= 1.0
    img = np.where(ref, 200.0, 40.0) + rng.normal(0, 3, size=ref.shape)
    return Volume(img.astype(np.float32), (1.0, 1.0, 2.0)), ref


@pytest.fixture
def synthetic(fake_backend):
    vol, ref = _ellipsoid_volume()
    seg = Segmenter(vol, fake_backend, preset=None)
    return seg, ref


def _rules_off_config(**kw) -> PropagationConfig:
    cfg = PropagationConfig(**kw)
    cfg.rules.feature_margin = None  # the fake's "embedding" is the image: no semantic features
    return cfg


def test_sliding_fills_the_object_and_stops(synthetic):
    seg, ref = synthetic
    s = largest_slice(ref, 0)
    res = propagate(seg, {s: ref[s]}, generator="sliding", config=_rules_off_config())
    assert isinstance(res, PropagationResult)
    assert dice(res.mask_kji, ref) > 0.9
    statuses = {r.index: r.status for r in res.records}
    assert statuses[s] == "user"
    assert all(not res.mask_kji[i].any() for i in range(ref.shape[0]) if not ref[i].any())
    assert [r.index for r in res.records] == sorted(r.index for r in res.records)
    gen = [r for r in res.records if r.status == "generated"]
    assert gen and all("box" in r.prompt for r in gen)
    js = res.to_json()
    assert js["counts"]["user"] == 1 and len(js["slices"]) == len(res.records)


def test_user_slices_are_never_changed(synthetic):
    seg, ref = synthetic
    # user masks that the model would never produce: a square and a thin bar inside the object
    a = np.zeros_like(ref[8])
    a[18:30, 20:36] = True
    b = np.zeros_like(ref[15])
    b[22:26, 14:44] = True
    for gen in ("sliding", "threshold"):
        res = propagate(seg, {8: a, 15: b}, generator=gen, config=_rules_off_config())
        assert np.array_equal(res.mask_kji[8], a) and np.array_equal(res.mask_kji[15], b), gen
        assert {r.index for r in res.records if r.status == "user"} == {8, 15}
        assert np.isnan([r.iou for r in res.records if r.status == "user"]).all()


def test_cancel_stops_within_one_slice_and_keeps_partial(synthetic):
    seg, ref = synthetic
    s = largest_slice(ref, 0)
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > 3

    res = propagate(seg, {s: ref[s]}, generator="sliding", config=_rules_off_config(), should_stop=should_stop)
    assert res.cancelled
    generated = [r.index for r in res.records if r.status == "generated"]
    assert 1 <= len(generated) <= 3
    assert all(res.mask_kji[i].any() for i in generated)
    assert np.array_equal(res.mask_kji[s], ref[s])


def test_progress_reports_slice_and_direction(synthetic):
    seg, ref = synthetic
    s = largest_slice(ref, 0)
    msgs = []
    propagate(seg, {s: ref[s]}, config=_rules_off_config(), progress=lambda f, m: msgs.append((f, m)))
    assert msgs and all(0 <= f <= 1 for f, _ in msgs)
    assert any("going up" in m for _, m in msgs) and any("going down" in m for _, m in msgs)
    assert "of" in msgs[0][1]
    fractions = [f for f, _ in msgs]
    assert fractions == sorted(fractions) and msgs[-1] == (1.0, msgs[-1][1]) and msgs[-1][1].startswith("Done")


def test_second_run_encodes_nothing(synthetic, fake_backend):
    seg, ref = synthetic
    s = largest_slice(ref, 0)
    first = propagate(seg, {s: ref[s]}, config=_rules_off_config())
    calls = fake_backend.encode_calls
    assert first.encoded == calls > 0
    second = propagate(seg, {s: ref[s]}, config=_rules_off_config())
    assert second.encoded == 0 and fake_backend.encode_calls == calls
    assert np.array_equal(first.mask_kji, second.mask_kji)


def test_range_and_seeds_bound_the_walk(synthetic):
    seg, ref = synthetic
    res = propagate(seg, {10: ref[10]}, config=_rules_off_config(), slice_range=(8, 13))
    assert {r.index for r in res.records} <= set(range(8, 14))
    assert not res.mask_kji[:8].any() and not res.mask_kji[14:].any()


@pytest.mark.parametrize(
    "case, message",
    [
        ("generator", "Unknown generator"),
        ("none", "No a seed slice"),
        ("empty", "is empty"),
        ("range", "out of range"),
        ("shape", "not on the volume grid"),
        ("labels", "conflicting labels"),
        ("sapnet_none", "annotated slices for SAP-Net"),
        ("sapnet_empty", "at least one annotated slice"),
        ("slice_range", "not inside"),
    ],
)
def test_bad_input_is_a_clear_error(synthetic, case, message):
    seg, ref = synthetic
    good = ref[10]
    kw = {"generator": "sliding"}
    masks = {10: good}
    if case == "generator":
        kw["generator"] = "magic"
    elif case == "none":
        masks = {}
    elif case == "empty":
        masks = {10: np.zeros_like(good)}
    elif case == "range":
        masks = {99: good}
    elif case == "shape":
        masks = {10: good[:-1]}
    elif case == "labels":
        masks = {10: good.astype(np.uint8) * 2 + (np.arange(good.shape[1]) % 2 == 0)}
    elif case == "sapnet_none":
        masks, kw["generator"] = {}, "sapnet"
    elif case == "sapnet_empty":
        masks, kw["generator"] = {3: np.zeros_like(good)}, "sapnet"
    elif case == "slice_range":
        kw["slice_range"] = (5, 40)
    with pytest.raises(ValueError, match=message.split()[0] if case == "none" else message):
        propagate(seg, masks, **kw)


@pytest.mark.parametrize("generator", ["sliding", "threshold"])
def test_on_slice_reports_every_final_slice_once_with_its_mask(synthetic, generator):
    seg, ref = synthetic
    s = largest_slice(ref, 0)
    seen = []
    res = propagate(
        seg,
        {s: ref[s]},
        generator=generator,
        config=_rules_off_config(n_points=4),
        on_slice=lambda rec, mask: seen.append((rec, None if mask is None else mask.copy())),
    )
    assert sorted(r.index for r, _ in seen) == [r.index for r in res.records if r.status != "user"]
    for rec, mask in seen:
        assert (mask is not None) == (rec.status == "generated")
        if mask is not None:
            np.testing.assert_array_equal(mask, res.mask_kji[rec.index])


def test_the_registry_names_every_generator_and_runs_them_by_name(synthetic):
    seg, ref = synthetic
    assert list(GENERATORS) == ["sliding", "threshold", "sapnet"] and all(callable(g) for g in GENERATORS.values())
    with pytest.raises(ValueError, match="use one of sliding, threshold, sapnet"):
        propagate(seg, {10: ref[10]}, generator="magic")


def test_threshold_generator_runs_on_fake(synthetic):
    seg, ref = synthetic
    s = largest_slice(ref, 0)
    res = propagate(seg, {s: ref[s]}, generator="threshold", config=_rules_off_config(n_points=4))
    gen = [r for r in res.records if r.status == "generated"]
    assert gen and all("points" in r.prompt for r in gen)
    assert not res.mask_kji[0].any()
    assert tuple(GENERATORS) == ("sliding", "threshold", "sapnet")


def test_cli_conflicting_labels_writes_nothing(tmp_path, ct_volume):
    from sammed.cli import main
    from sammed.io import write_labelmap

    seeds = np.zeros(ct_volume.shape_kji, np.uint8)
    seeds[50, 40:50, 40:50] = 1
    seeds[60, 40:50, 40:50] = 2
    seed_file = write_labelmap(tmp_path / "seeds.nii.gz", seeds, ct_volume)
    out = tmp_path / "out.nii.gz"
    rc = main(["propagate", str(seed_file), "--seed", str(seed_file), "-o", str(out)])
    assert rc == 2 and not out.exists()


@pytest.mark.parametrize("value", ["-1", "strong"])
def test_cli_bad_refine_weight_writes_nothing(tmp_path, capsys, value):
    from sammed.cli import main

    out = tmp_path / "out.nii.gz"
    rc = main(["propagate", str(CT_IMAGE), "--slice", "50", "--box", "40,40,60,60", "--refine", value, "-o", str(out)])
    assert rc == 2 and not out.exists()
    assert "--refine" in capsys.readouterr().err


# ---------------------------------------------------------------------- real LiteMedSAM on the shared CT
def _organ_range(ref: np.ndarray, pad: int = 4) -> tuple[int, int]:
    z = np.flatnonzero(ref.any(axis=(1, 2)))
    return max(0, int(z[0]) - pad), min(ref.shape[0] - 1, int(z[-1]) + pad)


@pytest.mark.parametrize("name, floor", [("liver", 0.88), ("kidney_left", 0.90)])
def test_sliding_window_dice_floor_ct(ct_volume, ct_labels, litemedsam, shared_cache, name, floor):
    seg = Segmenter(ct_volume, litemedsam, cache=shared_cache)
    ref = ct_labels.array_kji == CT_LABEL_IDS[name]
    s = largest_slice(ref, 0)
    seed, _ = seed_from_box(seg, 0, s, geometry.box_from_mask(ref[s]))
    res = propagate(seg, {s: seed}, generator="sliding", slice_range=_organ_range(ref))
    d = dice(res.mask_kji, ref)
    assert d >= floor, f"{name}: sliding-window Dice {d:.3f} < {floor}"
    assert np.array_equal(res.mask_kji[s], seed)
    again = propagate(seg, {s: seed}, generator="sliding", slice_range=_organ_range(ref))
    assert again.encoded == 0


def test_sapnet_dice_floor_ct_liver(ct_volume, ct_labels, litemedsam, shared_cache):
    from sammed.evaluate.propagation import choose_annotated

    seg = Segmenter(ct_volume, litemedsam, cache=shared_cache)
    ref = ct_labels.array_kji == CT_LABEL_IDS["liver"]
    lo, hi = _organ_range(ref)
    fg, _ = choose_annotated(ref, 0, 5, np.random.default_rng(0))
    user = {i: ref[i] for i in fg} | {lo: ref[lo]}  # five slices as in the paper + one 'absent' slice
    res = propagate(seg, user, generator="sapnet", slice_range=(lo, hi))
    d = dice(res.mask_kji, ref)
    assert d >= 0.92, f"liver: SAP-Net Dice {d:.3f} < 0.92"
    assert all(np.array_equal(res.mask_kji[i], m) for i, m in user.items())
    assert res.coarse_kji is not None and res.info["sapnet"]["steps"] > 0


# ---------------------------------------------------------------------- trimming a candidate to the target's intensity
def test_trim_to_core_removes_foreign_tissue_and_keeps_vessels():
    from sammed.propagate.sliding import trim_to_core

    yy, xx = np.mgrid[0:80, 0:80]
    organ = (yy - 40) ** 2 + (xx - 35) ** 2 <= 18**2
    image = np.where(organ, 100.0, 300.0)
    image[(yy - 40) ** 2 + (xx - 35) ** 2 <= 2**2] = 300.0  # a bright vessel inside the organ
    candidate = organ | ((yy >= 30) & (yy < 50) & (xx >= 50) & (xx < 70))  # organ + a block of other tissue
    core = trim_to_core(candidate, image, (60.0, 140.0), opening=1, core_radius=12.0)
    assert core.sum() < candidate.sum()
    assert not core[40, 65], "the foreign block must go"
    assert core[40, 35], "a vessel enclosed by the organ is part of it"
    assert dice(core, organ) > 0.97


def test_trim_to_core_keeps_the_rim_of_small_objects():
    from sammed.propagate.sliding import trim_to_core

    yy, xx = np.mgrid[0:40, 0:40]
    vessel = (yy - 20) ** 2 + (xx - 20) ** 2 <= 3**2  # radius 3 px: the rim is most of it
    image = np.where(vessel, 200.0, -100.0)
    image[vessel & ((yy - 20) ** 2 + (xx - 20) ** 2 >= 2**2)] = 50.0  # partial-volume rim, out of range
    core = trim_to_core(vessel, image, (150.0, 250.0), opening=1, core_radius=12.0)
    assert np.array_equal(core, vessel)


def test_sliding_window_mr_liver_with_trimming(mr_volume, mr_labels, litemedsam, shared_cache):
    """LiteMedSAM over-segments the MR liver; a box carried from such a mask never shrinks. Trimming fixes that."""
    seg = Segmenter(mr_volume, litemedsam, cache=shared_cache)
    ref = mr_labels.array_kji == 5
    s = largest_slice(ref, 0)
    seed = seg.segment(0, s, box_xyxy=geometry.box_from_mask(ref[s])).mask_hw
    only_trim = PropagationConfig(refine=None)
    trimmed = dice(propagate(seg, {s: seed}, generator="sliding", config=only_trim).mask_kji, ref)
    plain = dice(
        propagate(seg, {s: seed}, generator="sliding", config=PropagationConfig(trim=None, refine=None)).mask_kji, ref
    )
    assert trimmed >= 0.85, f"MR liver, sliding window with trimming: Dice {trimmed:.3f} < 0.85"
    assert trimmed > plain + 0.1, f"trimming {trimmed:.3f} vs without {plain:.3f}"


# ---------------------------------------------------------------------- intensity refinement
def _dark_organ(size: int = 80):
    yy, xx = np.mgrid[0:size, 0:size]
    organ = (yy - 40) ** 2 + (xx - 35) ** 2 <= 15**2
    image = np.where(organ, 100.0, 400.0)
    image[(yy >= 10) & (yy < 70) & (xx >= 62)] = 110.0  # another dark structure, outside the box
    noise = np.random.default_rng(0).normal(0.0, 10.0, image.shape)
    return organ, image + noise


def test_refine_mask_redraws_inside_the_box_only():
    from sammed.propagate.refine import box_region
    from sammed.propagate.refine import model_from_masks
    from sammed.propagate.refine import refine_mask

    organ, image = _dark_organ()
    model = model_from_masks({0: organ}, lambda i: image)
    half = organ & (np.mgrid[0:80, 0:80][1] < 35)  # SAM found half the organ ...
    sam = half | (
        (np.abs(np.mgrid[0:80, 0:80][0] - 40) < 4) & (np.mgrid[0:80, 0:80][1] >= 50) & (np.mgrid[0:80, 0:80][1] < 60)
    )  # ... plus a strip of bright fat
    logits = np.where(sam, 5.0, -5.0)
    region = box_region(organ.shape, geometry.box_from_mask(organ, 2.0))
    grown = refine_mask(sam, logits, image, model, region, weight=0.25)
    assert dice(grown, organ) > 0.95, "the dark organ inside the box is found whole, the fat strip goes"
    assert not grown[:, 62:].any(), "nothing outside the box, even of the same intensity"
    shrunk = refine_mask(sam, logits, image, model, region, weight=0.25, reach=0)
    assert not (shrunk & ~sam).any(), "reach 0 only removes pixels"
    assert not shrunk[40, 55] and dice(shrunk, half) > 0.95
    empty = np.zeros_like(sam)
    assert refine_mask(empty, logits, image, model, region, 0.25) is empty


def test_refine_model_needs_both_sides():
    from sammed.propagate.refine import fit_intensity_model

    organ, image = _dark_organ()
    assert fit_intensity_model([(image, organ, np.zeros_like(organ))]) is None
    assert fit_intensity_model([(image, organ, ~organ)]) is not None


def test_sliding_window_mr_kidney_with_refinement(mr_volume, mr_labels, litemedsam, shared_cache):
    """On the volume's edge slice LiteMedSAM finds a third of the left kidney from a tight box; SAM locates, intensity
    outlines: the refined seed and window more than double the volume Dice."""
    seg = Segmenter(mr_volume, litemedsam, cache=shared_cache)
    ref = mr_labels.array_kji == 3
    s = largest_slice(ref, 0)
    box = geometry.box_from_mask(ref[s])
    seed, res = seed_from_box(seg, 0, s, box)
    assert dice(seed, ref[s]) > dice(res.mask_hw, ref[s]) + 0.3
    refined = dice(propagate(seg, {s: seed}, generator="sliding").mask_kji, ref)
    off = PropagationConfig(refine=None)
    plain = dice(
        propagate(seg, {s: seed_from_box(seg, 0, s, box, None)[0]}, generator="sliding", config=off).mask_kji, ref
    )
    assert refined >= 0.85, f"MR left kidney, sliding window with refinement: Dice {refined:.3f} < 0.85"
    assert refined > plain + 0.3, f"refined {refined:.3f} vs without {plain:.3f}"


def test_sapnet_dice_floor_mr_kidney(mr_volume, mr_labels, litemedsam, shared_cache):
    """The protocol of ``sammed eval --protocol propagation``: 5 foreground + 2 background slices, seed 0."""
    from sammed.evaluate.propagation import run_one

    seg = Segmenter(mr_volume, litemedsam, cache=shared_cache)
    out = run_one(seg, mr_labels.array_kji == 2, "sapnet")
    assert out["dice"] >= 0.85, f"MR right kidney: SAP-Net Dice {out['dice']:.3f} < 0.85"
