"""Accuracy of the real LiteMedSAM on the real CT and MR (tight box on the largest slice of each label)."""

from __future__ import annotations

import numpy as np
import pytest
from data import CT_LABEL_IDS
from data import largest_slice

from sammed import geometry
from sammed.evaluate.metrics import dice
from sammed.segmenter import Segmenter

# floors a little below the measured values (README, "Tight box on the largest slice")
AXIAL_FLOORS = {"liver": 0.95, "spleen": 0.90, "kidney_right": 0.88, "kidney_left": 0.88}


@pytest.fixture(scope="module")
def ct_segmenter(ct_volume, litemedsam, shared_cache):
    return Segmenter(ct_volume, litemedsam, cache=shared_cache)


def box_dice(segmenter, labels_kji, value, axis):
    mask = labels_kji == value
    index = largest_slice(mask, axis)
    ref = geometry.extract_slice(mask, axis, index)
    result = segmenter.segment(axis, index, box_xyxy=geometry.box_from_mask(ref))
    return dice(result.mask_hw, ref), result


@pytest.mark.parametrize("name", list(AXIAL_FLOORS))
def test_tight_box_on_largest_axial_slice(ct_segmenter, ct_labels, name):
    d, result = box_dice(ct_segmenter, ct_labels.array_kji, CT_LABEL_IDS[name], axis=0)
    assert d >= AXIAL_FLOORS[name], f"{name}: Dice {d:.3f}"
    assert 0.5 < result.iou <= 1.05


@pytest.mark.parametrize("orientation", ["coronal", "sagittal"])
@pytest.mark.parametrize("name", ["liver", "kidney_left"])
def test_tight_box_on_coronal_and_sagittal_slices_lands_in_the_right_place(
    ct_segmenter, ct_volume, ct_labels, orientation, name
):
    axis = geometry.axis_for_orientation(ct_volume.direction_lps, orientation)
    d, _ = box_dice(ct_segmenter, ct_labels.array_kji, CT_LABEL_IDS[name], axis)
    assert d >= 0.85, f"{name} {orientation}: Dice {d:.3f}"


def test_clicks_refine_a_box_on_the_same_slice_without_encoding_again(ct_segmenter, ct_labels):
    from sammed.evaluate.interactive import composite

    mask = ct_labels.array_kji == CT_LABEL_IDS["kidney_right"]
    index = largest_slice(mask, 0)
    ref = geometry.extract_slice(mask, 0, index)
    encodes = ct_segmenter.cache.stats.encodes
    box_only = dice(ct_segmenter.segment(0, index, box_xyxy=geometry.box_from_mask(ref)).mask_hw, ref)
    best, _ = composite(ct_segmenter, 0, index, ref, geometry.box_from_mask(ref), np.random.default_rng(0))
    assert best >= box_only
    assert ct_segmenter.cache.stats.encodes == encodes  # the slice was cached by the box test


def test_mr_liver_box(mr_volume, mr_labels, litemedsam, shared_cache):
    seg = Segmenter(mr_volume, litemedsam, cache=shared_cache)
    assert seg.mapping.id.startswith("mr_percentile")
    d, _ = box_dice(seg, mr_labels.array_kji, 5, axis=0)
    assert d >= 0.80, f"MR liver Dice {d:.3f}"
