"""``sammed serve`` under load (not a test): a real server process on 127.0.0.1 with the real LiteMedSAM, simulated
Slicer users as threads of this process (``server_load``: half of them click, one propagates the liver, the others
open cases of their own, precompute slice ranges and poll ``status``), on the bundled CT.

Measures, in one run:
- click latency (box + point on a slice the clickers encoded before) with one user alone ("idle", for
  ``--idle-seconds``), then under load for ``--seconds`` with ``--clients`` users: p50/p95 and the ratio (goal: p95
  under load <= 3x idle on 2 CPU cores); HTTP requests per second and the seconds of each endpoint;
- errors and lost results: every request must end ``done`` (or ``cancelled`` when its client cancelled it at the
  end); the exit code is 1 otherwise;
- the server process's memory (``/proc/<pid>/status`` VmRSS sampled every 0.2 s): its peak under load must stay
  below the cache bound (``--cache-gb``, small by default so that the load makes the cache evict) plus the overhead
  measured at idle (RSS after the model was loaded, the volume opened and the clickers' slices encoded, minus the
  cache's bytes then) plus ``--allowance-mb`` for the load's working memory (the other users' volumes, request
  bodies, concurrent encode and decode); the exit code is 1 otherwise;
- background throughput: seconds per slice of a precompute with nobody else on the server, and slices encoded per
  second under load (the propagation and the other users' precomputes share the background lane), propagations and
  precomputes finished.

Usage: python benchmarks/bench_server.py [--seconds 60] [--clients 8] [--idle-seconds 15] [--think 0.5]
       [--cache-gb 0.1] [--allowance-mb 256] [--device cpu] [--runtime auto] [--out benchmarks/results/server.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from common import pct
from common import write_result
from server_load import CountingClient
from server_load import Scenario
from server_load import Tally
from server_load import User
from server_load import clicker
from server_load import make_users
from server_load import outward
from server_load import run_load

from sammed.demo import example_paths
from sammed.io import read_volume

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
SERVE = "import sys; from sammed.cli import main; sys.exit(main())"


class ServerProcess:
    """``sammed serve`` as a child process on a free loopback port, with a token file of its own."""

    def __init__(self, folder: Path, cache_gb: float, device: str, model: str = "litemedsam", runtime: str = "auto"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(32)
        token_file = folder / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.token + "\n")
        self.log = folder / "server.log"
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--token-file", str(token_file)]
        args += ["--cache-gb", str(cache_gb), "--model", model, "--device", device, "--runtime", runtime]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVE, *args], stdout=log, stderr=log, env=env)

    def health(self, timeout: float = 5.0) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=timeout) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until ``/health`` answers. Raises RuntimeError when the process ends or does not answer."""
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sammed serve ended (exit {self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.health(1.0)
                return time.monotonic() - t
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"sammed serve did not answer in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def memory(self, field: str = "VmRSS") -> int:
        """Bytes of ``field`` (VmRSS: now; VmHWM: the peak so far) in /proc/<pid>/status."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/{self.proc.pid}/status")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def running_server(cache_gb: float, device: str, runtime: str) -> Iterator[ServerProcess]:
    with tempfile.TemporaryDirectory(prefix="sammed-bench-server-") as folder:
        server = ServerProcess(Path(folder), cache_gb, device, runtime=runtime)
        try:
            yield server
        finally:
            server.stop()


class Monitor:
    """Samples the server's RSS every 0.2 s and its cache bytes (``/health``) every second, in a thread."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak_rss = self.peak_cache = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last_health = 0.0
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, self.server.memory())
            self.samples += 1
            if time.monotonic() - last_health >= 1.0:
                last_health = time.monotonic()
                try:
                    self.peak_cache = max(self.peak_cache, int(self.server.health()["cache"]["memory_bytes"]))
                except OSError:
                    pass

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def latency(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_s": round(pct(values, 50), 4), "p95_s": round(pct(values, 95), 4)}


def endpoints(tally: Tally) -> dict:
    """Count, p50, p95 and max milliseconds of each endpoint (op) under load."""
    out = {}
    for name, values in sorted(tally.http.items()):
        ms = [1000 * v for v in values]
        out[name] = {"n": len(ms), "p50_ms": round(pct(ms, 50), 1), "p95_ms": round(pct(ms, 95), 1)}
        out[name]["max_ms"] = round(max(ms), 1)
    return out


def idle_clicks(scenario: Scenario, users: list[User], seconds: float) -> tuple[list[float], Tally]:
    """The first clicker alone for ``seconds``; then every user gets a fresh tally for the load."""
    clicker(scenario, users[0], np.random.default_rng(12345), time.monotonic() + seconds)
    idle = users[0].client.tally
    load = Tally()
    for user in users:
        user.client.tally = load
    return idle.clicks, load


def background_alone(scenario: Scenario, users: list[User], slices: int) -> float:
    """Seconds per slice of a precompute with nobody else on the server (coronal slices of the shared volume)."""
    user = next(u for u in users if u.role == "propagator")
    n = scenario.volume.shape_kji[1]
    t = time.perf_counter()
    event = user.client.wait(user.segmenter.precompute(1, outward(n, n // 2, slices)), 300)
    if event.kind != "done":
        raise RuntimeError(f"the precompute alone ended {event.kind}: {event.error}")
    return (time.perf_counter() - t) / max(int(event.result["encoded"]), 1)


def memory_report(server: ServerProcess, monitor: Monitor, idle: dict, args: argparse.Namespace) -> dict:
    """The memory part of the result (MB): peak under load vs cache bound + idle overhead + allowance."""
    bound = args.cache_gb * (1 << 30)
    overhead = idle["rss"] - idle["cache"]
    budget = bound + overhead + args.allowance_mb * MB
    return {
        "cache_bound_mb": round(bound / MB, 1),
        "rss_after_model_load_mb": round(idle["rss_loaded"] / MB, 1),
        "rss_idle_mb": round(idle["rss"] / MB, 1),
        "cache_idle_mb": round(idle["cache"] / MB, 1),
        "overhead_mb": round(overhead / MB, 1),
        "allowance_mb": args.allowance_mb,
        "budget_mb": round(budget / MB, 1),
        "peak_rss_under_load_mb": round(monitor.peak_rss / MB, 1),
        "peak_cache_under_load_mb": round(monitor.peak_cache / MB, 1),
        "peak_rss_lifetime_mb": round(server.memory("VmHWM") / MB, 1),
        "rss_samples": monitor.samples,
        "within_budget": bool(monitor.peak_rss <= budget),
        "cache_within_bound": bool(monitor.peak_cache <= bound),
    }


def run(args: argparse.Namespace, scenario: Scenario) -> dict:
    """Start the server, load the model, set the users up, click idle, then the load: the raw numbers."""
    with running_server(args.cache_gb, args.device, args.runtime) as server:
        started = server.wait_ready()
        setup = Tally()  # the model load, the users' setup and the idle clicks
        loader = CountingClient(server.url, server.token, setup, "loader", scenario.reply_timeout_s)
        t = time.perf_counter()
        loaded = loader.wait(loader.submit("load"), 600)
        loaded_s = time.perf_counter() - t
        if loaded.kind != "done":
            raise RuntimeError(f"the server could not load the model: {loaded.error}\n{server.log_tail()}")
        idle = {"rss_loaded": server.memory()}
        t = time.perf_counter()
        users = make_users(server.url, server.token, scenario, setup, args.clients)
        setup_s = time.perf_counter() - t
        alone_s = background_alone(scenario, users, args.alone_slices)
        idle_s, tally = idle_clicks(scenario, users, args.idle_seconds)
        cache0 = server.health()["cache"]
        idle.update(rss=server.memory(), cache=int(cache0["memory_bytes"]))
        cpu0 = server.cpu_seconds()
        with Monitor(server) as monitor:
            t0 = time.monotonic()
            wall = run_load(scenario, users, args.seconds, seed=args.seed)
        cpu = server.cpu_seconds() - cpu0
        cache_end = server.health()["cache"]
        return {
            "server_ready_s": round(started, 2),
            "model_load": {"kind": loaded.kind, "seconds": round(loaded_s, 2), "result": loaded.result},
            "setup_s": round(setup_s, 2),
            "setup": setup,
            "idle": idle_s,
            "tally": tally,
            "load_wall_s": round(wall, 2),
            "requests_in_window": tally.requests_between(t0, t0 + args.seconds),
            "server_cpu_cores_busy": round(cpu / wall, 2),
            "memory": memory_report(server, monitor, idle, args),
            "background": {
                "encode_s_per_slice_alone": round(alone_s, 3),
                "slices_encoded_under_load": cache_end["encodes"] - cache0["encodes"],
                "slices_per_s_alone": round(1 / alone_s, 2),
                "slices_per_s_under_load": round((cache_end["encodes"] - cache0["encodes"]) / wall, 2),
            },
            "cache_end": cache_end,
        }


def summarise(raw: dict, args: argparse.Namespace) -> dict:
    """The result (JSON) from ``run``'s numbers."""
    tally, setup = raw.pop("tally"), raw.pop("setup")
    idle, load = latency(raw.pop("idle")), latency(tally.clicks)
    ratio = {q: round(load[f"{q}_s"] / idle[f"{q}_s"], 2) if idle["n"] and load["n"] else None for q in ("p50", "p95")}
    interactive = sum(len(v) for k, v in tally.http.items() if k.startswith("POST /v1/call"))
    errors, lost = setup.errors + tally.errors, setup.lost + tally.lost
    return {
        "benchmark": "server",
        "model": "litemedsam",
        "device": args.device,
        "runtime": args.runtime,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "seconds": args.seconds,
        "clients": args.clients,
        "think_s": args.think,
        "click_idle": idle,
        "click_load": {**load, "encoded": tally.clicks_encoded},
        "ratio_p50": ratio["p50"],
        "ratio_p95": ratio["p95"],
        "goal_ratio_p95_le_3": ratio["p95"] is not None and ratio["p95"] <= 3.0,
        "requests_per_s": round(raw["requests_in_window"] / args.seconds, 1),
        "interactive_calls_per_s": round(interactive / raw["load_wall_s"], 1),
        "errors": len(errors),
        "lost_results": len(lost),
        "first_errors": errors[:10],
        "first_lost": lost[:10],
        "finals": dict(sorted(tally.finals.items())),
        "propagations_done": len(tally.propagations),
        "propagation_s": latency(tally.propagations),
        "precomputes_done": tally.precomputes,
        "slices_posted": tally.slices_posted,
        "endpoints": endpoints(tally),
        **raw,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--clients", type=int, default=8, help="simulated users (half click, one propagates)")
    ap.add_argument("--idle-seconds", type=float, default=15.0, help="seconds of one user clicking alone")
    ap.add_argument("--think", type=float, default=0.5, help="mean seconds between two clicks of one user")
    ap.add_argument("--cache-gb", type=float, default=0.1, help="the server's cache bound (small: it must evict)")
    ap.add_argument("--allowance-mb", type=float, default=256.0, help="memory the load may add to the idle overhead")
    ap.add_argument("--alone-slices", type=int, default=6, help="slices precomputed with nobody else on the server")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runtime", default="auto", help="the server's encoder runtime (auto, torch, onnx, openvino)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "server.json"))
    args = ap.parse_args()

    paths = example_paths()
    liver = read_volume(paths["ct_labels"]).array_kji == 5
    scenario = Scenario(read_volume(paths["ct"]), liver, think_s=args.think)
    result = summarise(run(args, scenario), args)
    shown = ("click_idle", "click_load", "ratio_p95", "requests_per_s", "errors", "lost_results", "memory")
    for key in (*shown, "background", "propagations_done", "precomputes_done"):
        print(f"{key}: {json.dumps(result[key])}")
    write_result(result, args.out)
    return 0 if not result["errors"] and not result["lost_results"] and result["memory"]["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
