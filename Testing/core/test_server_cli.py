"""``sammed propagate`` and ``sammed assist`` with ``--server URL --token-file F``: a real ``sammed serve`` on
127.0.0.1 (uvicorn in a thread) does the model work; the outputs are those of a local run with the same model, a
wrong token or an option the server decides is one line on stderr with exit code 2, and SIGTERM or Ctrl+C cancel
the job on the server. Propagation uses the analytic ``FakeBackend``; SAMassist needs a SAM-family model and uses
the real LiteMedSAM (one model object behind both runs)."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import SimpleITK as sitk
from support import live_server
from support import require

require("fastapi", "the server tests need fastapi and uvicorn: run bash scripts/test.sh")

from sammed.backends.fake import FakeBackend  # noqa: E402
from sammed.cli import main  # noqa: E402
from sammed.cli import options  # noqa: E402
from sammed.io import read_volume  # noqa: E402
from sammed.jobs import JsonLinesReporter  # noqa: E402
from sammed.server.client import HttpWorkerClient  # noqa: E402
from sammed.worker.ops import WorkerState  # noqa: E402

TOKEN = "test-token-cli-456"
NOWHERE = "http://127.0.0.1:9"  # nothing listens there


@pytest.fixture
def case(tmp_path, monkeypatch):
    """A bright box in a darker noisy body (slices 2..9), a seed label map (label 5 on slices 5 and 6), the server's
    token in a private file, and the fake model behind local runs."""
    arr = np.full((12, 40, 48), 100.0)
    arr[2:10, 10:30, 12:36] = 200
    arr = (arr + np.random.default_rng(0).normal(0, 40, arr.shape)).astype(np.int16)  # noise: the box seed's
    # refinement then depends on the model's logits, which the server must send
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "cube.nii.gz"))
    seed = np.zeros(arr.shape, np.uint8)
    seed[5:7, 10:30, 12:36] = 5
    seed_image = sitk.GetImageFromArray(seed)
    seed_image.CopyInformation(image)
    sitk.WriteImage(seed_image, str(tmp_path / "seed.nii.gz"))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    monkeypatch.delenv("SAMMED_TOKEN", raising=False)
    monkeypatch.setattr(options, "make_backend", lambda args: FakeBackend())
    return tmp_path


@pytest.fixture
def server():
    """A real server with the fake model: (url, its WorkerState)."""
    state = WorkerState(backend_factory=lambda model, device, runtime: FakeBackend())
    with live_server(TOKEN, state) as (url, _app):
        yield url, state


def on_server(url, d, token="token"):
    return ["--server", url, "--token-file", str(d / token)]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def refused(capsys, argv, code=2):
    """Run ``sammed argv``: the exit code, and the one stderr line (no traceback)."""
    got = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def without(report, *keys):
    return {k: v for k, v in report.items() if k not in keys}


# ---------------------------------------------------------------- propagate


@pytest.mark.parametrize(
    "prompt",
    [["--seed", "{d}/seed.nii.gz", "--label", "5"], ["--box", "10,8,37,31", "--slice", "5", "--json-progress"]],
    ids=["seed", "box-json"],
)
def test_propagate_with_server_writes_what_the_local_run_writes(case, server, capsys, prompt):
    d, (url, state) = case, server
    base = ["propagate", str(d / "cube.nii.gz"), *[a.format(d=d) for a in prompt], "--axis", "0"]
    assert main([*base, "-o", str(d / "local.nii.gz"), "--report", str(d / "local.json"), "--no-disk-cache"]) == 0
    local = last_json(capsys)
    assert main([*base, "-o", str(d / "remote.nii.gz"), "--report", str(d / "remote.json"), *on_server(url, d)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    remote = json.loads(out[-1])
    if "--json-progress" in prompt:
        local, remote = local["result"], remote["result"]
        fractions = [json.loads(line)["progress"] for line in out[:-1]]
        assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert state.backend().encode_calls > 0, "the server did the model work"
    assert without(remote, "seconds", "output") == without(local, "seconds", "output")
    assert remote["counts"]["generated"] > 0
    np.testing.assert_array_equal(read_volume(d / "remote.nii.gz").array_kji, read_volume(d / "local.nii.gz").array_kji)
    reports = [json.loads((d / f"{name}.json").read_text()) for name in ("local", "remote")]
    assert [without(r, "seconds", "output") for r in reports[1:]] == [without(reports[0], "seconds", "output")]


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_and_ctrl_c_cancel_the_job_on_the_server(case, server, capsys, monkeypatch, how):
    d, (url, state) = case, server
    state.fake_encode_delay = 0.3  # a slow model: the job still runs when the cancel arrives
    cancels = []
    original_cancel = HttpWorkerClient.cancel

    def spy_cancel(self, job_id=None):
        cancels.append((self, job_id))
        return original_cancel(self, job_id)

    def interrupted(self, fraction, message):
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # the handler sets the cancel token
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(HttpWorkerClient, "cancel", spy_cancel)
    monkeypatch.setattr(JsonLinesReporter, "__call__", interrupted)
    handler = signal.getsignal(signal.SIGTERM)
    argv = ["propagate", str(d / "cube.nii.gz"), "--seed", str(d / "seed.nii.gz"), "--axis", "0", "--json-progress"]
    line = refused(capsys, [*argv, "-o", str(d / "m.nii.gz"), *on_server(url, d)], code=3)
    assert not (d / "m.nii.gz").exists()
    assert signal.getsignal(signal.SIGTERM) == handler
    assert len(cancels) == 1 and cancels[0][1] is not None
    if how == "sigterm":  # the command waited for the server's answer
        assert line.startswith("sammed propagate: cancelled") and "nothing was written" in line, line
        assert "did not confirm" not in line
    else:  # Ctrl+C ends the command at once; the server's job ends cancelled
        assert line == "sammed propagate: interrupted"
        client, rid = cancels[0]
        assert client.wait(rid, 20).kind == "cancelled"
    assert state.backend().encode_calls < 8, "the server stopped encoding"


# ---------------------------------------------------------------- assist


def test_assist_with_server_fits_there_like_the_local_run_and_keeps_the_encoder(case, capsys, monkeypatch, litemedsam):
    from sammed.cache import EmbeddingCache

    d = case
    cache = EmbeddingCache()  # one model and cache behind both runs: the same embeddings, each slice encoded once
    monkeypatch.setattr(options, "make_backend", lambda args: litemedsam)
    monkeypatch.setattr(options, "make_cache", lambda args: cache)
    state = WorkerState(backend_factory=lambda model, device, runtime: litemedsam, cache=cache)
    fit = ["assist", str(d / "cube.nii.gz"), str(d / "seed.nii.gz"), "--label", "5", "--target", "cube"]
    fit += ["--axis", "0", "--steps", "2", "--prompts-per-slice", "1", "--seed", "1"]
    assert main([*fit, "-o", str(d / "cube.pt")]) == 0
    local = last_json(capsys)
    assert (d / "cube.pt").is_file() and local["output"] == str(d / "cube.pt")
    with live_server(TOKEN, state) as (url, _app):
        line = refused(capsys, [*fit, "-o", str(d / "other.pt"), *on_server(url, d)])
        assert "drop -o" in line and not (d / "other.pt").exists()
        assert main([*fit, *on_server(url, d)]) == 0
        remote = last_json(capsys)
    assert remote["output"] is None and remote["server"] == url
    assert without(remote, "seconds", "output", "server") == without(local, "seconds", "output")
    assert remote["slices"] == [5, 6] and remote["steps"] == 2 and remote["model"] == litemedsam.model_id
    held = [s for (digest, preset), s in state.segmenters.items() if preset == "auto"]
    assert len(held) == 1 and held[0].prompt_encoder is not None, "the learned encoder stays on the server"
    assert sorted(p.name for p in d.iterdir() if p.suffix == ".pt") == ["cube.pt"]


# ---------------------------------------------------------------- refusals


def command(name, d):
    if name == "propagate":
        return ["propagate", str(d / "cube.nii.gz"), "--seed", str(d / "seed.nii.gz"), "-o", str(d / "m.nii.gz")]
    return ["assist", str(d / "cube.nii.gz"), str(d / "seed.nii.gz"), "--label", "5"]


@pytest.mark.parametrize("name", ["propagate", "assist"])
def test_a_wrong_token_or_no_server_is_one_clear_line(case, server, capsys, name):
    d, (url, _state) = case, server
    (d / "wrong").write_text("not-the-token")
    line = refused(capsys, [*command(name, d), *on_server(url, d, "wrong")])
    assert line.startswith(f"sammed {name}: error: The server {url} refused the token from {d / 'wrong'}"), line
    line = refused(capsys, [*command(name, d), *on_server(NOWHERE, d)])
    assert "cannot be reached" in line
    line = refused(capsys, [*command(name, d), *on_server(url, d, "missing")])
    assert "No token" in line
    assert not (d / "m.nii.gz").exists()


@pytest.mark.parametrize("name", ["propagate", "assist"])
@pytest.mark.parametrize(
    "extra",
    [
        ["--checkpoint", "mine.pth"],
        ["--model", "sam_vit_b"],
        ["--device", "cpu"],
        ["--runtime", "onnx"],
        ["--level", "40", "--width", "400"],
    ],
    ids=["checkpoint", "model", "device", "runtime", "window"],
)
def test_options_the_server_decides_are_refused(case, capsys, name, extra):
    d = case
    line = refused(capsys, [*command(name, d), *extra, *on_server(NOWHERE, d)])
    assert "drop --checkpoint/--level/--width/--model/--arch/--sha256/--device/--runtime" in line
    assert f"given: {extra[0]}" in line
    assert not (d / "m.nii.gz").exists()
