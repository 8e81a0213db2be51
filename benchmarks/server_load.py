"""The load shape of ``bench_server.py`` (also driven by ``Testing/core/test_server_load.py`` with the analytic
model): simulated Slicer users of one ``sammed serve``, each a thread with its own ``HttpWorkerClient``.

- clickers (half the clients): open the shared volume (the first encodes its slices, the others find them cached),
  then click (a jittered box around the target and one positive point inside it) every ``think_s`` seconds
  (uniform between 0.5x and 1.5x) on a few slices near the target's largest one;
- one propagator: propagates the target along ``axis`` from the reference mask on its largest slice, polled as the
  modules poll (``drain`` every ``poll_s`` seconds); starts again when it is done;
- the others: open a case of their own (the volume with one voxel changed: another digest, another upload),
  precompute a range of slices on a random axis (outward from a random slice) while polling ``status``, twice per
  case, close it and open the next.

Every request is tallied in a ``Tally``: HTTP seconds per endpoint, click latency, errors (a ``failed`` reply, an
HTTP failure, a job cancelled by someone else than its client, an exception in a client) and lost results (a
request without a final reply once its client stopped). When the time is up, running jobs are cancelled and their
final reply awaited: each request then ends ``done`` or ``cancelled``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np

from sammed import geometry
from sammed.io import Volume
from sammed.jobs import WorkerEvent
from sammed.prompts import Prompts
from sammed.server.client import HttpWorkerClient
from sammed.worker.client import FINAL_KINDS
from sammed.worker.client import WorkerError
from sammed.worker.remote import RemoteSegmenter


@dataclass
class Scenario:
    """What the simulated users work on and how fast they act.

    Attributes:
        volume: the shared volume (the clickers' and the propagator's).
        target: KxJxI bool mask of the organ they segment (the reference label).
        axis: the axis they click and propagate on.
        think_s: mean seconds between two clicks of one clicker.
        poll_s: seconds between two polls of a job (the modules' timer).
        click_slices: slices each clicker clicks on.
        precompute_slices: slices per precompute of the other users.
        status_every_s: seconds between two ``status`` calls of the other users while they wait.
        reply_timeout_s: longest wait for one reply (then the request counts as lost).
    """

    volume: Volume
    target: np.ndarray
    axis: int = 0
    think_s: float = 0.5
    poll_s: float = 0.1
    click_slices: int = 3
    precompute_slices: int = 8
    status_every_s: float = 1.0
    reply_timeout_s: float = 120.0

    def seed_slice(self) -> int:
        return int(geometry.largest_slice(self.target, self.axis))

    def clicker_slices(self, clicker: int) -> list[int]:
        """The slices clicker ``clicker`` clicks on: ``click_slices`` of the target's ``click_slices + 1`` largest
        slices (clickers share most of theirs: the first to ask encodes, the others find them cached)."""
        areas = self.target.sum(axis=tuple(a for a in range(3) if a != self.axis))
        largest = [int(i) for i in np.argsort(areas)[::-1][: self.click_slices + 1]]
        return [largest[(clicker + j) % len(largest)] for j in range(self.click_slices)]


@dataclass
class Tally:
    """What every client did, shared by all threads (``add``/``error`` take the lock)."""

    http: dict[str, list[float]] = field(default_factory=dict)  # endpoint -> seconds of each HTTP request
    http_times: list[float] = field(default_factory=list)  # monotonic end time of each HTTP request
    clicks: list[float] = field(default_factory=list)  # seconds of each timed click
    clicks_encoded: int = 0  # timed clicks that had to encode their slice (an evicted embedding)
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    finals: dict[str, int] = field(default_factory=dict)  # "op kind" -> count
    propagations: list[float] = field(default_factory=list)  # seconds of each finished propagation
    precomputes: int = 0
    slices_posted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_http(self, endpoint: str, seconds: float) -> None:
        with self.lock:
            self.http.setdefault(endpoint, []).append(seconds)
            self.http_times.append(time.monotonic())

    def error(self, where: str, message: str) -> None:
        with self.lock:
            self.errors.append(f"{where}: {message[:300]}")

    def final(self, op: str, kind: str) -> None:
        with self.lock:
            self.finals[f"{op} {kind}"] = self.finals.get(f"{op} {kind}", 0) + 1

    def requests_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(start <= t <= end for t in self.http_times)


class CountingClient(HttpWorkerClient):
    """``HttpWorkerClient`` that tallies every HTTP request and every request's final reply: a request it sent
    stays in ``open`` until its final reply passed through ``drain`` (or came with ``submit``)."""

    def __init__(self, url: str, token: str, tally: Tally, name: str, timeout: float = 120.0) -> None:
        super().__init__(url, token, timeout)
        self.tally, self.name = tally, name
        self.open: dict[int, str] = {}  # local request id -> op, until its final reply
        self.cancel_asked: set[int] = set()

    def _http(self, method: str, path: str, body: dict | None = None, *more: Any) -> tuple[int, dict]:
        endpoint = path.split("?")[0]
        if endpoint.startswith("/v1/jobs/"):
            endpoint = "/v1/jobs/{id}/" + endpoint.rsplit("/", 1)[-1]
        if body is not None and "op" in body:
            endpoint += f" {body['op']}"
        t = time.perf_counter()
        try:
            return super()._http(method, path, body, *more)
        except WorkerError as exc:
            self.tally.error(f"{self.name} {method} {endpoint}", str(exc))
            raise
        finally:
            self.tally.add_http(f"{method} {endpoint}", time.perf_counter() - t)

    def submit(self, op: str, args: dict | None = None) -> int:
        rid = super().submit(op, args)
        self.open[rid] = op
        if rid not in self._pending:  # an interactive op, or a job refused: its final reply is in the backlog
            self._settle(self._backlog[-1])
        return rid

    def drain(self) -> list[WorkerEvent]:
        events = super().drain()
        for event in events:
            if event.kind in FINAL_KINDS and event.jobId in self.open:
                self._settle(event)
        return events

    def _settle(self, event: WorkerEvent) -> None:
        op = self.open.pop(event.jobId, event.name)
        self.tally.final(op, event.kind)
        if event.kind == "failed":
            self.tally.error(f"{self.name} {op}", f"{event.errorType}: {event.error}")
        elif event.kind == "cancelled" and event.jobId not in self.cancel_asked:
            self.tally.error(f"{self.name} {op}", f"cancelled by the server: {event.error}")

    def cancel(self, job_id: int | None = None) -> int:
        self.cancel_asked |= {rid for rid in self._pending if job_id is None or rid == job_id}
        return super().cancel(job_id)

    def account_lost(self) -> None:
        """Count the requests still without a final reply as lost (call when this client is done)."""
        for rid, op in self.open.items():
            self.tally.lost.append(f"{self.name} request {rid} ({op})")
        self.open.clear()


def click_prompts(mask_hw: np.ndarray, rng: np.random.Generator) -> Prompts:
    """A box around ``mask_hw`` moved by up to 3 pixels per side and one positive point inside the mask."""
    box = np.asarray(geometry.box_from_mask(mask_hw), dtype=float) + rng.integers(-3, 4, size=4)
    rows, cols = np.nonzero(mask_hw)
    k = int(rng.integers(len(rows)))
    return Prompts.make(box, np.array([[cols[k], rows[k]]], dtype=float), [1])


def follow(client: CountingClient, rid: int, stop_at: float, poll_s: float, on_tick: Callable[[], Any]) -> Any:
    """Poll ``client`` until request ``rid`` has its final reply (cancelled once ``stop_at`` passes); calls
    ``on_tick`` between polls. Returns the final ``WorkerEvent``, or None when none came in time."""
    deadline = None
    while True:
        for event in client.drain():
            if event.jobId == rid and event.kind in FINAL_KINDS:
                return event
            if event.jobId == rid and event.kind == "partial":
                with client.tally.lock:
                    client.tally.slices_posted += 1
        now = time.monotonic()
        if deadline is None and now >= stop_at:
            client.cancel(rid)
            deadline = now + client.timeout
        if deadline is not None and now > deadline:
            return None
        on_tick()
        time.sleep(poll_s)


@dataclass
class User:
    """One simulated user: its role, its number among the clients, its client and its segmenter of the shared
    volume."""

    role: str
    number: int
    client: CountingClient
    segmenter: RemoteSegmenter


def clicker(scenario: Scenario, user: User, rng: np.random.Generator, stop_at: float) -> None:
    """Clicks on the clicker's slices until ``stop_at``; each click's seconds go to the tally."""
    slices, tally = scenario.clicker_slices(user.number), user.client.tally
    while time.monotonic() < stop_at:
        index = int(rng.choice(slices))
        prompts = click_prompts(scenario.target[index], rng)
        t = time.perf_counter()
        try:
            user.segmenter.segment(scenario.axis, index, prompts, timeout=scenario.reply_timeout_s)
        except (ValueError, WorkerError, TimeoutError):  # counted by the client (failed reply, HTTP, lost)
            continue
        seconds = time.perf_counter() - t
        with tally.lock:
            tally.clicks.append(seconds)
            tally.clicks_encoded += bool(user.segmenter.lastEncoded)
        time.sleep(scenario.think_s * rng.uniform(0.5, 1.5))


def propagator(scenario: Scenario, user: User, rng: np.random.Generator, stop_at: float) -> None:
    """Propagates the target from its largest slice again and again until ``stop_at`` (the last one cancelled)."""
    seed = scenario.seed_slice()
    masks = {seed: scenario.target[seed]}
    while time.monotonic() < stop_at:
        t = time.perf_counter()
        rid = user.segmenter.propagate(masks, scenario.axis, "sliding")
        event = follow(user.client, rid, stop_at, scenario.poll_s, lambda: None)
        if event is not None and event.kind == "done":
            with user.client.tally.lock:
                user.client.tally.propagations.append(time.perf_counter() - t)


def case_volume(volume: Volume, case: int) -> Volume:
    """Another case for the other users: ``volume`` with one voxel changed (another digest, same size)."""
    array = np.array(volume.array_kji, copy=True)
    array.flat[case % array.size] += 1 + case % 100
    return Volume(array, volume.spacing_ijk, volume.origin_lps, volume.direction_lps, f"case-{case}")


def outward(n: int, center: int, count: int) -> list[int]:
    """``count`` slice indices of ``n``, outward from ``center`` (as the modules order a precompute)."""
    order = [center] + [c for d in range(1, n) for c in (center - d, center + d) if 0 <= c < n]
    return order[:count]


def other_user(scenario: Scenario, user: User, rng: np.random.Generator, stop_at: float) -> None:
    """Cases of its own, two precomputed ranges each, ``status`` polled meanwhile, until ``stop_at``."""
    client = user.client
    case = 1000 * user.number
    last_status = [time.monotonic()]

    def poll_status() -> None:
        if time.monotonic() - last_status[0] >= scenario.status_every_s:
            last_status[0] = time.monotonic()
            client.submit("status")

    while time.monotonic() < stop_at:
        mine = RemoteSegmenter(client, case_volume(scenario.volume, case))  # type: ignore[arg-type]
        for _ in range(2):
            axis = int(rng.integers(3))
            n = mine.volume.shape_kji[axis]
            indices = outward(n, int(rng.integers(n)), scenario.precompute_slices)
            event = follow(client, mine.precompute(axis, indices), stop_at, scenario.poll_s, poll_status)
            if event is not None and event.kind == "done":
                with client.tally.lock:
                    client.tally.precomputes += 1
            if time.monotonic() >= stop_at:
                break
        mine.close()
        case += 1


ROLES: dict[str, Callable[[Scenario, User, np.random.Generator, float], None]] = {
    "clicker": clicker,
    "propagator": propagator,
    "other": other_user,
}


def roles(clients: int) -> list[str]:
    """Half the clients click, one propagates, the rest are the other users."""
    clickers = max(clients // 2, 1)
    return ["clicker"] * clickers + ["propagator"] * (clients > clickers) + ["other"] * (clients - clickers - 1)


def make_users(url: str, token: str, scenario: Scenario, tally: Tally, clients: int) -> list[User]:
    """One client per simulated user, named ``<role>-<n>``; the clickers open the volume and encode their slices
    (the first one encodes, the others find them cached)."""
    users = []
    for n, role in enumerate(roles(clients)):
        client = CountingClient(url, token, tally, f"{role}-{n}", scenario.reply_timeout_s)
        user = User(role, n, client, RemoteSegmenter(client, scenario.volume))  # type: ignore[arg-type]
        if role == "clicker":
            for index in scenario.clicker_slices(n):
                prompts = Prompts.make(geometry.box_from_mask(scenario.target[index]))
                user.segmenter.segment(scenario.axis, index, prompts, timeout=scenario.reply_timeout_s)
        users.append(user)
    return users


def run_load(scenario: Scenario, users: list[User], seconds: float, seed: int = 0) -> float:
    """Every user acts for ``seconds`` (one thread each), then waits for its last replies; every request still
    without a final reply counts as lost. Returns the wall seconds of the load."""
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_guarded, args=(scenario, u, np.random.default_rng(seed + u.number), stop_at))
        for u in users
    ]
    t = time.monotonic()
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread, user in zip(threads, users, strict=True):
        thread.join(max(stop_at - time.monotonic(), 0) + 2 * scenario.reply_timeout_s + 30)
        if thread.is_alive():
            user.client.tally.error(user.client.name, "the client's thread did not end")
    wall = time.monotonic() - t
    for user in users:
        user.client.account_lost()
    return wall


def _guarded(scenario: Scenario, user: User, rng: np.random.Generator, stop_at: float) -> None:
    """The user's role until ``stop_at``, any exception it lets out counted as an error (the thread ends)."""
    try:
        ROLES[user.role](scenario, user, rng, stop_at)
    except Exception as exc:
        user.client.tally.error(user.client.name, f"{type(exc).__name__}: {exc}")
