"""The one prompt type and the one conversion to the model input, shared by inference and SAMassist training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed.assist import train
from sammed.backends.base import model_input_geometry
from sammed.backends.fake import FakeBackend
from sammed.io import Volume
from sammed.prompts import Prompts
from sammed.segmenter import Segmenter


def test_a_box_on_a_thick_reformat_maps_through_the_pixel_edges_and_points_through_centres():
    # rows 3 mm, columns 1 mm: the model image has 3x the rows
    geom = model_input_geometry((20, 50), (3.0, 1.0), None)
    points, labels, box = geom.prompts_to_input(Prompts.make([10, 20, 40, 30], [[12, 4]], [0]))
    np.testing.assert_allclose(box, [9.5, 59.5, 40.5, 92.5])  # not [10, 60, 40, 90]: edges, not centres x scale
    np.testing.assert_allclose(points, [[12.0, 13.0]])  # the centre of row 4 is the centre of model row 13
    assert labels.tolist() == [0]
    # LiteMedSAM: the model image is 60 x 50, its longest side scaled to 256 px
    lite = model_input_geometry((20, 50), (3.0, 1.0), 256)
    np.testing.assert_allclose(lite.box_to_input([10, 20, 40, 30]), np.array([9.5, 59.5, 40.5, 92.5]) * 256 / 60)
    assert lite.resized_shape_hw == (256, 213) and lite.valid_cells((64, 64)) == (64, 53)


def test_training_and_inference_give_the_prompt_encoder_the_same_numbers(litemedsam):
    geom = model_input_geometry((40, 101), (3.0, 1.0), litemedsam.image_size)
    prompts = [
        Prompts.make([10, 5, 60, 30], [[20, 10], [50, 25]], [1, 0]),
        Prompts.make([12, 6, 58, 29], [[30, 12]], [1]),
    ]
    batch_points, batch_box = train._prompt_tensors(prompts, geom, torch.device("cpu"))
    for i, p in enumerate(prompts):
        points, box, _ = litemedsam.prompt_tensors(p, geom)
        n = len(p.points_xy)
        torch.testing.assert_close(batch_points[0][i, :n], points[0][0])
        torch.testing.assert_close(batch_points[1][i, :n], points[1][0])
        assert (batch_points[1][i, n:] == -1).all()  # padding
        torch.testing.assert_close(batch_box[i], box[0])


def test_prompts_are_checked_once_with_clear_messages():
    shape = (20, 30)
    with pytest.raises(ValueError, match="box or at least one point"):
        Prompts().checked(shape)
    with pytest.raises(ValueError, match="x,y pairs"):
        Prompts.make(points_xy=[1, 2, 3]).checked(shape)
    with pytest.raises(ValueError, match="256x256"):
        Prompts.make([1, 1, 5, 5], mask_input=np.zeros((10, 10))).checked(shape)
    checked = Prompts.make([-3, 1, 50, 5], [[2, 3]]).checked(shape)
    np.testing.assert_array_equal(checked.box_xyxy, [0, 1, 29, 5])  # clipped to the slice
    assert checked.point_labels.tolist() == [1]  # points without labels are positive
    assert Prompts.make(points_xy=[]).empty
    assert checked.to_json() == {"box": [0.0, 1.0, 29.0, 5.0], "points": [[2.0, 3.0]], "labels": [1]}


def test_segment_takes_a_prompts_object_or_the_same_as_keywords():
    arr = np.zeros((4, 24, 24), np.int16)
    arr[:, 6:18, 5:15] = 300
    seg = Segmenter(Volume(arr), FakeBackend(), preset="ct_abdomen")
    a = seg.segment(0, 1, Prompts.make([4, 5, 16, 19]))
    b = seg.segment(0, 1, box_xyxy=[4, 5, 16, 19])
    np.testing.assert_array_equal(a.mask_hw, b.mask_hw)
    assert a.mask_hw.sum() == 12 * 10
