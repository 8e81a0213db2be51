"""The modules' "Compute on" setting (issue 14): the choice and the server's token are kept as an application
setting readable by its owner only (never in the scene), and the shared session switches between a worker process
on this computer and a ``sammed serve`` server, segmenting the same on both."""

from __future__ import annotations

import mrml
import numpy as np
import pytest
import slicer
from support import live_server

from sammed.backends.fake import FakeBackend
from sammed.io import Volume
from sammed.prompts import Prompts
from sammed.worker.ops import WorkerState
from SAMMedLib import ComputeSettings
from SAMMedLib import ModelSession as session_module
from SAMMedLib.ModelSession import ModelSession

TOKEN = "compute-on-token"
BOX = Prompts.make(box_xyxy=[10.0, 10.0, 37.0, 37.0])


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMMED_HOME", str(tmp_path))
    return tmp_path


def test_the_choice_and_tokens_are_kept_privately_per_server(home):
    assert ComputeSettings.load() == ("", "")
    assert ComputeSettings.save("https://gpu-a:8000/", "token-a") == "https://gpu-a:8000"
    assert ComputeSettings.settingsPath().stat().st_mode & 0o077 == 0
    assert ComputeSettings.load() == ("https://gpu-a:8000", "token-a")
    ComputeSettings.save("http://gpu-b:8000", "token-b")
    ComputeSettings.save("")  # back to this computer
    assert ComputeSettings.load() == ("", "")
    ComputeSettings.save("https://gpu-a:8000")  # its token is remembered
    assert ComputeSettings.load() == ("https://gpu-a:8000", "token-a")
    before = ComputeSettings.settingsPath().read_bytes()
    with pytest.raises(ValueError, match="not a server address"):
        ComputeSettings.save("gpu-c:8000", "x")
    with pytest.raises(ValueError, match="needs its token"):
        ComputeSettings.save("http://gpu-c:8000")
    assert ComputeSettings.settingsPath().read_bytes() == before, "a refused choice changes nothing"


def _scene_with_cube():
    logics = mrml.make_scene()
    arr = np.zeros((40, 48, 48), np.int16)
    arr[10:30, 12:36, 12:36] = 200
    return logics, mrml.add_volume(logics.scene, Volume(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)))


def test_the_session_moves_between_this_computer_and_a_server(home):
    logics, node = _scene_with_cube()
    session = ModelSession(logics.scene)
    session.useTestModel()
    local = session.client
    assert session.segmenter(node).segment(0, 20, BOX).mask_hw.sum() == 24 * 24
    assert session.describe().startswith("This computer: fake")

    state = WorkerState(backend_factory=lambda model, device, runtime: FakeBackend())
    with live_server(TOKEN, state) as (url, _app):
        assert session.computeOn(url, TOKEN) and not session.computeOn(url, TOKEN)
        assert not local.alive, "the local worker process was ended"
        assert session.backendInjected, "nothing to install or download for a server"
        assert session.describe().startswith(f"Server {url}: litemedsam on auto")
        assert session.segmenter(node).segment(0, 20, BOX).mask_hw.sum() == 24 * 24
        assert state.cache.stats.encodes == 1, "the server did the work"
        assert session.computeOn(url, "wrong")
        assert "token" in session.describe()
    assert session.computeOn("")
    session.useTestModel()
    assert session.segmenter(node).segment(0, 21, BOX).mask_hw.sum() == 24 * 24, "a new worker on this computer"
    session.cleanup()


def test_the_shared_session_starts_where_the_user_chose(home, monkeypatch):
    logics, _node = _scene_with_cube()
    monkeypatch.setattr(slicer, "mrmlScene", logics.scene, raising=False)
    ComputeSettings.save("http://gpu-a:8000", "token-a")
    session_module.resetSharedSession()
    try:
        shared = session_module.sharedSession()
        assert shared.serverURL == "http://gpu-a:8000" and shared.client.token == "token-a"
    finally:
        session_module.resetSharedSession()
