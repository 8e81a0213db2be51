"""Bad input through the Python API: Volume, Segmenter, intensity mapping, SliceGrid and prompts refuse it with a
message (ValueError / TypeError), never an AttributeError, ZeroDivisionError, a torch error or a garbage mask."""

from __future__ import annotations

import numpy as np
import pytest

from sammed import geometry
from sammed.backends.fake import FakeBackend
from sammed.cli import main
from sammed.geometry import SliceGrid
from sammed.intensity import make_mapping
from sammed.intensity import window_mapping
from sammed.io import Volume
from sammed.prompts import Prompts
from sammed.segmenter import Segmenter


def voxels() -> np.ndarray:
    arr = np.zeros((6, 16, 16), np.int16)
    arr[1:, 4:10, 4:12] = 300
    return arr


def segmenter(**volume_args) -> Segmenter:
    return Segmenter(Volume(voxels(), **volume_args), FakeBackend(), preset="ct_abdomen")


# ---------------------------------------------------------------------------------------------------- Volume
def test_volume_voxels_are_read_only_and_the_callers_array_is_not_frozen():
    arr = voxels()
    s = Segmenter(Volume(arr), FakeBackend(), preset="ct_abdomen")
    first = s.segment(0, 2, box_xyxy=[1, 1, 14, 14])
    with pytest.raises(ValueError, match="read-only"):
        s.volume.array_kji[2] = 0  # would serve stale embeddings: the digest is computed once
    assert arr.flags.writeable
    arr[2] = 0  # the caller's array stays the caller's
    changed = Volume(arr.copy())
    assert changed.digest != Volume(voxels()).digest
    assert Segmenter(changed, FakeBackend(), preset="ct_abdomen").slice_is_empty(0, 2)
    assert first.mask_hw.any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing_ijk": (0, 0, 0)}, r"spacing \[0, 0, 0\] mm; each voxel size must be a finite number above 0"),
        ({"spacing_ijk": (1, float("nan"), 1)}, r"spacing \[1, nan, 1\]"),
        ({"spacing_ijk": (1, -2, 1)}, "above 0"),
        ({"spacing_ijk": (1, 1)}, r"spacing needs three numbers .I, J, K.; got \[1, 1\]"),
        ({"spacing_ijk": "abc"}, "three numbers"),
        ({"origin_lps": (np.inf, 0, 0)}, r"origin \[inf, 0, 0\]"),
        ({"direction_lps": np.zeros((3, 3))}, "non-singular"),
        ({"direction_lps": np.full((3, 3), np.nan)}, "non-singular"),
        ({"direction_lps": np.eye(2)}, "3x3 direction"),
    ],
)
def test_volume_geometry_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        Volume(voxels(), name="ct", **kwargs)
    assert "Volume 'ct'" in str(info.value) or "three numbers" in str(info.value)
    assert "np.float64" not in str(info.value)


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.zeros((4, 4)), "3-D"), (np.zeros((0, 4, 4)), "no voxels"), (np.full((2, 2, 2), "a"), "numeric")],
)
def test_volume_array_is_validated(array, message):
    with pytest.raises(ValueError, match=message):
        Volume(array)


# ---------------------------------------------------------------------------------------------------- Segmenter
def test_segmenter_needs_a_volume():
    with pytest.raises(TypeError, match="Segmenter needs a sammed.io.Volume, got ndarray"):
        Segmenter(voxels(), FakeBackend())


def test_segmenter_checks_geometry_reassigned_after_construction():
    volume = Volume(voxels())
    volume.spacing_ijk = (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="spacing"):
        Segmenter(volume, FakeBackend())


@pytest.mark.parametrize("fraction", [0.01, 1.0])
def test_segmenter_refuses_non_finite_float_voxels(fraction):
    arr = voxels().astype(np.float32)
    arr.reshape(-1)[: int(arr.size * fraction)] = np.nan
    arr.reshape(-1)[-1] = np.inf
    bad = int(arr.size * fraction) + (fraction < 1)
    with pytest.raises(ValueError, match=f"{bad:,} of 1,536 voxels .* NaN or infinite"):
        Segmenter(Volume(arr, name="pet"), FakeBackend())
    Segmenter(Volume(voxels().astype(np.float32)), FakeBackend())  # finite floats are fine


@pytest.mark.parametrize("index", [2.0, 2.5, "2", True, np.float64(2.0), None])
@pytest.mark.parametrize("call", ["segment", "embedding", "precompute", "model_image", "slice_is_empty"])
def test_slice_index_must_be_a_whole_number(call, index):
    s = segmenter()
    args = {"segment": {"box_xyxy": [1, 1, 14, 14]}}.get(call, {})
    with pytest.raises(TypeError, match="is not a whole number") as info:
        getattr(s, call)(0, index, **args)
    assert "np.float64" not in str(info.value)
    assert s.backend.encode_calls == 0


