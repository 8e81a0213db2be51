"""Model registry and weights: SHA256 checks, weights_only loading, wrong architecture, the SAM code path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sammed import models
from sammed.backends.base import model_input_geometry
from sammed.prompts import Prompts


def test_registry_lists_default_and_sam_models_with_checksums():
    assert models.DEFAULT_MODEL == "litemedsam"
    for mid in ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"):
        spec = models.get_spec(mid)
        assert len(spec.sha256) == 64 and spec.size > 0 and spec.licence == "Apache-2.0"
    for mid in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        assert models.get_spec(mid).url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
    row = models.model_status(models.get_spec("litemedsam"))
    assert row["present"] and row["verified"]


def test_unknown_model_and_missing_sam_weights_say_what_to_do():
    with pytest.raises(ValueError, match="Unknown model"):
        models.get_spec("sam_vit_x")
    with pytest.raises(ValueError, match="sammed models --download sam_vit_b"):
        models.load_backend("sam_vit_b", device="cpu")


def test_checkpoint_with_wrong_sha256_is_refused_before_loading(tmp_path):
    bad = tmp_path / "lite.pth"
    shutil.copy(models.weights_path(models.get_spec("litemedsam")), bad)
    with pytest.raises(ValueError, match="SHA256"):
        models.load_backend(checkpoint=bad, arch="litemedsam", sha256="0" * 64, device="cpu")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"image_encoder.foo": torch.zeros(2)}, wrong)
    with pytest.raises(ValueError, match="do not fit architecture 'litemedsam'"):
        models.load_backend(checkpoint=wrong, arch="litemedsam", device="cpu")
    lite = models.weights_path(models.get_spec("litemedsam"))
    with pytest.raises(ValueError, match="do not fit architecture 'vit_b'"):
        models.load_backend(checkpoint=lite, arch="vit_b", device="cpu")


class Evil:
    """Any class: a pickle that needs it must not be loaded (weights_only=True)."""


def test_pickled_code_is_not_loaded(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": Evil()}, evil)
    with pytest.raises(ValueError, match="Cannot load weights"):
        models.load_backend(checkpoint=evil, arch="litemedsam", device="cpu")


def test_user_checkpoint_file_loads_with_its_own_id(tmp_path):
    mine = tmp_path / "my_lite.pth"
    shutil.copy(models.weights_path(models.get_spec("litemedsam")), mine)
    backend = models.load_backend(checkpoint=mine, arch="litemedsam", device="cpu")
    assert backend.model_id.startswith("file-litemedsam-79d8c9dca6db")
    assert backend.weights_sha256 == models.get_spec("litemedsam").sha256


def test_sam_vit_b_code_path_with_a_randomly_initialised_model():
    """The SAM ViT-B path (1024 px, ImageNet normalisation, multimask) on a RANDOMLY INITIALISED model:
    shapes and pre-processing only, no accuracy (the real weights cannot be downloaded here)."""
    backend = models.load_backend("sam_vit_b", device="cpu", random_init=True)
    assert backend.model_id == "sam_vit_b-random-init"
    assert backend.preprocessing_id == "sam1024-imagenet"
    image = np.zeros((100, 80, 3), np.uint8)
    image[30:60, 20:50] = 200
    x = backend.preprocess(image)
    assert tuple(x.shape) == (1, 3, 1024, 1024)
    assert float(x[0, :, -1, -1].abs().sum()) == 0.0  # zero padding bottom/right
    emb = backend.encode(image)
    assert emb.shape == (256, 64, 64)
    geometry = model_input_geometry((100, 80), (1.0, 1.0), backend.image_size)
    res = backend.decode(emb, Prompts.make(points_xy=[[30.0, 40.0]]), geometry)
    assert res.logits_hw.shape == (100, 80) and res.low_res_logits.shape == (256, 256)
    assert np.isfinite(res.iou)


def test_litemedsam_preprocessing_is_minmax_256():
    backend = models.load_backend("litemedsam", device="cpu")
    image = np.zeros((122, 101, 3), np.uint8)
    image[10:20, 10:20] = 100
    x = backend.preprocess(image)
    assert tuple(x.shape) == (1, 3, 256, 256)
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) == 0.0
    assert model_input_geometry((122, 101), (1.0, 1.0), backend.image_size).resized_shape_hw == (256, 212)
    assert float(x[0, :, :, 212:].abs().sum()) == 0.0