def test_numpy_integers_are_accepted():
    s = segmenter()
    result = s.segment(np.int64(0), np.int32(2), box_xyxy=[1, 1, 14, 14])
    assert result.index == 2 and isinstance(result.index, int)
    assert s.precompute(np.uint8(0), np.int16(3), indices=[3]) == 1
    with pytest.raises(ValueError, match="Axis 1.5 is not 0, 1 or 2"):
        s.embedding(1.5, 2)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((3, 256, 256)), "256x256"),
        (np.zeros((2, 1, 256, 256)), "256x256"),
        (np.zeros((128, 128)), "256x256"),
        (np.full((256, 256), np.nan), "NaN or infinite"),
        ("logits", "mask_input must be numbers"),
    ],
)
def test_mask_input_of_the_wrong_shape_is_refused(mask, message):
    s = segmenter()
    with pytest.raises(ValueError, match=message):
        s.segment(0, 2, box_xyxy=[1, 1, 14, 14], mask_input=mask)
    ok = s.segment(0, 2, box_xyxy=[1, 1, 14, 14], mask_input=np.zeros((1, 256, 256), np.float32))
    assert ok.mask_hw.any()


# ---------------------------------------------------------------------------------------------------- intensity
@pytest.mark.parametrize(("level", "width"), [(np.nan, 400), (40, np.inf), (-np.inf, 400), (40, np.nan)])
def test_window_must_be_finite(level, width):
    with pytest.raises(ValueError, match="--level/--width must be finite numbers"):
        window_mapping(level, width)
    with pytest.raises(ValueError, match="--level/--width must be finite numbers"):
        make_mapping(voxels(), level=level, width=width)


def test_percentile_mapping_of_non_finite_voxels_is_refused():
    arr = voxels().astype(np.float32)
    arr[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        make_mapping(arr, "mr_percentile")


def test_cli_nan_window_and_box(tmp_path, capfd):
    import SimpleITK as sitk

    img = tmp_path / "img.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(voxels()), str(img))
    out = tmp_path / "out.nii.gz"
    base = ["segment", str(img), "--slice", "2", "-o", str(out), "--device", "cpu", "--no-disk-cache"]
    for extra, message in [
        (["--box", "1,1,5,5", "--level", "nan", "--width", "400"], "--level/--width must be finite numbers"),
        (["--box", "nan,1,5,5"], "--box x0,y0,x1,y1 needs finite numbers"),
    ]:
        code = main(base + extra)
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0] and "np.float64" not in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]


# ---------------------------------------------------------------------------------------------------- geometry
def test_nan_box_and_points_print_plain_numbers():
    with pytest.raises(ValueError, match=r"all finite; got \[nan, 1, 5, 5\]\.$"):
        geometry.check_box(np.array([np.nan, 1, 5, 5]), (16, 16))
    with pytest.raises(ValueError, match=r"got \[inf, 2\]"):
        geometry.check_points([[np.inf, 2]], [1], (16, 16))
    with pytest.raises(ValueError, match="A box must be numbers"):
        Prompts.make(box_xyxy=["a", 1, 2, 3])
    with pytest.raises(ValueError, match="Point labels must be 1 .positive. or 0 .negative.; got \\[nan\\]"):
        geometry.check_points([[1, 2]], [np.nan], (16, 16))


@pytest.mark.parametrize("thin", [0.00001, 0.001, 1000.0])
def test_absurd_pixel_spacing_is_refused_before_resampling(thin):
    with pytest.raises(ValueError, match="Segment along another axis or fix the spacing"):
        SliceGrid((300, 512), (thin, 1.0))
    s = segmenter(spacing_ijk=(1.0, 1.0, thin))
    with pytest.raises(ValueError, match=f"slices on axis 1 \\(coronal\\).*Pixels of {thin:g} x 1 mm") as info:
        s.segment(1, 8, box_xyxy=[1, 1, 14, 4])
    assert "Volume 'image'" in str(info.value)
    assert s.segment(0, 2, box_xyxy=[1, 1, 14, 14]).mask_hw.any()  # axial slices have square pixels


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((60, 512), (5.0, 0.5)), ((40, 512), (10.0, 0.35)), ((400, 512), (5.0, 0.7)), ((512, 24), (0.3, 6.0))],
)
def test_realistic_anisotropic_slices_still_work(shape, spacing):
    grid = SliceGrid(shape, spacing)
    assert max(grid.model_shape_hw) <= 4096


@pytest.mark.parametrize("spacing", [(0.0, 1.0), (np.nan, 1.0), (-1.0, 1.0), (1.0, np.inf)])
def test_slice_grid_spacing_must_be_positive_and_finite(spacing):
    with pytest.raises(ValueError, match="not two finite numbers above 0"):
        SliceGrid((16, 16), spacing)
